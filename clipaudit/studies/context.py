"""Shared state of one study run: the collection, its metadata, the training cache.

Training runs are keyed by their spec (subset keys hash, model, budget, seed), so the
natural-only and full models are trained once and serve studies 1, 2 and 4 alike.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clipaudit.manifests import read_manifest, write_manifest
from clipaudit.studies.config import StudyConfig
from clipaudit.studies.ops import StudyOps, read_json, read_parquet
from clipaudit.studies.workspace import Workspace, stable_hash
from clipaudit.synth.collection import Collection


@dataclass
class StudyContext:
    cfg: StudyConfig
    ws: Workspace
    ops: StudyOps
    collection: str            # location of the collection (dir or s3://)
    out: str                   # where outputs go (dir or s3://), mirrors ws.root locally
    coll: Collection | None = None
    _meta: dict[str, pd.DataFrame] = field(default_factory=dict)
    evaluations: dict[str, dict] = field(default_factory=dict)   # model name -> evaluation summary
    models: dict[str, dict] = field(default_factory=dict)        # model name -> training summary
    _standard: dict[str, dict] = field(default_factory=dict)     # checkpoint -> standard evaluation
    _inflight: dict[str, Any] = field(default_factory=dict)      # run id -> future of a prefetched training run

    def loc(self, *parts: str) -> str:
        return "/".join([self.out.rstrip("/"), *parts])

    def split(self, name: str) -> str:
        return "/".join([self.collection.rstrip("/"), name])

    @property
    def seed(self) -> int:
        return self.cfg.seed

    # ------------------------------------------------------------------ metadata
    def metadata(self, split: str) -> pd.DataFrame:
        """Every sample's json fields (no image decoding), cached as parquet."""
        if split not in self._meta:
            path = self.ws.path("metadata", f"{split}.parquet")

            def read():
                rows = [dict(s["json"], key=s["__key__"]) for s in self.coll.iter_samples(split, fields=("json",))] \
                    if _accepts_fields(self.coll) else [dict(s["json"], key=s["__key__"]) for s in self.coll.iter_samples(split)]
                pd.DataFrame(rows).to_parquet(path, index=False)
                return {"rows": len(rows)}

            self.ws.step(f"metadata/{split}", read, inputs={"collection": self.collection, "split": split})
            self._meta[split] = pd.read_parquet(path)
        return self._meta[split]

    # ------------------------------------------------------------------ manifests
    def manifest(self, name: str, keys, *, rule: str, parameters: dict | None = None, parent: str | None = None,
                 sources=()) -> str:
        keys = sorted(set(map(str, keys)))
        loc = self.loc("manifests", name)

        def write():
            m = write_manifest(loc, keys, rule=rule, parameters=parameters or {}, parent=parent, sources=list(sources))
            return {"uri": m.uri, "count": len(m), "keys_sha256": m.lineage.keys_sha256}

        return self.ws.step(f"manifest/{name}", write, inputs={"keys": stable_hash(keys), "rule": rule,
                                                               "parameters": parameters})["uri"]

    def lineage(self, uri: str) -> dict:
        m = read_manifest(uri)
        return {"uri": uri, "count": len(m), **m.lineage.model_dump()}

    # ------------------------------------------------------------------ training
    def _train_request(self, name: str, subset: dict, *, mode: str = "clip", samples: int | None = None,
                       seed: int | None = None) -> tuple[dict, str, str]:
        """(trainer spec, run id, output location) of one training run."""
        t = self.cfg.training
        seed = self.seed if seed is None else seed
        spec: dict[str, Any] = {
            "mode": mode, "data": [self.collection], "split": self.cfg.data.train,
            "model": t.model if mode == "clip" else t.supervised_model,
            "samples": samples or (t.samples if mode == "clip" else t.supervised_samples),
            "batch_size": min(t.batch_size, _subset_size(subset)), "lr": t.lr, "warmup_steps": t.warmup_steps,
            "weight_decay": t.weight_decay, "seed": seed, "device": t.device, **subset,
        }
        if t.threads:
            spec["threads"] = t.threads
        if mode == "supervised":
            spec["label_column"] = "class"
            spec["classes"] = list(self.coll.classes)
            spec["image_size"] = int(self.coll.image_size)   # not the timm model's default (e.g. 160 px)
        # the subset's identity is its content (key hashes, counts, weights), not its names: two studies asking
        # for the same data share one run (e.g. sweep B's k=0 is natural-only, CG low = "+sketch")
        comps = subset.get("mixture") or [{"manifest": subset["manifest"]}]
        subset_id = stable_hash({"mixture": sorted(
            (read_manifest(c["manifest"]).lineage.keys_sha256, c.get("count"), c.get("weight")) for c in comps),
            "total": subset.get("total")})
        experiment = {k: v for k, v in spec.items() if k != "threads"}
        run_id = stable_hash({**experiment, "subset": subset_id, "data": None, "manifest": None, "mixture": None,
                              "architecture": _architecture_config(spec["model"]) if mode == "clip" else None})
        return spec, run_id, self.loc("models", f"run-{run_id}")   # keyed by content: a second name reuses it

    def prefetch(self, jobs: list[tuple[str, dict, dict]]) -> None:
        """Start training runs ``(name, subset, train kwargs)`` in the background, several at
        once on a multi-core CPU (each run single-threaded: the tiny model's step keeps one
        core busy whatever its thread count); :meth:`train` then waits for its run. A no-op
        where the ops cannot train in parallel (``--distributed``: the trainer service queues)."""
        workers = self.parallel_runs
        if workers < 2 or not hasattr(self.ops, "submit_train"):
            return
        for name, subset, kw in jobs:
            spec, run_id, out = self._train_request(name, subset, **kw)
            if run_id in self._inflight or self.ws.is_cached(f"train/{name}", {"run": run_id}):
                continue
            self._inflight[run_id] = self.ops.submit_train(spec, job_id=f"run-{run_id}", out=out, workers=workers)

    @property
    def parallel_runs(self) -> int:
        import os

        t = self.cfg.training
        if t.parallel_runs:
            return t.parallel_runs
        return 1 if t.device not in ("cpu", "auto") else max(1, os.cpu_count() or 1)

    def train(self, name: str, subset: dict, *, mode: str = "clip", samples: int | None = None,
              seed: int | None = None) -> dict:
        """Train (or reuse) a model on a subset: ``{"manifest": uri}`` or ``{"mixture": [...], "total": n}``."""
        spec, run_id, out = self._train_request(name, subset, mode=mode, samples=samples, seed=seed)
        pending = self._inflight.get(run_id)
        run = pending.result if pending is not None else (
            lambda: self.ops.train(spec, job_id=f"run-{run_id}", out=out))
        result = self.ws.step(f"train/{name}", run, inputs={"run": run_id})
        result["name"] = name
        result["mode"] = mode
        result["subset"] = subset
        self.models[name] = result
        return result

    def similarity_model_job(self, pool: dict) -> tuple[str, dict, dict] | None:
        """The training run of the similarity model as ``(name, subset, train kwargs)`` (what
        :meth:`prefetch` and :meth:`train` take), or None when the full model embeds."""
        samples = self.cfg.similarity_model.samples
        return ("similarity-model", pool, {"samples": samples}) if samples else None

    def similarity_model(self, base: dict) -> dict:
        """The fixed model that embeds for similarity and for the domain classifier
        (``similarity_model`` in the config): the full model, or the whole pool trained longer."""
        job = self.similarity_model_job(base["full"]["subset"])
        if job is None:
            return base["full"]
        name, subset, kw = job
        return self.train(name, subset, **kw)

    def close(self) -> None:
        for f in self._inflight.values():
            f.cancel()
        self._inflight.clear()
        shutdown = getattr(self.ops, "shutdown", None)
        if shutdown:
            shutdown()

    def checkpoint_spec(self, trained: dict) -> str:
        if trained["mode"] == "supervised":
            return trained["checkpoint"]
        return f"{trained['arch']}@{trained['checkpoint']}"

    # ------------------------------------------------------------------ embedding / evaluation
    def embed(self, split: str, trained: dict, tag: str) -> str:
        out = self.loc("embeddings", tag, split)
        self.ws.step(f"embed/{tag}/{split}", lambda: self.ops.embed(self.split(split), self.checkpoint_spec(trained), out),
                     inputs={"model": trained["checkpoint"], "split": split})
        return out

    def evaluate(self, name: str, trained: dict, splits: list[str], *, spec: dict | None = None,
                 tag: str = "") -> dict:
        spec = dict(spec or {})
        spec.setdefault("label", name)
        spec.setdefault("family", "CLIP" if trained["mode"] == "clip" else "supervised")
        spec.setdefault("seed", self.seed)
        out = self.loc("evaluations", f"{name}{tag}")
        res = self.ws.step(f"evaluate/{name}{tag}",
                           lambda: self.ops.evaluate(self.checkpoint_spec(trained), [self.split(s) for s in splits],
                                                     spec, out),
                           inputs={"model": trained["checkpoint"], "splits": splits, "spec": spec})
        self.evaluations[f"{name}{tag}"] = res
        return res

    @property
    def standard_tests(self) -> list[str]:
        d = self.cfg.data
        return list(dict.fromkeys([*d.id_tests, *d.ood_tests, d.common, d.counter]))

    def evaluate_standard(self, name: str, trained: dict) -> pd.DataFrame:
        """Every model is evaluated once on every test set of the config (ID, OOD, common,
        counter); all studies read their numbers from these per-image predictions."""
        spec = {"one_vs_k": list(self.cfg.backgrounds.one_vs_k)}
        same = self._standard.get(trained["checkpoint"])   # one run under two names is evaluated once
        if same is None:
            same = self._standard[trained["checkpoint"]] = self.evaluate(name, trained, self.standard_tests, spec=spec)
        self.evaluations[name] = same
        return self.predictions(same)

    def predictions(self, evaluation: dict) -> pd.DataFrame:
        """Per-image correctness of an evaluation (test_set, key, class, domain, group, correct)."""
        return read_parquet(evaluation["report"].rsplit("/", 1)[0] + "/predictions.parquet")

    def report_json(self, evaluation: dict) -> dict:
        return read_json(evaluation["report"])


def _subset_size(subset: dict) -> int:
    """Images in a subset (a manifest, or a mixture with counts/total): a batch never exceeds
    it (a small curated subset of a tiny collection trains with smaller batches)."""
    if "manifest" in subset:
        return len(read_manifest(subset["manifest"]))
    if subset.get("total"):
        return int(subset["total"])
    return sum(int(c["count"]) if c.get("count") is not None else len(read_manifest(c["manifest"]))
               for c in subset["mixture"])


def _architecture_config(name: str) -> dict | None:
    """The open_clip config a model name resolves to: a run is identified by the
    architecture, not its name (editing clipaudit-tiny.json must not reuse old runs)."""
    import open_clip

    from clipaudit.models import resolve_architecture

    try:
        return open_clip.get_model_config(resolve_architecture(name))
    except Exception:  # noqa: BLE001 - an unknown name fails later, in the trainer, with its own message
        return None


def _accepts_fields(coll) -> bool:
    import inspect

    return "fields" in inspect.signature(coll.iter_samples).parameters


# ---------------------------------------------------------------------- statistics

def accuracy(pred: pd.DataFrame, mask=None) -> dict:
    """Top-1 accuracy with a 95% Wilson interval; n=0 is reported, never divided by."""
    c = pred["correct"].to_numpy() if mask is None else pred.loc[mask, "correct"].to_numpy()
    return proportion(int(c.sum()), int(len(c)))


def proportion(k: int, n: int) -> dict:
    if n == 0:
        return {"acc": None, "n": 0, "ci": [None, None]}
    p, z = k / n, 1.96
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return {"acc": p, "n": n, "ci": [max(0.0, centre - half), min(1.0, centre + half)]}


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, mask_a=None, mask_b=None, *, seed: int = 0,
                      resamples: int = 2000) -> dict:
    """acc(a) - acc(b) in points on the same images (joined on test_set+key), with a
    95% paired-bootstrap interval."""
    ka = a if mask_a is None else a[mask_a]
    kb = b if mask_b is None else b[mask_b]
    j = ka[["test_set", "key", "correct"]].merge(kb[["test_set", "key", "correct"]], on=["test_set", "key"],
                                                  suffixes=("_a", "_b"))
    n = len(j)
    if n == 0:
        return {"diff_points": None, "ci": [None, None], "n": 0}
    d = j["correct_a"].to_numpy(float) - j["correct_b"].to_numpy(float)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1) * 100
    return {"diff_points": float(d.mean() * 100), "ci": [float(np.percentile(boots, 2.5)),
                                                          float(np.percentile(boots, 97.5))], "n": n}


def independent_difference(a: dict, b: dict) -> dict:
    """acc(a) - acc(b) in points for two :func:`accuracy` results on different images,
    with a 95% normal-approximation interval (independent samples)."""
    if not a["n"] or not b["n"]:
        return {"diff_points": None, "ci": [None, None], "n": [a["n"], b["n"]]}
    pa, pb = a["acc"], b["acc"]
    d = (pa - pb) * 100
    half = 1.96 * 100 * float(np.sqrt(pa * (1 - pa) / a["n"] + pb * (1 - pb) / b["n"]))
    return {"diff_points": float(d), "ci": [float(d - half), float(d + half)], "n": [a["n"], b["n"]]}


# two-sided 95% Student t quantiles by degrees of freedom (numpy has none; scipy is not a dependency)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}


def t_interval(values) -> tuple[float | None, list]:
    """Mean and 95% t-interval of a few independent replicates (seeds); the interval is
    [None, None] below two values."""
    vals = [float(v) for v in values]
    if not vals:
        return None, [None, None]
    mean = float(np.mean(vals))
    if len(vals) < 2:
        return mean, [None, None]
    df = len(vals) - 1
    t = 1.96 if df > 30 else _T95[max(k for k in _T95 if k <= df)]   # the next smaller tabled df: conservative
    half = t * float(np.std(vals, ddof=1)) / np.sqrt(len(vals))
    return mean, [float(mean - half), float(mean + half)]


def jackknife_interval(full: float, leave_one_out) -> tuple[float | None, list]:
    """Standard error and 95% normal interval of a statistic from its ``n`` leave-one-out
    values (Efron's jackknife): se = sqrt((n-1)/n * sum (t_i - mean t)^2); the interval
    is centred on the full-sample value. (None, [None, None]) below two values or with a
    missing one (dropping it would leave the others' spread uncounted)."""
    if full is None or len(leave_one_out) < 2 or any(v is None for v in leave_one_out):
        return None, [None, None]
    vals = np.asarray(leave_one_out, dtype=np.float64)
    if not np.isfinite(vals).all() or not np.isfinite(full):
        return None, [None, None]
    n = len(vals)
    se = float(np.sqrt((n - 1) / n * np.sum((vals - vals.mean()) ** 2)))
    return se, [float(full - 1.96 * se), float(full + 1.96 * se)]


def over_replicates(diffs: list[dict]) -> dict:
    """One effect measured by several training replicates (each a :func:`paired_difference`
    on the same test images): the mean effect with a t-interval over replicates, which
    carries the run-to-run spread a single run's bootstrap interval over images cannot.
    One replicate is returned as it is."""
    if len(diffs) == 1:
        return {**diffs[0], "replicates": [diffs[0]["diff_points"]]}
    vals = [d["diff_points"] for d in diffs]
    if any(v is None for v in vals):
        return {"diff_points": None, "ci": [None, None], "n": 0, "replicates": vals}
    mean, ci = t_interval(vals)
    return {"diff_points": mean, "ci": ci, "n": diffs[0]["n"], "replicates": vals}


def format_effect(d: dict) -> str:
    """An effect in points with its interval: over test images for one training run, over
    training seeds (with each seed's value) for several."""
    if d["diff_points"] is None:
        return "n/a (no shared images)"
    reps = d.get("replicates") or []
    if len(reps) < 2:
        return f"{d['diff_points']:+.1f} points (95% CI {d['ci'][0]:+.1f}..{d['ci'][1]:+.1f}, n={d['n']})"
    return (f"{d['diff_points']:+.1f} points (95% t-interval over {len(reps)} training seeds "
            f"{d['ci'][0]:+.1f}..{d['ci'][1]:+.1f}; per seed " + ", ".join(f"{v:+.1f}" for v in reps)
            + f"; n={d['n']} images)")


def direction(ci) -> bool | None:
    """The verdict of an effect measured with a 95% interval: True when the interval lies
    above zero (the paper's direction), False when it lies below (the opposite), None
    (undetermined) when it contains zero or is missing."""
    lo, hi = (ci or [None, None])[:2]
    if lo is None or hi is None:
        return None
    return True if lo > 0 else False if hi < 0 else None


def finding(study: str, claim: str, reproduced: bool | None, value: Any, detail: str) -> dict:
    """One verdict: ``reproduced`` is a plain bool (or None when the data cannot decide)."""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    return {"study": study, "claim": claim, "reproduced": None if reproduced is None else bool(reproduced),
            "value": value, "detail": detail}
