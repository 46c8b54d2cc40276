"""Training noise: the full model retrained with other training seeds (``training.noise_runs``).

A verdict's 95% interval covers the test images of one trained model. Retraining the
same subset with another training seed (initialisation and sample order; same data,
same budget) moves a tiny model's accuracies by more than that, and the report would
otherwise only assert so. This measures it: per test set (and pooled over the ID and
the OOD sets), every run's accuracy, the spread between runs, and each rerun minus the
first with its paired interval over images. A difference whose interval excludes zero
is noise that a single run's interval cannot see.
"""

from __future__ import annotations

import pandas as pd

from clipaudit.studies.context import StudyContext, accuracy, direction, paired_difference

# reruns of study seed s train with s + 7919*i: while study seeds differ by less than 7919 (the demo's
# 0, 1, 2), no rerun's seed equals another study's seed or another rerun's
NOISE_SEED_STEP = 7919


def noise_seeds(seed: int, runs: int) -> list[int]:
    """The training seeds of the reruns of a study with seed ``seed``."""
    return [seed + NOISE_SEED_STEP * i for i in range(1, runs + 1)]


def run_name(seed: int) -> str:
    return f"full-t{seed}"


def jobs(ctx: StudyContext, pool: dict) -> list[tuple[str, dict, dict]]:
    """The reruns as prefetch jobs, so they train beside the studies' runs."""
    return [(run_name(s), pool, {"seed": s}) for s in noise_seeds(ctx.seed, ctx.cfg.training.noise_runs)]


def run(ctx: StudyContext, base: dict) -> dict | None:
    """Train (or reuse) the reruns, evaluate them on every standard test set, summarise."""
    if not ctx.cfg.training.noise_runs:
        return None
    d = ctx.cfg.data
    preds = {"full": ctx.evaluate_standard("full", base["full"])}
    for name, subset, kw in jobs(ctx, base["full"]["subset"]):
        preds[name] = ctx.evaluate_standard(name, ctx.train(name, subset, **kw))
    groups = {t: [t] for t in ctx.standard_tests}
    groups["ID (pooled)"] = list(d.id_tests)
    groups["OOD (pooled)"] = list(d.ood_tests)
    return {"seeds": [ctx.seed, *noise_seeds(ctx.seed, ctx.cfg.training.noise_runs)],
            **summarise(preds, groups, seed=ctx.seed)}


def summarise(preds: dict[str, pd.DataFrame], groups: dict[str, list[str]], *, seed: int = 0) -> dict:
    """``preds``: per-image predictions of runs that differ only in their training seed, the
    first the reference. Per group of test sets: each run's accuracy, the spread (max - min,
    points), each rerun minus the reference (paired over the same images, 95% bootstrap)."""
    names = list(preds)
    ref = names[0]
    rows = []
    for label, sets in groups.items():
        masks = {n: p["test_set"].isin(sets) for n, p in preds.items()}
        accs = {n: accuracy(p, masks[n]) for n, p in preds.items()}
        if any(a["acc"] is None for a in accs.values()):
            continue
        diffs = {n: paired_difference(preds[n], preds[ref], masks[n], masks[ref], seed=seed) for n in names[1:]}
        points = [a["acc"] * 100 for a in accs.values()]
        rows.append({"test": label, "sets": list(sets), "acc": accs, "range_points": max(points) - min(points),
                     "vs_first": diffs,
                     # a rerun's difference whose interval over images excludes zero: beyond image sampling
                     "beyond_image_ci": any(direction(df["ci"]) is not None for df in diffs.values())})
    singles = [r for r in rows if len(r["sets"]) == 1]
    widest = max(singles, key=lambda r: r["range_points"], default=None)
    ood = next((r for r in rows if r["test"] == "OOD (pooled)"), None)
    return {"runs": names, "rows": rows,
            "max_range_points": None if widest is None else widest["range_points"],
            "max_range_test": None if widest is None else widest["test"],
            "ood_range_points": None if ood is None else ood["range_points"],
            "sets_beyond_image_ci": [r["test"] for r in singles if r["beyond_image_ci"]],
            "summary": _sentence(names, widest, ood, singles)}


def _sentence(names, widest, ood, singles) -> str:
    if widest is None:
        return "no test set to compare"
    beyond = [r["test"] for r in singles if r["beyond_image_ci"]]
    return (f"{len(names)} runs of the full model that differ only in their training seed: accuracies move by up to "
            f"{widest['range_points']:.1f} points on one test set ({widest['test']})"
            + ("" if ood is None else f", {ood['range_points']:.1f} on the pooled OOD sets")
            + f"; on {len(beyond)} of {len(singles)} test sets a rerun's difference lies outside its 95% interval "
              "over test images")
