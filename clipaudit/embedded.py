"""Embedded mode: all five services in one process, no servers.

Each service's own composition root (``services/<name>/__main__.py: build``) is called
with a :class:`~clipaudit.rpc.runtime.Runtime` whose bus is one shared
:class:`~clipaudit.bus.memory.MemoryBus` and whose store is a local directory; their
bus workers run in threads with the same ``run_worker`` loop as under Kafka. Only the
wiring differs from ``clipaudit serve all``: the handlers, the events and the
commit-after-handler semantics are the same.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from clipaudit.bus import run_worker
from clipaudit.bus.memory import MemoryBus
from clipaudit.bus.metrics import BusMetrics
from clipaudit.config import SERVICES, StackSettings
from clipaudit.rpc.runtime import Runtime, ServiceParts
from clipaudit.store import open_store

SETTINGS_CLASSES = {n: f"services.{n}.settings:{n.capitalize()}Settings" for n in SERVICES}


def settings_for(name: str, root: Path, **overrides):
    mod, _, cls = SETTINGS_CLASSES[name].partition(":")
    klass = getattr(importlib.import_module(mod), cls)
    return klass(bus="memory", store=str(root), consume=True, register_prometheus=False, grpc_port=0,
                 metrics_port=0, **overrides)


@dataclass
class EmbeddedSystem:
    root: Path
    services: tuple[str, ...] = SERVICES
    overrides: dict[str, dict] = field(default_factory=dict)
    bus: MemoryBus = field(default_factory=MemoryBus)
    parts: dict[str, ServiceParts] = field(default_factory=dict)
    registries: dict[str, CollectorRegistry] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        store = open_store(self.root)
        for name in self.services:
            settings = settings_for(name, self.root, **self.overrides.get(name, {}))
            reg = CollectorRegistry()
            rt = Runtime(name, settings, reg, StackSettings())
            rt._bus, rt._store = self.bus, store
            self.parts[name] = importlib.import_module(f"services.{name}.__main__").build(rt)
            self.registries[name] = reg

    def start(self) -> "EmbeddedSystem":
        for name, parts in self.parts.items():
            metrics = BusMetrics(self.registries[name], name) if parts.workers else None
            for w in parts.workers:
                t = threading.Thread(target=run_worker, name=f"{name}-worker", daemon=True,
                                     args=(self.bus, w.topics, w.group, w.decode, w.handler),
                                     kwargs={"stop": self._stop, "metrics": metrics, "poll_timeout_s": 0.2})
                t.start()
                self._threads.append(t)
        return self

    def servicer(self, name: str):
        """The gRPC servicer object of a service (call its methods in process)."""
        return self.parts[name].registrations[0][1]

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        for parts in self.parts.values():
            for fn in parts.on_stop:
                fn()

    def __enter__(self) -> "EmbeddedSystem":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
