"""The shared composition root of a service process.

``python -m services.<name>`` builds its settings and calls :func:`run_service` with a
``build`` function that wires the service's handler into a gRPC servicer and (optionally)
a bus worker. This module creates the clients and the metrics registry — never at
import — serves gRPC + /metrics, runs the workers, registers the process with
Prometheus' file-based discovery, and shuts down cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry

from clipaudit.config import ServiceSettings, StackSettings

log = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    """A bus consumer: ``handler(decode(message.value))`` for every message on ``topics``."""

    topics: list[str]
    group: str
    decode: Callable
    handler: Callable


@dataclass
class ServiceParts:
    registrations: list = field(default_factory=list)     # (add_XServicer_to_server, servicer)
    service_names: list[str] = field(default_factory=list)
    workers: list[WorkerSpec] = field(default_factory=list)
    on_stop: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class Runtime:
    """Ports handed to a service's ``build``: created here, once."""

    name: str
    settings: ServiceSettings
    registry: CollectorRegistry
    stack: StackSettings
    _store: object = None
    _bus: object = None

    @property
    def store(self):
        if self._store is None:
            from clipaudit.store import open_store

            self._store = open_store(self.settings.store, settings=self.stack)
        return self._store

    @property
    def bus(self):
        if self._bus is None:
            from clipaudit.bus import open_bus

            self._bus = open_bus(self.settings.bus, settings=self.stack, max_handler_s=self.settings.max_handler_s)
        return self._bus


def run_service(name: str, settings: ServiceSettings, build: Callable[[Runtime], ServiceParts],
                *, stop: threading.Event | None = None, ready: Callable[[int, int], None] | None = None) -> None:
    from clipaudit.bus import run_worker
    from clipaudit.rpc import ServiceMetrics, build_server, start_metrics_http
    from clipaudit.stack import register_target, unregister_target

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    stop = stop or threading.Event()
    registry = CollectorRegistry()
    stack = StackSettings()
    rt = Runtime(name, settings, registry, stack)
    parts = build(rt)
    metrics_port = start_metrics_http(registry, settings.metrics_port, settings.host)
    server = build_server(parts.registrations, parts.service_names, port=settings.grpc_port, host=settings.host,
                          metrics=ServiceMetrics(registry, name), max_workers=settings.grpc_workers)
    if settings.register_prometheus:
        register_target(stack, name, metrics_port, {"grpc_port": str(server.port)})
    threads = []
    from clipaudit.bus.metrics import BusMetrics

    bus_metrics = BusMetrics(registry, name) if parts.workers else None
    if settings.consume:
        for w in parts.workers:
            t = threading.Thread(target=run_worker, name=f"{name}-worker",
                                 args=(rt.bus, w.topics, w.group, w.decode, w.handler),
                                 kwargs={"stop": stop, "max_attempts": settings.max_attempts, "metrics": bus_metrics},
                                 daemon=True)
            t.start()
            threads.append(t)
    log.info("%s serving gRPC on %s:%d, metrics on :%d, %d bus worker(s)", name, settings.host, server.port,
             metrics_port, len(threads))
    print(f"READY {name} grpc={server.port} metrics={metrics_port}", flush=True)
    if ready:
        ready(server.port, metrics_port)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        log.info("%s stopping", name)
        if settings.register_prometheus:
            unregister_target(stack, name)
        server.stop()
        for t in threads:
            t.join(timeout=10)
        for fn in parts.on_stop:
            fn()
        if rt._bus is not None:
            rt._bus.close()


def service_names_of(*descriptors: Iterable) -> list[str]:
    return [d.full_name for d in descriptors]
