"""Study 2 — domain contamination ("forgotten domain generalisation").
(Mayilvahanan, Zimmermann et al., ICLR 2025.)

Train the natural/rendition classifier on labelled embeddings, report contamination of
the training pool and of every test set, build clean single-domain subsets, compare
natural-only with full training, and sweep mixtures: (A) fixed total, rendition share
swept; (B) fixed natural set, k renditions added.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipaudit.errors import InvalidInput
from clipaudit.manifests import read_manifest
from clipaudit.studies.context import (StudyContext, accuracy, direction, finding, format_effect, over_replicates,
                                      paired_difference)


def nominal_group(split: str) -> str | None:
    if split.startswith("test_"):
        return "natural" if split in ("test_natural", "test_common", "test_counter") else "rendition"
    return None


def run(ctx: StudyContext, base: dict) -> dict:
    cfg, d = ctx.cfg.domains, ctx.cfg.data
    full = base["full"]
    tests = d.id_tests + d.ood_tests
    sim_model = ctx.similarity_model(base)   # the same embeddings as study 1's
    emb = {s: ctx.embed(s, sim_model, "similarity-model") for s in [d.train, *tests]}

    # 1-2. the classifier, thresholds at the target precisions (labels: the pool's ground truth)
    clf = ctx.ws.step("domains/classifier", lambda: ctx.ops.train_domain_classifier(
        emb[d.train], ctx.loc("domains", "classifier.json"), label_column="domain_group",
        classes=["natural", "rendition"], seed=ctx.seed, default_precision=cfg.default_precision,
        strict_precision=cfg.strict_precision), inputs=[emb[d.train], cfg.default_precision, cfg.strict_precision])
    model = clf["model"]

    # 3. contamination reports
    reports = {s: ctx.ws.step(f"domains/report/{s}", lambda s=s: ctx.ops.domain_report(emb[s], model, nominal_group(s)),
                              inputs=[emb[s], model]) for s in [d.train, *tests]}

    # 4. clean subsets: single-domain training pools and clean test sets (strict threshold)
    clean = {}
    for keep in ("natural", "rendition"):
        clean[keep] = ctx.ws.step(f"domains/filter/train-{keep}", lambda keep=keep: ctx.ops.domain_filter(
            emb[d.train], model, keep, "strict", ctx.loc("manifests", f"train-{keep}-strict")), inputs=[model])
    clean_tests = {t: ctx.ws.step(f"domains/filter/{t}", lambda t=t: ctx.ops.domain_filter(
        emb[t], model, nominal_group(t), "strict", ctx.loc("manifests", f"{t}-clean")), inputs=[model])
        for t in tests}
    clean_keys = {t: set(read_manifest(u).keys) for t, u in clean_tests.items()}
    n_nat, n_rend = len(read_manifest(clean["natural"])), len(read_manifest(clean["rendition"]))

    # 5. natural-only vs full; sweeps
    max_r = max(cfg.ratios) or 1.0
    total = cfg.total or int(min(n_nat, n_rend / max_r))
    plan_a, plan_b = [], []
    for r in cfg.ratios:
        n_r = int(round(total * r))
        comps = [{"manifest": clean["natural"], "count": total - n_r, "name": "natural"}]
        if n_r:
            comps.append({"manifest": clean["rendition"], "count": n_r, "name": "rendition"})
        plan_a.append((f"s2-A-r{int(r * 100)}", r, comps))
    n_b = cfg.natural or total   # sweep B's fixed natural set; by default sweep A's 0% run is its first
    if n_b > n_nat:
        raise InvalidInput(f"sweep B's natural set ({n_b}) is larger than the pool's {n_nat} clean natural images")
    for k in cfg.add_renditions:
        k = min(k, n_rend)
        comps = [{"manifest": clean["natural"], "count": n_b, "name": "natural"}]
        if k:
            comps.append({"manifest": clean["rendition"], "count": k, "name": "rendition"})
        plan_b.append((f"s2-B-k{k}", k, comps))
    natural_only = {"mixture": [{"manifest": clean["natural"], "name": "natural"}]}
    # sweep B once per training seed; the first seed's runs keep the plain names (without training_seeds:
    # the study's seed, so its k=0 run is sweep A's 0% run)
    seeds = list(cfg.training_seeds or [ctx.seed])

    def b_label(name: str, s: int) -> str:
        return name if s == seeds[0] else f"{name}-t{s}"

    ctx.prefetch([("natural-only", natural_only, {})] + [(n, {"mixture": c}, {}) for n, _, c in plan_a]
                 + [(b_label(n, s), {"mixture": c}, {"seed": s}) for s in seeds for n, _, c in plan_b])
    runs = {"full": full}
    runs["natural-only"] = ctx.train("natural-only", natural_only)
    base["natural-only"] = runs["natural-only"]
    sweep_a, sweep_b = [], []
    for name, r, comps in plan_a:
        runs[name] = ctx.train(name, {"mixture": comps})
        sweep_a.append({"name": name, "rendition_share": r, "total": total, "counts": runs[name]["resolved_counts"]})
    b_runs = {s: {name: ctx.train(b_label(name, s), {"mixture": comps}, seed=s) for name, _, comps in plan_b}
              for s in seeds}
    runs.update(b_runs[seeds[0]])
    for name, k, _ in plan_b:
        sweep_b.append({"name": name, "added": k, "counts": runs[name]["resolved_counts"]})

    preds = {n: ctx.evaluate_standard(n, r) for n, r in runs.items()}
    b_preds = {s: {n: preds[n] if s == seeds[0] else ctx.evaluate_standard(b_label(n, s), r) for n, r in rs.items()}
               for s, rs in b_runs.items()}

    def accs(pred: pd.DataFrame) -> dict:
        out = {}
        for view in ("standard", "clean"):
            m_rend = pred["test_set"].isin(d.ood_tests)
            m_nat = pred["test_set"].isin(d.id_tests)
            if view == "clean":
                ck = pred.apply(lambda r: r["key"] in clean_keys.get(r["test_set"], ()), axis=1)
                m_rend, m_nat = m_rend & ck, m_nat & ck
            out[view] = {"rendition": accuracy(pred, m_rend), "natural": accuracy(pred, m_nat),
                         "per_test": {t: accuracy(pred, (pred["test_set"] == t) &
                                                  (pred.apply(lambda r: r["key"] in clean_keys[t], axis=1)
                                                   if view == "clean" else True)) for t in tests}}
        return out

    table = {n: accs(p) for n, p in preds.items()}
    for row in sweep_a + sweep_b:
        row["accuracy"] = table[row["name"]]

    findings = []
    f, no = preds["full"], preds["natural-only"]
    rend_f, rend_n = f["test_set"].isin(d.ood_tests), no["test_set"].isin(d.ood_tests)
    diff = paired_difference(f, no, rend_f, rend_n, seed=ctx.seed)
    acc_f, acc_n = table["full"]["standard"]["rendition"]["acc"], table["natural-only"]["standard"]["rendition"]["acc"]
    rel = (acc_n / acc_f) if acc_f else None
    findings.append(finding(
        "domains", "natural-only training is much weaker on renditions",
        direction(diff["ci"]), diff["diff_points"],
        f"natural-only loses {diff['diff_points']:.1f} points on rendition test sets vs the full model "
        f"(95% CI {diff['ci'][0]:.1f}..{diff['ci'][1]:.1f}); relative performance {rel:.2f} of the full model"))
    nat_diff = paired_difference(f, no, f["test_set"].isin(d.id_tests), no["test_set"].isin(d.id_tests), seed=ctx.seed)
    findings.append(finding(
        "domains", "on natural images natural-only training loses little", abs(nat_diff["diff_points"]) < abs(diff["diff_points"]),
        nat_diff["diff_points"], f"full minus natural-only on natural test sets: {nat_diff['diff_points']:+.1f} points "
                                 f"(95% CI {nat_diff['ci'][0]:+.1f}..{nat_diff['ci'][1]:+.1f})"))
    for row in sweep_b:   # the rendition accuracy of every training seed's run (the first is the row's own)
        row["rendition_by_seed"] = [accuracy(b_preds[s][row["name"]], b_preds[s][row["name"]]["test_set"].isin(
            d.ood_tests))["acc"] for s in seeds]
    if len(sweep_b) >= 2:
        b0, b1, bl = sweep_b[0]["name"], sweep_b[1]["name"], sweep_b[-1]["name"]

        def gain(hi: str) -> dict:   # on the rendition test sets, paired per seed, then over seeds
            return over_replicates([paired_difference(
                b_preds[s][hi], b_preds[s][b0], b_preds[s][hi]["test_set"].isin(d.ood_tests),
                b_preds[s][b0]["test_set"].isin(d.ood_tests), seed=ctx.seed) for s in seeds])
        g1, gl = gain(b1), gain(bl)
        share = g1["diff_points"] / gl["diff_points"] if g1["diff_points"] is not None and gl["diff_points"] else None
        k1, kl = sweep_b[1]["added"], sweep_b[-1]["added"]
        findings.append(finding(
            "domains", "a few renditions give a large gain (sweep B)",
            direction(g1["ci"]), g1["diff_points"],
            f"adding {k1} renditions to {n_b} natural images gains {format_effect(g1)} on renditions; that is "
            f"{'n/a' if share is None else f'{share:.0%}'} of the gain from adding {kl}"))
    if sweep_a:
        best = max(sweep_a, key=lambda r: (r["accuracy"]["standard"]["rendition"]["acc"] or 0)
                   + (r["accuracy"]["standard"]["natural"]["acc"] or 0))
        findings.append(finding(
            "domains", "at a fixed total, a mixed rendition:natural ratio beats natural-only (sweep A)",
            best["rendition_share"] > 0, best["rendition_share"],
            f"best mean of natural and rendition accuracy at rendition share {best['rendition_share']:.0%} "
            f"(swept {', '.join(f'{r:.0%}' for r in cfg.ratios)} of {total})"))
    contamination = _contamination_findings(reports, ctx, d)
    findings.extend(contamination["findings"])
    return {
        "classifier": clf,
        "reports": reports,
        "contamination": contamination["rows"],
        "clean_subsets": {k: ctx.lineage(u) for k, u in {**{f"train-{k}": v for k, v in clean.items()},
                                                          **clean_tests}.items()},
        "accuracy": table,
        "sweep_a": sweep_a,
        "sweep_b": sweep_b,
        "training_seeds": seeds,
        "findings": findings,
    }


def _contamination_findings(reports: dict, ctx: StudyContext, d) -> dict:
    """Estimated opposite-domain share of each test set vs the generator's ground truth."""
    rows, inside = [], []
    for split, rep in reports.items():
        est = _find_contamination(rep, nominal_group(split))
        nominal = nominal_group(split)
        meta = ctx.metadata(split)
        truth = float((meta["domain_group"] != nominal).mean()) if nominal else float((meta["domain_group"] == "rendition").mean())
        row = {"set": split, "nominal": nominal, "true_share": truth, **(est or {})}
        if est and est.get("ci"):
            row["within_ci"] = bool(est["ci"][0] <= truth <= est["ci"][1])
            inside.append(row["within_ci"])
        rows.append(row)
    fs = []
    if inside:
        fs.append(finding("domains", "the contamination report recovers the planted contamination",
                          sum(inside) >= 0.75 * len(inside), f"{sum(inside)}/{len(inside)}",
                          f"true opposite-domain share inside the report's 95% CI for {sum(inside)} of "
                          f"{len(inside)} sets (strict threshold, corrected estimate where available)"))
    return {"rows": rows, "findings": fs}


def _find_contamination(rep: dict, nominal: str | None) -> dict | None:
    """The strict-threshold estimate out of a classifier report: the opposite-domain share
    of a test set (its ``contamination``), or the rendition share of the training pool;
    Rogan–Gladen corrected where the report has it, raw Wilson otherwise."""
    strict = (rep.get("overall") or {}).get("strict") or {}
    c = strict.get("contamination") if nominal else (strict.get("shares") or {}).get("rendition")
    if not c:
        return None
    return {"estimated_share": c.get("corrected", c.get("share")), "ci": c.get("corrected_ci95", c.get("ci95")),
            "raw_share": c.get("share"), "raw_ci": c.get("ci95")}
