"""Prometheus metrics of the evaluator, created in a registry handed in by the
composition root (never at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class EvaluatorMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.evaluations = Counter("clipaudit_evaluator_evaluations_total", "Evaluations finished, by outcome",
                                   ["outcome"], registry=registry)
        self.bad_input = Counter("clipaudit_evaluator_rejected_total",
                                 "Evaluations refused or failed, by error class (InvalidInput, NotFound...)",
                                 ["error"], registry=registry)
        self.images = Counter("clipaudit_evaluator_images_total", "Test images scored", registry=registry)
        self.seconds = Histogram("clipaudit_evaluator_evaluation_seconds", "Wall time of one evaluation",
                                 registry=registry, buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 14400))
        self.comparisons = Counter("clipaudit_evaluator_comparisons_total", "Comparisons written", registry=registry)

    def evaluation_done(self, seconds: float, images: int) -> None:
        self.evaluations.labels("ok").inc()
        self.images.inc(images)
        self.seconds.observe(seconds)

    def evaluation_failed(self, error: str) -> None:
        self.evaluations.labels("error").inc()
        self.bad_input.labels(error).inc()
