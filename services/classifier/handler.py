"""The classifier's use cases, one method each, called alike by the CLI, gRPC, the bus
worker and embedded mode. Ports (a store for outputs, a publisher, metrics, a text
embedder for zero-shot bootstrapping) are injected; the maths is in ``logic.py``."""

from __future__ import annotations

import io
import logging
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from clipaudit.errors import ClipauditError, FailedPrecondition, InvalidInput, NotFound
from services.classifier import logic
from services.classifier.model_file import LEVELS, DomainClassifier

log = logging.getLogger(__name__)

EmbedTexts = Callable[[list[str]], np.ndarray]
REPORT_COLUMNS = ("split", "class", "domain", "domain_group", "group")
RENDITION_WORDS = ("rendition", "sketch", "clipart", "painting", "quickdraw", "cartoon", "infograph", "render",
                   "drawing", "art", "imagenet-r", "imagenet_r")


# -- object locations ---------------------------------------------------------------------------

def open_object(location: str | Path, *, create: bool = True):
    """(store, key) of one object named by a local path or an ``s3://bucket/key`` URI;
    ``create`` makes a missing local parent directory (for writing)."""
    from clipaudit.store import is_s3_uri, open_store

    loc = str(location)
    if is_s3_uri(loc):
        parent, _, base = loc.rstrip("/").rpartition("/")
        if parent == "s3:/" or not base:
            raise InvalidInput(f"{loc!r} names a bucket, not an object")
        return open_store(parent), base
    p = Path(loc)
    return open_store(p.parent if str(p.parent) else ".", create=create), p.name


def read_object(location: str | Path) -> bytes:
    store, key = open_object(location, create=False)
    return store.get_bytes(key)


def open_embedding_set(location: str):
    from clipaudit.embeddings import EmbeddingSet

    if not location:
        raise InvalidInput("no embedding set given")
    return EmbeddingSet.open(location)


def nominal_domain_of(name: str, classes: Sequence[str]) -> str | None:
    """The domain a test set claims by its name: a class name in it wins
    (``test_natural`` -> natural); else, with a ``rendition`` class, a rendition style
    (``test_sketch``) -> rendition; else unknown (None)."""
    tokens = re.split(r"[^a-z0-9\-]+", name.lower())
    for c in classes:
        if c in tokens:
            return c
    if "rendition" in classes and any(w in tokens for w in RENDITION_WORDS):
        return "rendition"
    return None


def claimed_value(name: str, mapping: dict) -> str | None:
    """The original label value (e.g. ``painting``) a set or split name claims, if the
    classifier was trained on a column with such values (``test_painting`` -> painting)."""
    tokens = re.split(r"[^a-z0-9\-]+", name.lower())
    hits = [v for v in mapping if v.lower() in tokens]
    return hits[0] if len(hits) == 1 else None


def _finite(o):
    """NaN/inf -> None, recursively (the model file and reports are strict JSON)."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


@dataclass
class TrainResult:
    model: DomainClassifier
    uri: str
    labels_source: str                  # "labels:<column>" or "zero-shot"
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        m = self.model
        return _finite({
            "model": self.uri,
            "classifier_id": m.classifier_id,
            "embedding_model_id": m.embedding_model_id,
            "classes": m.classes,
            "labels_source": self.labels_source,
            "bootstrapped": self.labels_source == "zero-shot",
            "thresholds": m.thresholds,
            "validation": m.validation,
            "test": m.test,
            "warnings": self.warnings,
        })


@dataclass
class ClassifyResult:
    classes: list[str]
    scores: np.ndarray          # n x K
    decisions: np.ndarray       # n, class index or -1
    threshold: str
    thresholds: np.ndarray      # per class

    def labels(self) -> list[str]:
        names = self.classes + [logic.AMBIGUOUS_NAME]
        return [names[d] for d in self.decisions]


class ClassifierHandler:
    def __init__(self, store=None, publisher=None, metrics=None, *, embed_texts: EmbedTexts | None = None,
                 text_model_id: str | None = None, worker_model: str | None = None, worker_dataset_prefix: str = "",
                 progress: bool = False):
        self.store = store                  # outputs of the bus worker (labels/...)
        self.publisher = publisher
        self.metrics = metrics
        self.embed_texts = embed_texts
        self.text_model_id = text_model_id
        self.worker_model = worker_model
        self.worker_dataset_prefix = worker_dataset_prefix   # the worker labels only datasets under it
        self.progress = progress
        self._models: dict[str, DomainClassifier] = {}

    # -- bookkeeping ---------------------------------------------------------------------------

    @contextmanager
    def _operation(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        except ClipauditError as e:
            if self.metrics is not None:
                self.metrics.rejected.labels(name, type(e).__name__).inc()
            raise
        finally:
            if self.metrics is not None:
                self.metrics.latency.labels(name).observe(time.perf_counter() - t0)

    def _count(self, operation: str, level: str, model: DomainClassifier, decisions: np.ndarray,
               vectors: bool = True) -> None:
        """Per-domain decision counts; ``vectors=False`` for a second threshold level of
        the same vectors (each vector is counted as classified once)."""
        if self.metrics is None:
            return
        if vectors:
            self.metrics.vectors.labels(operation).inc(len(decisions))
        counts = np.bincount(decisions + 1, minlength=len(model.classes) + 1)
        for name, n in zip([logic.AMBIGUOUS_NAME] + model.classes, counts):
            if n:
                self.metrics.decisions.labels(name, level).inc(int(n))

    def load_model(self, location: str) -> DomainClassifier:
        if not location:
            raise InvalidInput("no classifier model given")
        if location not in self._models:
            self._models[location] = DomainClassifier.from_json(read_object(location), source=str(location))
        return self._models[location]

    @staticmethod
    def _require_model_of(model: DomainClassifier, embedding_model_id: str, dim: int | None, what: str) -> None:
        if embedding_model_id and embedding_model_id != "unknown" and embedding_model_id != model.embedding_model_id:
            raise FailedPrecondition(f"{what} holds embeddings of model {embedding_model_id!r}, but classifier "
                                     f"{model.classifier_id} was trained on {model.embedding_model_id!r}")
        if dim is not None and dim != model.dim:
            raise InvalidInput(f"{what} has dimension {dim}, the classifier expects {model.dim}")

    # -- train ---------------------------------------------------------------------------------

    def train(self, embeddings: str, *, out: str, label_column: str | None = None,
              classes: Sequence[str] = logic.DEFAULT_CLASSES, seed: int = 0, head: str = "linear",
              default_precision: float = 0.95, strict_precision: float = 0.98, keep_fraction: float = 0.5,
              l2: float = 1e-4, min_threshold: float = 0.5) -> TrainResult:
        with self._operation("train"):
            classes = [str(c).strip() for c in classes if str(c).strip()]
            for name, v in (("default precision", default_precision), ("strict precision", strict_precision)):
                logic.check_threshold(v, f"target {name}")
            if strict_precision < default_precision:
                raise InvalidInput(f"the strict target precision ({strict_precision}) is below the default one "
                                   f"({default_precision})")
            if head not in ("linear", "mlp"):
                raise InvalidInput(f"unknown head {head!r} (linear | mlp)")
            if not out:
                raise InvalidInput("no output location for the classifier (--out)")
            es = open_embedding_set(embeddings)
            x, meta = es.load(dtype=np.float32)
            x = logic.check_embeddings(x, dim=es.dim, what=f"embedding set {es.uri()}")
            warnings: list[str] = []
            training: dict[str, Any] = {"embeddings": es.uri(), "rows": int(len(x)), "seed": seed, "head": head,
                                        "l2": l2, "split": [0.75, 0.125, 0.125]}
            if label_column:
                if label_column not in meta.columns:
                    raise InvalidInput(f"label column {label_column!r} is not in {es.uri()} "
                                       f"(columns: {', '.join(map(str, meta.columns))})")
                y, mapping = logic.map_labels(meta[label_column].astype(str).tolist(), classes)
                rows = np.arange(len(x))
                labels_source = f"labels:{label_column}"
                training.update(label_column=label_column, label_mapping=mapping)
            else:
                rows, y, zs_info = self._bootstrap(x, meta, es.model_id, classes, keep_fraction)
                labels_source = "zero-shot"
                training.update(label_column=None, zero_shot=zs_info)
                warnings.append("no labels given: trained on zero-shot pseudo-labels from text prompts; "
                                "validation metrics are measured against those pseudo-labels")
            training["labels_source"] = labels_source
            tr, va, te = logic.stratified_split(y, seed)
            xs = x[rows]
            training.update(n_train=int(len(tr)), n_validation=int(len(va)), n_test=int(len(te)),
                            class_counts={c: int((y == i).sum()) for i, c in enumerate(classes)})
            heads = logic.fit_heads(xs[tr], y[tr], len(classes), kind=head, seed=seed, l2=l2)
            s_va, s_te = heads.scores(xs[va]), heads.scores(xs[te])
            thresholds: dict[str, dict] = {}
            for level, target in zip(LEVELS, (default_precision, strict_precision)):
                per = {}
                for i, c in enumerate(classes):
                    ch = logic.select_threshold(s_va[:, i], y[va] == i, target, min_threshold=min_threshold)
                    if not ch.reachable:
                        warnings.append(f"{level} threshold for {c!r}: target precision {target} is unreachable on "
                                        f"the validation split; best reachable {ch.precision:.4f} "
                                        f"(threshold {ch.threshold:.4f}, recall {ch.recall:.4f})")
                    per[c] = ch.as_dict()
                thresholds[level] = {"target_precision": target, "min_threshold": min_threshold, "per_class": per}
            model = DomainClassifier(es.model_id, classes, heads, thresholds, training=training)
            model.validation = self._evaluate(model, s_va, y[va])
            model.test = self._evaluate(model, s_te, y[te])
            if label_column and any(k != v for k, v in training["label_mapping"].items()):
                values = meta[label_column].astype(str).to_numpy()[rows][te]
                model.test["by_value"] = self._rates_by_value(model, s_te, values)
            model.thresholds, model.validation, model.test, model.training = (
                _finite(model.thresholds), _finite(model.validation), _finite(model.test), _finite(model.training))
            store, key = open_object(out)
            store.put_bytes(key, model.to_json())
            uri = store.uri(key)
            self._models.pop(out, None)
            self._models.pop(uri, None)
            if self.metrics is not None:
                self.metrics.trained.labels("zero-shot" if labels_source == "zero-shot" else "labels").inc()
            for w in warnings:
                log.warning("%s", w)
            return TrainResult(model, uri, labels_source, warnings)

    def _bootstrap(self, x, meta, set_model_id: str, classes, keep_fraction: float):
        if self.embed_texts is None:
            raise FailedPrecondition("no label column given and no text model to bootstrap labels zero-shot "
                                     "(pass --label-column, or --model-spec of the model that made the embeddings)")
        if self.text_model_id and set_model_id not in (self.text_model_id, "unknown"):
            raise FailedPrecondition(f"the embedding set was made by {set_model_id!r} but the text model is "
                                     f"{self.text_model_id!r}: zero-shot prompts must come from the same model")
        objects = ["an object"]
        if "class" in meta.columns:
            objects += [f"a {c}" for c in sorted(meta["class"].astype(str).unique())[:50]]
        prompts = logic.domain_prompts(classes, objects)
        embs = []
        for c in classes:
            e = np.asarray(self.embed_texts(prompts[c]), dtype=np.float32)
            if e.ndim != 2 or e.shape[0] != len(prompts[c]):
                raise InvalidInput(f"text embedder returned shape {e.shape} for {len(prompts[c])} prompts")
            embs.append(e)
        zs = logic.zero_shot_labels(x, embs, keep_fraction=keep_fraction)
        info = {"text_model_id": self.text_model_id, "prompts": {c: prompts[c][:8] for c in classes},
                "n_prompts": {c: len(prompts[c]) for c in classes}, "keep_fraction": keep_fraction,
                "pseudo_label_counts": {classes[k]: v for k, v in zs.counts.items()},
                "kept": int(len(zs.indices))}
        return zs.indices, zs.labels, info

    @staticmethod
    def _rates_by_value(model: DomainClassifier, scores: np.ndarray, values: np.ndarray) -> dict:
        """Per original label value (each rendition style) and level: the share of its
        held-out rows decided as each class — a style's own error rates, which the
        report uses for a test set of that style instead of the class average."""
        out: dict[str, Any] = {}
        for level in model.thresholds:
            d = logic.decide(scores, model.threshold_vector(level)[1])
            out[level] = {}
            for v in np.unique(values):
                mask = values == v
                out[level][str(v)] = {"n": int(mask.sum()),
                                      **{c: float((d[mask] == i).mean()) for i, c in enumerate(model.classes)}}
        return out

    @staticmethod
    def _evaluate(model: DomainClassifier, scores: np.ndarray, y: np.ndarray) -> dict:
        """Per threshold level and class: head precision/recall at its own threshold and
        decision-level rates (ambiguous counted as not decided)."""
        out: dict[str, Any] = {"n": int(len(y))}
        for level in model.thresholds:
            _, thr = model.threshold_vector(level)
            d = logic.decide(scores, thr)
            rates = logic.decision_rates(d, y, len(model.classes))
            out[level] = {c: rates[i] for i, c in enumerate(model.classes)}
            out[level]["ambiguous_share"] = float((d == logic.AMBIGUOUS).mean()) if len(d) else float("nan")
        return out

    # -- classify ------------------------------------------------------------------------------

    def classify(self, model: str | DomainClassifier, vectors: np.ndarray, *, threshold: str | float = "default",
                 embedding_model_id: str = "", operation: str = "classify") -> ClassifyResult:
        with self._operation(operation):
            m = self.load_model(model) if isinstance(model, str) else model
            vectors = np.asarray(vectors)
            self._require_model_of(m, embedding_model_id, vectors.shape[1] if vectors.ndim == 2 else None, "the request")
            level, thr = m.threshold_vector(threshold)
            scores = m.heads.scores(vectors, check=True, what="vectors")
            d = logic.decide(scores, thr)
            self._count(operation, level, m, d)
            return ClassifyResult(list(m.classes), scores, d, level, thr)

    def _scored_parts(self, es, m: DomainClassifier, columns: list[str]):
        """(metadata, scores) per part of an embedding set, with a progress bar."""
        from tqdm import tqdm

        import sys

        show = self.progress and sys.stderr.isatty()
        for part in tqdm(es.parts, desc="classifying parts", disable=not show, unit="part"):
            v = es.load_vectors(part)
            meta = es.load_metadata(part, columns=[c for c in ["key", *columns] if c])
            yield meta, m.heads.scores(v, check=True, what=f"{es.uri()} part {part}")

    # -- report --------------------------------------------------------------------------------

    def report(self, embeddings: str, model: str, *, nominal: str | None = None,
               columns: Iterable[str] | None = None, out: str | None = None) -> dict:
        """Share of each domain under each threshold (95% Wilson CI, and Rogan–Gladen
        corrected with the classifier's test-split rates), for the whole set and per value
        of each label column present; contamination of every group whose nominal domain is
        known (from ``nominal`` for the whole set, from the split name per split)."""
        with self._operation("report"):
            m = self.load_model(model)
            es = open_embedding_set(embeddings)
            self._require_model_of(m, es.model_id, es.dim, f"embedding set {es.uri()}")
            if nominal is not None and nominal not in m.classes:
                raise InvalidInput(f"unknown nominal domain {nominal!r}; choose {' | '.join(m.classes)}")
            nominal_source = "given" if nominal else None
            if nominal is None:   # a set named like its domain (".../test_sketch") claims it
                nominal = nominal_domain_of(es.uri().rstrip("/").rsplit("/", 1)[-1], m.classes)
                nominal_source = "set name" if nominal else None
            available = list(es.load_metadata(es.parts[0]).columns)
            wanted = list(columns) if columns is not None else list(REPORT_COLUMNS)
            unknown = [c for c in wanted if c not in available and columns is not None]
            if unknown:
                raise InvalidInput(f"columns {unknown} are not in {es.uri()} (columns: {', '.join(available)})")
            by = [c for c in wanted if c in available]
            gt_col = m.training.get("label_column")
            gt_map = m.training.get("label_mapping") or {}
            if gt_col not in available:
                gt_col = None
            levels = list(m.thresholds)
            K = len(m.classes)
            thr = {lv: m.threshold_vector(lv)[1] for lv in levels}
            # counts[level][(column, value)] = decisions histogram (ambiguous first); truth[(column, value)] likewise
            counts: dict[str, dict[tuple, np.ndarray]] = {lv: {} for lv in levels}
            truth: dict[tuple, np.ndarray] = {}
            n_total = 0
            for meta, scores in self._scored_parts(es, m, sorted(set(by + ([gt_col] if gt_col else [])))):
                n_total += len(scores)
                groups = [(("__all__", "__all__"), np.ones(len(meta), bool))]
                for col in by:
                    vals = meta[col].astype(str).to_numpy()
                    for v in np.unique(vals):
                        groups.append(((col, v), vals == v))
                y_true = None
                if gt_col:
                    vals = meta[gt_col].astype(str).map(lambda s: gt_map.get(s)).to_numpy()
                    index = {c: i for i, c in enumerate(m.classes)}
                    y_true = np.array([index.get(v, -1) if v is not None else -1 for v in vals])
                for j, lv in enumerate(levels):
                    d = logic.decide(scores, thr[lv])
                    self._count("report", lv, m, d, vectors=j == 0)
                    for g, mask in groups:
                        h = np.bincount(d[mask] + 1, minlength=K + 1)
                        counts[lv][g] = counts[lv].get(g, 0) + h
                if y_true is not None:
                    for g, mask in groups:
                        truth[g] = truth.get(g, 0) + np.bincount(y_true[mask] + 1, minlength=K + 1)
            report = {
                "embeddings": es.uri(), "embedding_model_id": es.model_id, "n": n_total,
                "classifier": {"uri": str(model), "classifier_id": m.classifier_id, "classes": m.classes},
                "thresholds": {lv: {c: float(t) for c, t in zip(m.classes, thr[lv])} for lv in levels},
                "correction": "Rogan-Gladen with the classifier's decision rates on its held-out test split",
                "ground_truth_column": gt_col,
                "nominal_domain": nominal, "nominal_source": nominal_source,
                "overall": self._group_report(m, counts, truth, ("__all__", "__all__"), nominal,
                                              claimed_value(es.uri().rstrip("/").rsplit("/", 1)[-1], gt_map)
                                              if nominal_source == "set name" else None),
                "by": {},
            }
            for col in by:
                report["by"][col] = {}
                for g in sorted(k for k in counts[levels[0]] if k[0] == col):
                    nom = nominal_domain_of(g[1], m.classes) if col == "split" else None
                    value = claimed_value(g[1], gt_map) if nom else None
                    report["by"][col][g[1]] = self._group_report(m, counts, truth, g, nom, value)
            report = _finite(report)
            if out:
                import json

                store, key = open_object(out)
                store.put_bytes(key, json.dumps(report, indent=2, sort_keys=True).encode())
                report["uri"] = store.uri(key)
            return report

    @staticmethod
    def _group_report(m: DomainClassifier, counts, truth, g, nominal: str | None, value: str | None = None) -> dict:
        K = len(m.classes)
        names = [logic.AMBIGUOUS_NAME] + m.classes
        by_value = m.test.get("by_value", {})
        if value is not None and (m.training.get("label_mapping", {}).get(value) != nominal
                                  or value not in by_value.get(next(iter(counts)), {})):
            value = None   # only a value of the nominal domain with held-out rates of its own
        out: dict[str, Any] = {"nominal_domain": nominal, "nominal_value": value}
        for lv in counts:
            h = counts[lv][g]
            n = int(h.sum())
            rates = m.test.get(lv, {})
            shares = {}
            for j, name in enumerate(names):
                r = rates.get(name, {}) if name != logic.AMBIGUOUS_NAME else {}
                shares[name] = logic.share_of(int(h[j]), n, r).as_dict()
            entry: dict[str, Any] = {"n": n, "shares": shares}
            if nominal is not None:
                other = [c for c in m.classes if c != nominal]
                k_other = int(sum(h[1 + m.classes.index(c)] for c in other))
                if K == 2:
                    r = dict(rates.get(other[0], {}))
                    if value is not None:   # the false positives of this style, not of the class average
                        v = by_value[lv][value]
                        r.update(false_positive_rate=v[other[0]], negatives=v["n"])
                    s = logic.share_of(k_other, n, r)
                else:
                    s = logic.share_of(k_other, n)
                entry["contamination"] = {"other_domains": other, **s.as_dict()}
            out[lv] = entry
        if g in truth:
            t = truth[g]
            n_known = int(t[1:].sum())
            out["ground_truth"] = {c: (int(t[1 + i]) / n_known if n_known else None) for i, c in enumerate(m.classes)}
            out["ground_truth"]["n_labelled"] = n_known
            if nominal is not None and n_known:
                other_idx = [1 + i for i, c in enumerate(m.classes) if c != nominal]
                out["ground_truth"]["contamination"] = float(t[other_idx].sum()) / n_known
        return out

    # -- filter --------------------------------------------------------------------------------

    def filter(self, embeddings: str, model: str, *, keep: str, threshold: str | float = "strict", out: str):
        """A subset manifest of the keys decided as ``keep`` under ``threshold``."""
        from clipaudit.manifests import write_manifest

        with self._operation("filter"):
            if not out:
                raise InvalidInput("no output location for the manifest (--out)")
            m = self.load_model(model)
            c = m.class_index(keep)
            level, thr = m.threshold_vector(threshold)
            es = open_embedding_set(embeddings)
            self._require_model_of(m, es.model_id, es.dim, f"embedding set {es.uri()}")
            keys, n = [], 0
            for meta, scores in self._scored_parts(es, m, []):
                d = logic.decide(scores, thr)
                self._count("filter", level, m, d)
                keys.extend(meta["key"].astype(str).to_numpy()[d == c].tolist())
                n += len(d)
            manifest = write_manifest(out, keys, rule="domain_filter", parent=es.uri(), sources=[str(model)],
                                      parameters={"keep": keep, "threshold": level,
                                                  "thresholds": {k: float(t) for k, t in zip(m.classes, thr)},
                                                  "classifier_id": m.classifier_id,
                                                  "embedding_model_id": m.embedding_model_id, "input_rows": n})
            return manifest

    # -- bus worker ----------------------------------------------------------------------------

    def labels_key(self, classifier_id: str, dataset: str, shard_id: str) -> str:
        for what, v in (("dataset", dataset), ("shard_id", shard_id)):
            if not v or ".." in v.split("/") or v.startswith("/"):
                raise InvalidInput(f"event has an unusable {what} {v!r}")
        return f"labels/{classifier_id}/{dataset}/{shard_id}.parquet"

    def label_shard(self, event) -> Any:
        """EmbeddingsWritten -> labels parquet (key, p_<class>..., decision_default,
        decision_strict) in the store -> LabelsWritten on labels.v1. Idempotent: the
        output key is deterministic, a redelivered event rewrites the same object."""
        import hashlib

        import pandas as pd

        from clipaudit.bus import TOPIC_LABELS
        from clipaudit.common.v1 import common_pb2
        from clipaudit.events.v1 import events_pb2

        if not event.dataset.startswith(self.worker_dataset_prefix):
            log.debug("skipping shard %s of dataset %s (not under %r)", event.shard_id, event.dataset,
                      self.worker_dataset_prefix)
            return None
        with self._operation("label_shard"):
            if not self.worker_model:
                raise FailedPrecondition("the classifier worker has no model configured (CLIPAUDIT_CLASSIFIER_MODEL)")
            m = self.load_model(self.worker_model)
            self._require_model_of(m, event.model_id, event.dim or None, f"shard {event.dataset}/{event.shard_id}")
            if not event.model_id:
                raise InvalidInput(f"shard {event.shard_id}: event names no embedding model")
            key = self.labels_key(m.classifier_id, event.dataset, event.shard_id)
            data = read_object(event.embeddings.uri) if event.embeddings.uri else b""
            if not data:
                raise InvalidInput(f"shard {event.shard_id}: event names no embeddings object")
            if event.embeddings.sha256 and hashlib.sha256(data).hexdigest() != event.embeddings.sha256:
                raise InvalidInput(f"shard {event.shard_id}: {event.embeddings.uri} does not match the event's sha256")
            try:
                vectors = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise InvalidInput(f"shard {event.shard_id}: {event.embeddings.uri} is not a .npy array: {e}") from e
            meta = pd.read_parquet(io.BytesIO(read_object(event.metadata.uri)), columns=["key"])
            if len(meta) != len(vectors):
                raise InvalidInput(f"shard {event.shard_id}: {len(vectors)} vectors but {len(meta)} metadata rows")
            scores = m.heads.scores(vectors, check=True, what=f"shard {event.shard_id}")
            table = {"key": meta["key"].astype(str).to_numpy()}
            for i, c in enumerate(m.classes):
                table[f"p_{c}"] = scores[:, i]
            names = np.array(m.classes + [logic.AMBIGUOUS_NAME], dtype=object)
            for j, level in enumerate(m.thresholds):
                d = logic.decide(scores, m.threshold_vector(level)[1])
                self._count("label_shard", level, m, d, vectors=j == 0)
                table[f"decision_{level}"] = names[d]        # -1 -> last name, "ambiguous"
            buf = io.BytesIO()
            pd.DataFrame(table).to_parquet(buf, index=False)
            payload = buf.getvalue()
            self.store.put_bytes(key, payload)
            ev = events_pb2.LabelsWritten(
                dataset=event.dataset, shard_id=event.shard_id, classifier_id=m.classifier_id,
                labels=common_pb2.ObjectRef(uri=self.store.uri(key), sha256=hashlib.sha256(payload).hexdigest(),
                                            rows=len(vectors), size_bytes=len(payload)))
            self.publisher.publish(TOPIC_LABELS, event.shard_id, ev)
            self.publisher.flush()
            if self.metrics is not None:
                self.metrics.shards.inc()
            return ev
