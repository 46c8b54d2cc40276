"""Prometheus metrics of a bus worker, created in an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class BusMetrics:
    def __init__(self, registry: CollectorRegistry, service: str):
        self.service = service
        self.messages = Counter("clipaudit_bus_messages_total", "bus messages consumed, by outcome",
                                ["service", "topic", "outcome"], registry=registry)
        self.dead_letters = Counter("clipaudit_bus_dead_letters_total", "messages sent to a dead-letter topic",
                                    ["service", "topic"], registry=registry)
        self.failed_attempts = Counter("clipaudit_bus_failed_attempts_total", "handler attempts that raised",
                                       ["service", "topic"], registry=registry)

    def handled(self, topic: str, ok: bool) -> None:
        self.messages.labels(self.service, topic, "handled" if ok else "dead_lettered").inc()
        if not ok:
            self.dead_letters.labels(self.service, topic).inc()

    def failed_attempt(self, topic: str) -> None:
        self.failed_attempts.labels(self.service, topic).inc()
