"""Study 1 — does generalisation come from train–test similarity?
(Mayilvahanan et al., ICLR 2024.)

Embed with a fixed similarity model, measure sim(t, Train) per test image, bin accuracy
by it, prune the training pool near/far/random (and near within each domain, the
domain mix held fixed), prune similarity-matched against a reference set, retrain on each
subset and evaluate. Directions are computed from the data, never written in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipaudit.embeddings import EmbeddingSet, EmbeddingSetWriter
from clipaudit.errors import InvalidInput
from clipaudit.studies.context import StudyContext, direction, finding, paired_difference
from clipaudit.studies.ops import read_parquet, write_parquet


def union_set(ctx: StudyContext, sets: dict[str, str], out: str) -> str:
    def write():
        first = EmbeddingSet.open(next(iter(sets.values())))
        w = EmbeddingSetWriter(out, model_id=first.model_id, dim=first.dim)
        n = 0
        for name, loc in sets.items():
            s = EmbeddingSet.open(loc)
            for part, v, m in s.iter_parts():
                w.write_part(f"{name}-{part}", np.asarray(v, np.float32), m)
                n += len(v)
        return {"rows": n}

    ctx.ws.step(f"union/{out.rsplit('/', 1)[-1]}", write, inputs=sorted(sets.items()))
    return out


def run(ctx: StudyContext, base: dict) -> dict:
    cfg, d = ctx.cfg.similarity, ctx.cfg.data
    full = base["full"]
    tests = d.id_tests + d.ood_tests
    # 1. embed everything with one fixed similarity model (config ``similarity_model``)
    sim_model = ctx.similarity_model(base)
    emb = {s: ctx.embed(s, sim_model, "similarity-model") for s in [d.train, d.reference, *tests]}
    train_meta = ctx.metadata(d.train)

    # 2. NN similarity of each test image to the training pool and to the reference set
    nn_train, nn_ref = {}, {}
    for t in tests:
        nn_train[t] = ctx.ws.step(f"similarity/{t}-to-train", lambda t=t: ctx.ops.similarity(
            emb[t], emb[d.train], ctx.loc("similarity", f"{t}-to-train.parquet"), k=5), inputs=[t, emb[t]])
        nn_ref[t] = ctx.ws.step(f"similarity/{t}-to-reference", lambda t=t: ctx.ops.similarity(
            emb[t], emb[d.reference], ctx.loc("similarity", f"{t}-to-reference.parquet")), inputs=[t, emb[t]])
    sim_tables = {t: read_parquet(nn_train[t]) for t in tests}
    all_sim = pd.concat([f[["key", "sim"]] for f in sim_tables.values()], ignore_index=True)
    all_sim_path = ctx.loc("similarity", "tests-to-train-all.parquet")
    write_parquet(all_sim, all_sim_path)
    histograms = {t: _histogram(f["sim"].to_numpy()) for t, f in sim_tables.items()}
    ref_hist = {t: _histogram(read_parquet(nn_ref[t])["sim"].to_numpy()) for t in tests}

    # 3. accuracy per similarity bin (the full model)
    # equal-count bins: NN similarities crowd near 1, equal-width bins would put almost every image in one
    edges = np.unique(np.quantile(all_sim["sim"].to_numpy(np.float64), np.linspace(0, 1, cfg.bins + 1)))
    edges[-1] = np.nextafter(edges[-1], np.inf)      # the largest similarity falls inside the last bin
    ev_full = ctx.evaluate("full", full, tests, spec={"similarity": str(all_sim_path), "similarity_column": "sim",
                                                      "similarity_bins": edges.tolist()}, tag="-simbins")
    rep = ctx.report_json(ev_full)
    bins_ood = {s["name"]: s.get("similarity_bins") for s in rep["test_sets"]}

    # 4. near / far / random pruning: sim(x, Test) with Test = the OOD test sets (the paper prunes
    #    against the OOD benchmarks; ``prune_against: all`` adds the ID tests)
    against = d.ood_tests if cfg.prune_against == "ood" else tests
    test_union = union_set(ctx, {t: emb[t] for t in against},
                           ctx.loc("embeddings", "similarity-model", f"{cfg.prune_against}-tests"))
    x_to_test = read_parquet(ctx.ws.step("similarity/train-to-tests", lambda: ctx.ops.similarity(
        emb[d.train], test_union, ctx.loc("similarity", f"train-to-{cfg.prune_against}-tests.parquet")),
        inputs=[emb[d.train], test_union]))
    x_to_test = x_to_test.merge(train_meta[["key", "domain_group", "domain"]], on="key", how="left")
    n_pool = len(train_meta)
    sweep = []
    for frac in cfg.keep_fractions:
        keep = int(round(frac * n_pool))
        for rule in ("near", "far", "random"):
            name = f"{rule}-{int(frac * 100)}"
            uri = ctx.ws.step(f"prune/{name}", lambda rule=rule, keep=keep, name=name: ctx.ops.prune(
                rule, emb[d.train], ctx.loc("manifests", name), test=test_union, keep=keep, seed=ctx.seed)[0],
                inputs=[rule, keep, emb[d.train], test_union])
            sweep.append({"rule": rule, "keep_fraction": frac, "keep": keep, "manifest": uri, "view": "pooled",
                          "against": against})
        if cfg.stratified:
            for rule in ("near",):   # the question is near vs random with the domain mix held fixed
                name = f"{rule}-stratified-{int(frac * 100)}"
                keys = _stratified_keep(x_to_test, frac, rule, by=cfg.stratify_by)
                uri = ctx.manifest(name, keys, rule=f"prune-{rule}-stratified", parent=emb[d.train],
                                   parameters={"keep_fraction": frac, "within": cfg.stratify_by}, sources=[test_union])
                sweep.append({"rule": f"{rule}-stratified", "keep_fraction": frac, "keep": len(keys), "manifest": uri,
                              "view": "domain mix held fixed"})

    # 5. similarity-matched pruning against the reference set, per test set and combined
    matched = []
    if cfg.matched:
        uris = ctx.ws.step("prune/matched", lambda: ctx.ops.prune(
            "matched", emb[d.train], ctx.loc("manifests", "matched"), tests=[emb[t] for t in tests],
            reference=emb[d.reference]), inputs=[emb[d.train], tests])
        for uri in uris:
            lin = ctx.lineage(uri)
            matched.append({"manifest": uri, "name": uri.rsplit("/", 1)[-1].removesuffix(".parquet"),
                            "kept": lin["count"], "removed": n_pool - lin["count"],
                            "removed_by_domain": _removed_by_domain(train_meta, read_parquet(uri)["key"])})

    # 6. retrain on every subset, evaluate on every test set
    ood_pred = {}
    combined = next((m for m in matched if m["name"] == "combined"), None)
    ctx.prefetch([(f"s1-{row['rule']}-{int(row['keep_fraction'] * 100)}", {"manifest": row["manifest"]}, {})
                  for row in sweep] + ([("s1-matched-combined", {"manifest": combined["manifest"]}, {})] if combined else []))
    full_pred = ctx.evaluate_standard("full", full)
    for row in sweep:
        name = f"s1-{row['rule']}-{int(row['keep_fraction'] * 100)}"
        tr = ctx.train(name, {"manifest": row["manifest"]})
        pred = ctx.evaluate_standard(name, tr)
        row.update(_accs(pred, d))
        ood_pred[name] = pred
    matched_result = None
    if combined:
        tr = ctx.train("s1-matched-combined", {"manifest": combined["manifest"]})
        pred = ctx.evaluate_standard("s1-matched-combined", tr)
        combined.update(_accs(pred, d))
        ood = pred["test_set"].isin(d.ood_tests)
        matched_result = {"drop_ood": paired_difference(full_pred, pred, full_pred["test_set"].isin(d.ood_tests), ood,
                                                        seed=ctx.seed),
                          "per_test": {t: paired_difference(full_pred, pred, full_pred["test_set"] == t,
                                                            pred["test_set"] == t, seed=ctx.seed) for t in tests}}

    # findings
    findings = []
    pooled_bins = rep.get("similarity_bins") or []
    trend = within_set_slope(full_pred[full_pred["test_set"].isin(d.ood_tests)], all_sim, seed=ctx.seed)
    findings.append(finding(
        "similarity", "accuracy rises with train–test similarity (within each OOD test set)",
        direction(trend["ci"]), trend["slope_points"],
        f"top-1 accuracy rises {_fmt(trend['slope_points'], 1)} points per 0.01 of sim(t, Train) (least squares "
        f"within each OOD test set, pooled; 95% CI {_fmt(trend['ci'][0], 1)}..{_fmt(trend['ci'][1], 1)}, "
        f"n={trend['n']})"))
    for view, near_rule in (("pooled", "near"), ("domain mix held fixed", "near-stratified")):
        diffs = []
        for frac in cfg.keep_fractions:
            a = ood_pred.get(f"s1-{near_rule}-{int(frac * 100)}")
            b = ood_pred.get(f"s1-random-{int(frac * 100)}")
            if a is not None and b is not None:
                diffs.append(paired_difference(b, a, b["test_set"].isin(d.ood_tests), a["test_set"].isin(d.ood_tests),
                                               seed=ctx.seed) | {"keep_fraction": frac})
        if diffs:
            mean = float(np.mean([x["diff_points"] for x in diffs]))
            smallest = diffs[-1]
            findings.append(finding(
                "similarity", f"removing the most test-similar images costs more than removing random ones ({view})",
                direction(smallest["ci"]), mean,
                f"OOD accuracy of random-pruned minus near-pruned, mean over {len(diffs)} sizes: {mean:+.1f} points; "
                f"at keep {smallest['keep_fraction']:.0%}: {smallest['diff_points']:+.1f} points "
                f"(95% CI {smallest['ci'][0]:+.1f}..{smallest['ci'][1]:+.1f})"))
    if matched_result:
        dr = matched_result["drop_ood"]
        kept_share = None
        if combined.get("ood") and dr["diff_points"] is not None:
            full_ood = _accs(full_pred, d)["ood"]
            kept_share = (combined["ood"] / full_ood) if full_ood else None
        findings.append(finding(
            "similarity", "similarity-matched pruning lowers OOD accuracy only partly (similarity explains part, not all)",
            None if kept_share is None or direction(dr["ci"]) is None else (direction(dr["ci"]) and kept_share > 0.5),
            dr["diff_points"],
            f"full minus matched-combined OOD accuracy: {_fmt(dr['diff_points'], 1)} points "
            f"(95% CI {_fmt(dr['ci'][0], 1)}..{_fmt(dr['ci'][1], 1)}); the matched model keeps "
            f"{_fmt(None if kept_share is None else kept_share * 100, 0)}% of the full model's OOD accuracy; "
            f"{combined['removed']} of {n_pool} training images removed"
            + _removed_detail(combined.get("removed_by_domain"))))

    gallery = _gallery(ctx, sim_tables, cfg.gallery)
    return {
        "histograms": {"test_to_train": histograms, "test_to_reference": ref_hist},
        "accuracy_by_similarity": {"pooled": pooled_bins, "per_test": bins_ood},
        "pruning_sweep": sweep,
        "prune_against": against,
        "matched": {"subsets": matched, "result": matched_result},
        "full": _accs(full_pred, d),
        "similarity_model": sim_model["checkpoint"],
        "similarity_model_samples": ctx.cfg.similarity_model.samples or ctx.cfg.training.samples,
        "gallery": gallery,
        "findings": findings,
    }


def _removed_by_domain(pool: pd.DataFrame, kept_keys) -> dict | None:
    """{domain: [removed, in pool]} when the pool's metadata labels domains (the synthetic
    collection does; LAION shards do not, then None)."""
    if "domain" not in pool.columns or pool["domain"].isna().any():
        return None
    removed = pool.loc[~pool["key"].isin(set(kept_keys)), "domain"].value_counts()
    return {str(dom): [int(removed.get(dom, 0)), int(n)] for dom, n in pool["domain"].value_counts().items()}


def _removed_detail(by_domain: dict | None) -> str:
    if not by_domain:
        return ""
    return "; share of each domain removed: " + ", ".join(f"{dom} {r / n:.0%}" for dom, (r, n) in by_domain.items() if n)


def _accs(pred: pd.DataFrame, d) -> dict:
    out = {t: float(g["correct"].mean()) for t, g in pred.groupby("test_set")}
    id_mask, ood_mask = pred["test_set"].isin(d.id_tests), pred["test_set"].isin(d.ood_tests)
    out["id"] = float(pred.loc[id_mask, "correct"].mean()) if id_mask.any() else None
    out["ood"] = float(pred.loc[ood_mask, "correct"].mean()) if ood_mask.any() else None
    return {"accuracy": out, "id": out["id"], "ood": out["ood"]}


def _stratified_keep(x_to_test: pd.DataFrame, frac: float, rule: str, by: str = "domain") -> list[str]:
    """Near/far pruning inside each value of ``by`` (domain or domain group): the same
    fraction kept from each, so the subset has the pool's mix of ``by``."""
    if by not in x_to_test.columns or x_to_test[by].isna().any():
        raise InvalidInput(f"stratified pruning needs a {by!r} label for every training image "
                           f"(set similarity.stratify_by or stratified: false)")
    keys = []
    for _, g in x_to_test.groupby(by):
        k = int(round(frac * len(g)))
        order = np.lexsort((g["key"].to_numpy(), g["sim"].to_numpy()))  # ascending sim, ties by key
        idx = order[:k] if rule == "near" else order[::-1][:k]
        keys.extend(g["key"].to_numpy()[idx])
    return keys


def _histogram(x: np.ndarray, bins: int = 30) -> dict:
    h, edges = np.histogram(x, bins=bins, range=(float(min(x.min(), 0.0)), 1.0))
    return {"counts": h.tolist(), "edges": edges.tolist(), "mean": float(x.mean()), "median": float(np.median(x))}


def within_set_slope(pred: pd.DataFrame, sim: pd.DataFrame, *, seed: int = 0, resamples: int = 1000) -> dict:
    """Least-squares slope of correctness on sim(t, Train) with one intercept per test set
    (so a test set that is both easier and farther cannot fake or hide the trend), in
    accuracy points per 0.01 of similarity, with a 95% bootstrap interval over images."""
    j = pred[["test_set", "key", "correct"]].merge(sim[["key", "sim"]].drop_duplicates("key"), on="key")
    if len(j) < 3:
        return {"slope_points": None, "ci": [None, None], "n": len(j)}
    x = j["sim"].to_numpy(np.float64)
    y = j["correct"].to_numpy(np.float64)
    g = j["test_set"].astype("category").cat.codes.to_numpy()

    def slope(idx):
        xs, ys, gs = x[idx], y[idx], g[idx]
        k = gs.max() + 1
        cnt = np.bincount(gs, minlength=k)
        cnt = np.where(cnt == 0, 1, cnt)
        xc = xs - (np.bincount(gs, xs, minlength=k) / cnt)[gs]
        yc = ys - (np.bincount(gs, ys, minlength=k) / cnt)[gs]
        den = (xc * xc).sum()
        return (xc * yc).sum() / den if den > 0 else np.nan

    rng = np.random.default_rng(seed)
    boots = np.array([slope(rng.integers(0, len(j), len(j))) for _ in range(resamples)])
    boots = boots[np.isfinite(boots)]
    est = slope(np.arange(len(j)))
    if not np.isfinite(est) or not len(boots):
        return {"slope_points": None, "ci": [None, None], "n": len(j)}
    return {"slope_points": float(est), "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "n": len(j)}


def _fmt(x, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _gallery(ctx: StudyContext, sim_tables: dict[str, pd.DataFrame], per_side: int) -> list[dict]:
    """Test images with the highest and lowest NN similarity beside their top-5 training neighbours."""
    import base64

    rows = []
    for t, f in sim_tables.items():
        rows.append(f.assign(test_set=t))
    allf = pd.concat(rows, ignore_index=True).sort_values(["sim", "key"])
    picks = [("lowest", r) for r in allf.head(per_side).itertuples()] + \
            [("highest", r) for r in allf.tail(per_side)[::-1].itertuples()]
    want_test = {(r.test_set, r.key) for _, r in picks}
    want_train = {k for _, r in picks for k in (list(r.ref_keys) if hasattr(r, "ref_keys") else [r.ref_key])}

    def images(split, keys):
        got = {}
        for s in ctx.coll.iter_samples(split):
            if s["__key__"] in keys:
                got[s["__key__"]] = (base64.b64encode(s.get("jpg") or s.get("png")).decode(), s.get("txt", ""))
                if len(got) == len(keys):
                    break
        return got

    train_imgs = images(ctx.cfg.data.train, want_train)
    test_imgs = {}
    for t in {t for t, _ in want_test}:
        test_imgs.update(images(t, {k for tt, k in want_test if tt == t}))
    out = []
    for side, r in picks:
        refs = list(r.ref_keys) if hasattr(r, "ref_keys") else [r.ref_key]
        sims = list(r.sims) if hasattr(r, "sims") else [r.sim]
        out.append({"side": side, "test_set": r.test_set, "key": r.key, "sim": float(r.sim),
                    "image": test_imgs.get(r.key, ("", ""))[0], "caption": test_imgs.get(r.key, ("", ""))[1],
                    "neighbours": [{"key": k, "sim": float(s), "image": train_imgs.get(k, ("", ""))[0],
                                    "caption": train_imgs.get(k, ("", ""))[1]} for k, s in zip(refs[:5], sims[:5])]})
    return out
