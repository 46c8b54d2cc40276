"""Prometheus metrics of the classifier, created in a registry passed in (never at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class ClassifierMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.vectors = Counter("clipaudit_classifier_vectors_total", "embedding vectors classified",
                               ["operation"], registry=registry)
        self.decisions = Counter("clipaudit_classifier_decisions_total",
                                 "decisions per domain (a class name or 'ambiguous') and threshold level",
                                 ["domain", "threshold"], registry=registry)
        self.latency = Histogram("clipaudit_classifier_seconds", "wall time of one classifier operation",
                                 ["operation"], registry=registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                          5, 10, 30, 120, 600))
        self.rejected = Counter("clipaudit_classifier_rejected_total",
                                "requests refused for bad input, by operation and error class",
                                ["operation", "error"], registry=registry)
        self.shards = Counter("clipaudit_classifier_shards_labelled_total",
                              "embedding shards labelled by the bus worker", registry=registry)
        self.trained = Counter("clipaudit_classifier_trainings_total", "classifiers trained, by label source",
                               ["labels"], registry=registry)
