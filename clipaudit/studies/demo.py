"""``clipaudit demo``: the four studies on the built-in synthetic collection, embedded.

One seed by default (to stay within the laptop budget); ``--seeds N`` repeats the whole
run for N seeds (collection and training) and summarises every finding across seeds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


# Config overrides per collection preset. The demo config is budgeted for ``small`` (about 15
# minutes on 2 cores); ``tiny`` (a few hundred images) gets a smoke-test budget to match, so
# `clipaudit demo --preset tiny` checks an installation in a couple of minutes (its numbers mean
# nothing: a few hundred training samples). The study tests run with the same overrides.
PRESET_OVERRIDES: dict[str, dict] = {
    "tiny": {
        "training.samples": 384, "training.batch_size": 32, "training.warmup_steps": 2,
        "training.supervised_samples": 384,
        "similarity.keep_fractions": [0.8, 0.6, 0.4], "similarity.gallery": 2,
        "domains.add_renditions": [0, 8, 16, 32], "similarity_model.samples": 512,
        "dg_cg.size": 150,   # of ~240 natural images (the demo's 8,000 is for `small`)
    },
}


def run_demo(args) -> int:
    from clipaudit.studies.cli import print_summary
    from clipaudit.studies.config import load_config
    from clipaudit.studies.runner import run_study

    studies = None if args.study == "all" else args.study.split(",")
    out = Path(args.out)
    seeds = list(range(args.seed, args.seed + max(1, args.seeds)))
    t0 = time.perf_counter()
    reports = []
    if len(seeds) == 1:
        print(f"clipaudit demo: one seed ({seeds[0]}); `clipaudit demo --seeds 3` repeats it over 3 seeds.")
    budget = PRESET_OVERRIDES.get(args.preset, {})
    if budget:
        print(f"clipaudit demo: preset {args.preset} runs a smoke-test budget ({budget['training.samples']} "
              f"training samples per run): it checks the pipeline, its findings are noise.")
    for s in seeds:
        cfg = load_config("demo", **{"seed": s, "data.synth.seed": s, "data.synth.preset": args.preset,
                                     "studies": studies, **budget})
        root = out if len(seeds) == 1 else out / f"seed-{s}"
        rep = run_study(cfg, root)
        print_summary(rep, root)
        reports.append(rep)
    if len(seeds) > 1:
        from clipaudit.studies.report import render_seeds_html

        summary = summarise_seeds(reports)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        (out / "summary.html").write_text(render_seeds_html(summary))
        for f in summary["findings"]:
            print(f"[{f['reproduced_in']}/{len(seeds)} seeds] {f['study']}: {f['claim']} — value "
                  f"{_fmt(f['mean'])} (95% CI over seeds {_fmt(f['ci'][0])}..{_fmt(f['ci'][1])})")
        print(f"summary over {len(seeds)} seeds: {out}/summary.html (data: {out}/summary.json)")
    print(f"demo wall time {time.perf_counter() - t0:.0f} s")
    return 0


def _fmt(x):
    return "n/a" if x is None else f"{x:.2f}"


def summarise_seeds(reports: list[dict]) -> dict:
    """Each finding across seeds: how often its direction held, mean value, t-interval."""
    return _summarise(reports)


def _summarise(reports: list[dict]) -> dict:
    from clipaudit.studies.context import t_interval

    by_claim: dict[tuple, list] = {}   # (study, claim) -> [(seed, finding)] in seed order
    for r in reports:
        for f in r["findings"]:
            by_claim.setdefault((f["study"], f["claim"]), []).append((r["seed"], f))
    out = []
    for (study, claim), pairs in by_claim.items():
        fs = [f for _, f in pairs]
        vals = [f["value"] for f in fs if isinstance(f["value"], (int, float)) and not isinstance(f["value"], bool)]
        mean, ci = t_interval(vals)
        out.append({"study": study, "claim": claim, "seeds": len(fs),
                    "reproduced_in": sum(1 for f in fs if f["reproduced"] is True), "values": vals,
                    "mean": mean, "ci": ci,
                    "per_seed": [{"seed": seed, "reproduced": f["reproduced"], "detail": f["detail"]}
                                 for seed, f in pairs]})
    noise = [{"seed": r["seed"], **{k: n[k] for k in ("summary", "max_range_points", "max_range_test",
                                                       "ood_range_points", "sets_beyond_image_ci")}}
             for r in reports if (n := r.get("training_noise"))]
    return {"seeds": [r["seed"] for r in reports], "findings": out,
            "wall_time_s": [r["timings"]["total_s"] for r in reports], "training_noise": noise}
