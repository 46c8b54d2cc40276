"""Study 4 — spurious backgrounds (CounterAnimal; Wang et al., NeurIPS 2024).

Common vs counter background groups; the CLIP zero-shot drop beside the drop of an
ImageNet-style supervised classifier trained on the natural split with labels (curated
like ImageNet: by default a fifth of its images sit on their class's common background,
where the LAION-like pool has ~90%; ``backgrounds.supervised_common_share``); an
effective-robustness scatter (counter vs common) across every checkpoint of the run,
with a linear fit per model family.
"""

from __future__ import annotations

import numpy as np

from clipaudit.studies.context import StudyContext, accuracy, direction, finding


def run(ctx: StudyContext, base: dict) -> dict:
    cfg, d = ctx.cfg.backgrounds, ctx.cfg.data
    meta = ctx.metadata(d.train)
    nat = meta[meta["domain"] == "natural"]
    keys, share = _imagenet_style(nat, cfg.supervised_common_share, ctx.seed)
    natural = ctx.manifest("s4-natural-labelled", keys, rule="domain-split",
                           parameters={"domain": "natural", "labels": "class", "common_share": share,
                                       "pool_common_share": _common_share(nat)})
    budgets = {f"s4-supervised-{int(frac * 100)}": int(ctx.cfg.training.supervised_samples * frac)
               for frac in (0.25, 0.5, 1.0)}   # several supervised checkpoints: a family to fit
    ctx.prefetch([(n, {"manifest": natural}, {"mode": "supervised", "samples": b}) for n, b in budgets.items()])
    sup = {n: ctx.train(n, {"manifest": natural}, mode="supervised", samples=b) for n, b in budgets.items()}
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
    gap = drop_difference(ctx.evaluate_standard("full", base["full"]),
                          ctx.evaluate_standard(sup_best["model"], sup[sup_best["model"]]), d, seed=ctx.seed)
    findings.append(finding("backgrounds", "CLIP relies on backgrounds more than the ImageNet-style classifier",
                            direction(gap["ci"]), gap["points"],
                            f"CLIP drop {drop:.1f} vs supervised ({sup_best['model']}) drop {sdrop:.1f} points: "
                            f"difference {gap['points']:+.1f} (95% CI {gap['ci'][0]:+.1f}..{gap['ci'][1]:+.1f})"))
    return {"rows": rows, "fits": fits, "findings": findings, "supervised_manifest": ctx.lineage(natural),
            "supervised_common_share": share, "pool_common_share": _common_share(nat)}


def _common_share(meta) -> float | None:
    grouped = meta[meta["group"].isin(["common", "counter"])] if "group" in meta.columns else meta.iloc[:0]
    return float((grouped["group"] == "common").mean()) if len(grouped) else None


def _imagenet_style(nat, share: float | None, seed: int) -> tuple[list[str], float | None]:
    """Natural training images for the ImageNet-style classifier: every one (``share``
    None, or no group labels), else all counter-background images plus as many
    common-background ones (seeded sample) as make ``share`` of the subset common."""
    pool = _common_share(nat)
    if share is None or pool is None or pool <= share:
        return nat["key"].tolist(), pool
    common = nat[nat["group"] == "common"].sort_values("key")
    rest = nat[nat["group"] != "common"]
    n_common = int(round(share / (1 - share) * (rest["group"] == "counter").sum())) if share < 1 else len(common)
    picked = common.sample(n=min(n_common, len(common)), random_state=seed)
    keys = rest["key"].tolist() + picked["key"].tolist()
    return keys, _common_share(nat[nat["key"].isin(keys)])


def drop_difference(a, b, d, *, seed: int = 0, resamples: int = 2000) -> dict:
    """(common - counter accuracy of model a) - (same of model b), in points, both models
    scored on the same images; 95% bootstrap interval resampling images within each group."""
    def paired(group):
        j = a.loc[a["test_set"] == group, ["key", "correct"]].merge(
            b.loc[b["test_set"] == group, ["key", "correct"]], on="key", suffixes=("_a", "_b"))
        return j["correct_a"].to_numpy(float) - j["correct_b"].to_numpy(float)

    common, counter = paired(d.common), paired(d.counter)
    if not len(common) or not len(counter):
        return {"points": None, "ci": [None, None]}
    rng = np.random.default_rng(seed)
    boots = (common[rng.integers(0, len(common), (resamples, len(common)))].mean(1)
             - counter[rng.integers(0, len(counter), (resamples, len(counter)))].mean(1)) * 100
    return {"points": float((common.mean() - counter.mean()) * 100),
            "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}


def _drop_ci(row: dict):
    a, b = row["common"], row["counter"]
    if a["acc"] is None or b["acc"] is None:
        return None, (None, None)
    se = np.sqrt(a["acc"] * (1 - a["acc"]) / a["n"] + b["acc"] * (1 - b["acc"]) / b["n"]) * 100
    d = (a["acc"] - b["acc"]) * 100
    return d, (d - 1.96 * se, d + 1.96 * se)
