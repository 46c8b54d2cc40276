"""Prometheus metrics of the trainer, created in a registry passed in (never at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.samples_per_s = Gauge("clipaudit_trainer_samples_per_second",
                                   "training throughput over the last logging window (all processes)",
                                   registry=registry)
        self.step_seconds = Histogram("clipaudit_trainer_step_seconds", "wall time of one optimizer step",
                                      registry=registry,
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.loss = Gauge("clipaudit_trainer_loss", "training loss of the last step", registry=registry)
        self.learning_rate = Gauge("clipaudit_trainer_learning_rate", "learning rate of the last step",
                                   registry=registry)
        self.steps = Counter("clipaudit_trainer_steps_total", "optimizer steps taken", registry=registry)
        self.samples = Counter("clipaudit_trainer_samples_total", "training samples consumed", registry=registry)
        self.jobs = Gauge("clipaudit_trainer_jobs", "jobs known to this replica by state", ["state"],
                          registry=registry)
        for s in JOB_STATES:
            self.jobs.labels(s).set(0)
        self.jobs_finished = Counter("clipaudit_trainer_jobs_finished_total", "jobs that ended, by final state",
                                     ["state"], registry=registry)
        self.rejected = Counter("clipaudit_trainer_rejected_total",
                                "jobs or requests refused as bad input, by error type", ["reason"],
                                registry=registry)
        self.checkpoints = Counter("clipaudit_trainer_checkpoints_total", "checkpoint writes by outcome",
                                   ["outcome"], registry=registry)
        self.missing_keys = Gauge("clipaudit_trainer_missing_keys",
                                  "manifest keys of the current job not found in its data", registry=registry)
        self.bad_samples = Counter("clipaudit_trainer_bad_samples_total",
                                   "samples skipped because their image or label could not be decoded",
                                   registry=registry)
