"""``clipaudit study run``: the four studies as one DAG of service calls.

Setup (shared by every study): the collection (generated when the config says
``synth``), the full model trained on the whole pool. Each study then adds its own
steps; every step is skipped when its output exists (resume), and the natural-only /
full models are trained once for all studies.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from clipaudit.studies import backgrounds, dg_cg, domains, noise, similarity
from clipaudit.studies.config import StudyConfig
from clipaudit.studies.context import StudyContext
from clipaudit.studies.ops import EmbeddedOps
from clipaudit.studies.workspace import Workspace

# execution order: studies that need the similarity model run after one that does not, so the
# similarity model (a longer run) trains while dg_cg's runs share the worker pool; backgrounds
# reads checkpoints of every other study, so it runs last. The report keeps the config's order.
_EXECUTION_RANK = {"dg_cg": 0, "similarity": 1, "domains": 2, "backgrounds": 3}
_NEEDS_SIMILARITY_MODEL = {"similarity", "domains"}

STUDIES = {
    "similarity": similarity.run,
    "domains": domains.run,
    "dg_cg": dg_cg.run,
    "backgrounds": backgrounds.run,
}


def prepare_collection(cfg: StudyConfig, ws: Workspace, out: str) -> str:
    if cfg.data.collection:
        return cfg.data.collection
    loc = f"{out.rstrip('/')}/collection"

    def gen():
        from clipaudit.synth import generate

        r = generate(cfg.data.synth.preset, loc, seed=cfg.data.synth.seed, progress=False)
        return {"location": str(r.location), "images": r.total, "seconds": r.seconds}

    from clipaudit.synth.generate import GENERATOR_VERSION

    # the generator's version is an input: a changed generator regenerates a resumed run's collection
    ws.step("synth", gen, inputs={**cfg.data.synth.model_dump(), "generator": GENERATOR_VERSION})
    return loc


def run_study(cfg: StudyConfig, out_dir: str | Path, *, ops=None, out: str | None = None,
              console: Console | None = None) -> dict:
    """Run the configured studies; returns the report dict (also written as report.json/html)."""
    from clipaudit.synth.collection import Collection

    t0 = time.perf_counter()
    ws = Workspace(Path(out_dir), console=console or Console(stderr=True))
    out = out or str(ws.root)
    ops = ops or EmbeddedOps(device=cfg.training.device if cfg.training.device != "auto" else "cpu")
    collection = prepare_collection(cfg, ws, out)
    ctx = StudyContext(cfg=cfg, ws=ws, ops=ops, collection=collection, out=out, coll=Collection.load(collection))
    train_meta = ctx.metadata(cfg.data.train)
    ws.study = "setup"
    everything = ctx.manifest("train-all", train_meta["key"], rule="all", parameters={"split": cfg.data.train},
                              parent=ctx.split(cfg.data.train))
    sections = {}
    try:
        pool = {"manifest": everything}
        sim_job = ctx.similarity_model_job(pool) if _NEEDS_SIMILARITY_MODEL & set(cfg.studies) else None
        # the longer run first; the full model's reruns (training noise) train beside the studies' runs
        ctx.prefetch(([sim_job] if sim_job else []) + [("full", pool, {})] + noise.jobs(ctx, pool))
        base = {"full": ctx.train("full", pool)}
        for name in sorted(cfg.studies, key=_EXECUTION_RANK.__getitem__):
            ws.study = name
            sections[name] = STUDIES[name](ctx, base)
        sections = {name: sections[name] for name in cfg.studies}
        ws.study = "training-noise"   # after the studies: their numbers do not depend on it
        training_noise = noise.run(ctx, base)
    finally:
        ctx.close()
    report = {
        "schema": "clipaudit.study-report/1",
        "name": cfg.name,
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "collection": {"location": collection, "preset": ctx.coll.preset, "seed": ctx.coll.seed,
                       "splits": {k: v.count for k, v in ctx.coll.splits.items()}},
        "models": {n: {k: v for k, v in r.items() if k not in ("subset",)} | {"subset": r.get("subset")}
                   for n, r in ctx.models.items()},
        "studies": sections,
        "findings": [f for s in sections.values() for f in s.get("findings", [])],
        "training_noise": training_noise,
        "timings": {"total_s": round(time.perf_counter() - t0, 1), "per_study_s": ws.timings(),
                    "steps": [r.__dict__ for r in ws.records]},
        # steps reused from an earlier run whose code differed from this run's: their numbers are the old code's
        "reused_from_other_code": ws.reused_from_other_code(),
    }
    write_report(report, ws.root)
    return report


def write_report(report: dict, root: Path) -> tuple[Path, Path]:
    from clipaudit.studies.report import render_html

    root = Path(root)
    j = root / "report.json"
    j.write_text(json.dumps(report, indent=1, default=_json_default, allow_nan=False))
    h = root / "report.html"
    h.write_text(render_html(report))
    return j, h


def _json_default(o):
    import numpy as np

    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
