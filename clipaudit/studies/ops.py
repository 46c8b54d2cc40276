"""What a study asks of the five services, in two wirings with one interface.

:class:`EmbeddedOps` calls each service's handler in this process (the in-memory bus
and local files: ``clipaudit demo``). :class:`DistributedOps` (``--distributed``) sends
the same requests through the real stack: shards announced on Kafka and embedded by
the embedder service, similarity/pruning/classification/evaluation over gRPC, training
jobs submitted to the trainer service — outputs in MinIO. The study code cannot tell
the difference, which is the point: what ran on a laptop runs on a cluster.
"""

from __future__ import annotations

import io
import json
from typing import Any, Protocol

import pandas as pd

from clipaudit.store import open_store


class StudyOps(Protocol):
    def embed(self, data: str, model: str, out: str) -> dict: ...
    def similarity(self, query: str, reference: str, out: str, k: int = 1) -> str: ...
    def prune(self, rule: str, train: str, out: str, **params) -> list[str]: ...
    def train_domain_classifier(self, embeddings: str, out: str, **params) -> dict: ...
    def domain_report(self, embeddings: str, model: str, nominal: str | None = None) -> dict: ...
    def domain_filter(self, embeddings: str, model: str, keep: str, threshold: str, out: str) -> str: ...
    def train(self, spec: dict, job_id: str, out: str) -> dict: ...
    def evaluate(self, checkpoint: str, test_sets: list[str], spec: dict, out: str) -> dict: ...


def read_parquet(location: str) -> pd.DataFrame:
    parent, _, base = str(location).rstrip("/").rpartition("/")
    return pd.read_parquet(io.BytesIO(open_store(parent or ".", create=False).get_bytes(base)))


def write_parquet(frame: pd.DataFrame, location: str) -> str:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    parent, _, base = str(location).rstrip("/").rpartition("/")
    open_store(parent or ".").put_bytes(base, buf.getvalue())
    return location


def read_json(location: str) -> dict:
    parent, _, base = str(location).rstrip("/").rpartition("/")
    return json.loads(open_store(parent or ".", create=False).get_bytes(base))


class EmbeddedOps:
    """Every service's handler, in process."""

    def __init__(self, *, device: str = "cpu", progress: bool = False):
        self.device = device
        self.progress = progress
        self._indexer = None
        self._classifier = None
        self._evaluator = None
        self._pool = None

    # -- embedder
    def embed(self, data: str, model: str, out: str) -> dict:
        from services.embedder.handler import embed_dataset

        return embed_dataset(data, model, out, device=self.device, progress=self.progress).to_dict()

    # -- indexer
    @property
    def indexer(self):
        if self._indexer is None:
            from services.indexer.handler import IndexerHandler

            self._indexer = IndexerHandler(open_store("."))
        return self._indexer

    def similarity(self, query: str, reference: str, out: str, k: int = 1) -> str:
        self.indexer.similarity(query, reference, out, k=k)
        return out

    def prune(self, rule: str, train: str, out: str, **p) -> list[str]:
        h = self.indexer
        if rule in ("near", "far"):
            return [h.prune_by_similarity(train, p["test"], p["keep"], rule, out).uri]
        if rule == "random":
            return [h.prune_random(train, p["keep"], p.get("seed", 0), out).uri]
        if rule == "matched":
            return [m.uri for m in h.prune_matched(train, p["tests"], p["reference"], out)]
        raise ValueError(rule)

    # -- classifier
    @property
    def classifier(self):
        if self._classifier is None:
            from services.classifier.handler import ClassifierHandler

            self._classifier = ClassifierHandler()
        return self._classifier

    def train_domain_classifier(self, embeddings: str, out: str, **p) -> dict:
        return self.classifier.train(embeddings, out=out, **p).summary()

    def domain_report(self, embeddings: str, model: str, nominal: str | None = None) -> dict:
        return self.classifier.report(embeddings, model, nominal=nominal)

    def domain_filter(self, embeddings: str, model: str, keep: str, threshold: str, out: str) -> str:
        return self.classifier.filter(embeddings, model, keep=keep, threshold=threshold, out=out).uri

    # -- trainer
    def train(self, spec: dict, job_id: str, out: str) -> dict:
        from services.trainer.handler import train
        from services.trainer.spec import parse_spec

        return train(parse_spec(spec), job_id=job_id, out=out, show_progress=self.progress).summary()

    def submit_train(self, spec: dict, job_id: str, out: str, *, workers: int):
        """Train in one of ``workers`` worker processes (started once, reused: their decoded
        image caches persist across runs); returns a future of the summary."""
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_quiet_worker)
        return self._pool.submit(_train_single_threaded, spec, job_id, out)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- evaluator
    @property
    def evaluator(self):
        if self._evaluator is None:
            from services.evaluator.handler import Evaluator

            self._evaluator = Evaluator(device=self.device)
        return self._evaluator

    def evaluate(self, checkpoint: str, test_sets: list[str], spec: dict, out: str) -> dict:
        ref = self.evaluator.evaluate({"checkpoint": checkpoint, "test_sets": test_sets, "out": out, "spec": spec})
        return {"report": ref.uri, "html": ref.html_uri, "summary": ref.summary}


def _quiet_worker() -> None:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _train_single_threaded(spec: dict, job_id: str, out: str) -> dict:
    """A training run in a worker process, on one intra-op thread (the run id does not
    depend on it: threads change float rounding, not the experiment)."""
    from services.trainer.handler import train
    from services.trainer.spec import parse_spec

    return train(parse_spec({**spec, "threads": 1}), job_id=job_id, out=out, show_progress=False).summary()
