"""The classifier's file: one small JSON document, safe to load (no pickle) and easy
to read by eye.

::

    {"format": "clipaudit-domain-classifier", "format_version": 1,
     "classifier_id": "domains-<sha256 of the weights, 12 hex>",
     "embedding_model_id": "...", "dim": 64, "classes": ["natural", "rendition"],
     "head": {"kind": "linear", "weights": {"W": [[...]], "b": [...]}},
     "thresholds": {"default": {"target_precision": 0.95,
                                "per_class": {"natural": {"threshold": .., "precision": .., "recall": ..,
                                                          "reachable": true, ...}, ...}},
                    "strict": {...}},
     "validation": {...}, "test": {...}, "training": {...}}

``thresholds.<level>.per_class.<class>.threshold`` is the score threshold of that
class's head (decide the class iff its score >= threshold and no other head passes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipaudit.errors import InvalidInput
from services.classifier.logic import DomainHeads, check_threshold

FORMAT = "clipaudit-domain-classifier"
FORMAT_VERSION = 1
LEVELS = ("default", "strict")


@dataclass
class DomainClassifier:
    embedding_model_id: str
    classes: list[str]
    heads: DomainHeads
    thresholds: dict[str, dict[str, Any]]          # level -> {"target_precision", "per_class": {class: choice}}
    validation: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    classifier_id: str = ""

    def __post_init__(self):
        if not self.classifier_id:
            self.classifier_id = weights_id(self.heads)

    @property
    def dim(self) -> int:
        return self.heads.dim

    def threshold_vector(self, threshold: str | float) -> tuple[str, np.ndarray]:
        """(level name, one threshold per class) for "default", "strict" or a number in
        (0, 1) applied to every class."""
        if isinstance(threshold, str) and threshold in self.thresholds:
            per = self.thresholds[threshold]["per_class"]
            return threshold, np.array([per[c]["threshold"] for c in self.classes], dtype=np.float32)
        if isinstance(threshold, str) and not _looks_numeric(threshold):
            raise InvalidInput(f"unknown threshold {threshold!r}: use {' | '.join(self.thresholds)} or a number in (0, 1)")
        v = check_threshold(threshold)
        return f"{v:g}", np.full(len(self.classes), v, dtype=np.float32)

    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise InvalidInput(f"unknown class {name!r}; this classifier knows {', '.join(self.classes)}")
        return self.classes.index(name)

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "classifier_id": self.classifier_id,
            "embedding_model_id": self.embedding_model_id,
            "dim": self.dim,
            "classes": list(self.classes),
            "thresholds": self.thresholds,
            "validation": self.validation,
            "test": self.test,
            "training": self.training,
            "head": {"kind": self.heads.kind, "weights": self.heads.to_lists()},
        }
        return json.dumps(doc, indent=1, allow_nan=False, default=_plain).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str = "classifier") -> "DomainClassifier":
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidInput(f"{source} is not a classifier file (not JSON: {e})") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InvalidInput(f"{source} is not a clipaudit domain classifier (format {doc.get('format') if isinstance(doc, dict) else None!r})")
        if doc.get("format_version") != FORMAT_VERSION:
            raise InvalidInput(f"{source}: unsupported classifier format_version {doc.get('format_version')}")
        try:
            heads = DomainHeads.from_lists(doc["head"]["kind"], doc["head"]["weights"])
            classes = [str(c) for c in doc["classes"]]
            thresholds = doc["thresholds"]
            model = cls(str(doc["embedding_model_id"]), classes, heads, thresholds, doc.get("validation", {}),
                        doc.get("test", {}), doc.get("training", {}), doc.get("classifier_id", ""))
        except (KeyError, TypeError) as e:
            raise InvalidInput(f"{source}: classifier file lacks {e}") from e
        if heads.n_classes != len(classes):
            raise InvalidInput(f"{source}: {heads.n_classes} heads but {len(classes)} classes")
        for level, spec in thresholds.items():
            per = spec.get("per_class", {}) if isinstance(spec, dict) else {}
            for c in classes:
                t = per.get(c, {}).get("threshold") if isinstance(per.get(c), dict) else None
                if t is None or not (0 < float(t) <= 1):
                    raise InvalidInput(f"{source}: threshold {level}/{c} = {t!r} is not in (0, 1]")
        if weights_id(heads) != model.classifier_id:
            raise InvalidInput(f"{source}: weights do not match classifier_id {model.classifier_id} (edited or corrupt)")
        return model


def weights_id(heads: DomainHeads) -> str:
    h = hashlib.sha256(heads.kind.encode())
    for k in sorted(heads.weights):
        h.update(k.encode())
        h.update(np.ascontiguousarray(heads.weights[k], dtype="<f4").tobytes())
    return "domains-" + h.hexdigest()[:12]


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _plain(o):
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
