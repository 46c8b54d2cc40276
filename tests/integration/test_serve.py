"""`clipaudit serve`: every service runs as its own process against the real stack,
answers gRPC health checks, exposes /metrics and is scraped by the real Prometheus."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipaudit.config import SERVICES
from clipaudit.serve import spawn
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def prometheus_targets(stack) -> list[dict]:
    with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/targets", timeout=5) as r:
        return json.load(r)["data"]["activeTargets"]


@pytest.fixture(scope="module")
def services(stack, tmp_path_factory):
    procs = {}
    logs = tmp_path_factory.mktemp("service-logs")
    try:
        for name in SERVICES:
            prefix = f"CLIPAUDIT_{name.upper()}_"
            env = {prefix + "GRPC_PORT": str(free_port()), prefix + "METRICS_PORT": str(free_port())}
            proc, ports = spawn(name, env=env, log_path=logs / f"{name}.log", timeout_s=120)
            procs[name] = (proc, ports)
        yield procs
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs.values():
            try:
                proc.wait(15)
            except Exception:  # noqa: BLE001
                proc.kill()


@pytest.mark.parametrize("name", SERVICES)
def test_service_answers_health_and_metrics(services, name):
    _, ports = services[name]
    with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    body = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).read().decode()
    assert "process_cpu_seconds_total" in body or "python_info" in body or "clipaudit_" in body


def test_prometheus_scrapes_every_running_service(stack, services):
    wanted = {name: ports["metrics"] for name, (_, ports) in services.items()}
    deadline = time.monotonic() + 60
    up = {}
    while time.monotonic() < deadline:
        up = {t["labels"].get("service"): t["health"] for t in prometheus_targets(stack)
              if t["labels"].get("job") == "clipaudit"}
        if all(up.get(n) == "up" for n in wanted):
            break
        time.sleep(1)
    assert {n: up.get(n) for n in wanted} == {n: "up" for n in wanted}
    # and the scraped series are queryable
    q = urllib.request.quote('up{job="clipaudit"}')
    with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/query?query={q}", timeout=5) as r:
        series = json.load(r)["data"]["result"]
    assert {s["metric"].get("service") for s in series} >= set(wanted)
