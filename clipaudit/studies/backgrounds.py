"""Study 4 — spurious backgrounds (CounterAnimal; Wang et al., NeurIPS 2024).

Common vs counter background groups; the CLIP zero-shot drop beside the drop of an
ImageNet-style supervised classifier trained on the natural split with labels; an
effective-robustness scatter (counter vs common) across every checkpoint of the run,
with a linear fit per model family.
"""

from __future__ import annotations

import numpy as np

from clipaudit.studies.context import StudyContext, accuracy, finding


def run(ctx: StudyContext, base: dict) -> dict:
    cfg, d = ctx.cfg.backgrounds, ctx.cfg.data
    meta = ctx.metadata(d.train)
    natural = ctx.manifest("s4-natural-labelled", meta.loc[meta["domain"] == "natural", "key"], rule="domain-split",
                           parameters={"domain": "natural", "labels": "class"})
    sup = {}
    for frac in (0.25, 0.5, 1.0):   # several supervised checkpoints: a family to fit
        name = f"s4-supervised-{int(frac * 100)}"
        sup[name] = ctx.train(name, {"manifest": natural}, mode="supervised",
                              samples=int(ctx.cfg.training.supervised_samples * frac))
    clip_models = {n: r for n, r in ctx.models.items() if r.get("mode") == "clip"}
    clip_models.setdefault("full", base["full"])
    rows = []
    for name, r in {**clip_models, **sup}.items():
        p = ctx.evaluate_standard(name, r)
        common, counter = accuracy(p, p["test_set"] == d.common), accuracy(p, p["test_set"] == d.counter)
        rows.append({"model": name, "family": "CLIP" if r["mode"] == "clip" else "supervised",
                     "common": common, "counter": counter,
                     "drop_points": None if common["acc"] is None or counter["acc"] is None
                     else (common["acc"] - counter["acc"]) * 100})
    fits = {}
    for fam in ("CLIP", "supervised"):
        pts = [(r["common"]["acc"], r["counter"]["acc"]) for r in rows if r["family"] == fam and r["common"]["acc"] is not None]
        if len(pts) >= 2 and len({p[0] for p in pts}) >= 2:
            x, y = np.array(pts).T
            a, b = np.polyfit(x, y, 1)
            fits[fam] = {"slope": float(a), "intercept": float(b), "n_models": len(pts)}
        else:
            fits[fam] = {"undefined": f"{len(pts)} model(s): a fit needs two with different common accuracy"}
    for r in rows:
        f = fits.get(r["family"], {})
        if "slope" in f and r["common"]["acc"] is not None:
            r["residual"] = r["counter"]["acc"] - (f["slope"] * r["common"]["acc"] + f["intercept"])

    full = next(r for r in rows if r["model"] == "full")
    sup_best = max((r for r in rows if r["family"] == "supervised"), key=lambda r: r["common"]["acc"] or 0)
    findings = []
    drop, (lo, hi) = _drop_ci(full)
    findings.append(finding("backgrounds", "CLIP loses accuracy on counter backgrounds",
                            None if lo is None else lo > 0, drop,
                            f"full CLIP: common {full['common']['acc']:.1%} vs counter {full['counter']['acc']:.1%}, "
                            f"drop {drop:.1f} points (95% CI {lo:.1f}..{hi:.1f})"))
    sdrop, _ = _drop_ci(sup_best)
    findings.append(finding("backgrounds", "CLIP relies on backgrounds more than the ImageNet-style classifier",
                            drop > sdrop, drop - sdrop,
                            f"CLIP drop {drop:.1f} vs supervised ({sup_best['model']}) drop {sdrop:.1f} points"))
    return {"rows": rows, "fits": fits, "findings": findings, "supervised_manifest": ctx.lineage(natural)}


def _drop_ci(row: dict):
    a, b = row["common"], row["counter"]
    if a["acc"] is None or b["acc"] is None:
        return None, (None, None)
    se = np.sqrt(a["acc"] * (1 - a["acc"]) / a["n"] + b["acc"] * (1 - b["acc"]) / b["n"]) * 100
    d = (a["acc"] - b["acc"]) * 100
    return d, (d - 1.96 * se, d + 1.96 * se)
