"""The local stack against real servers: Kafka, MinIO and Prometheus on 127.0.0.1.

No mocks: these start the real processes (``clipaudit.stack.up``), talk to them with
the real clients and check Prometheus really scrapes a registered clipaudit target.
"""

from __future__ import annotations

import io
import json
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipaudit.config import StackSettings
from clipaudit.errors import Unavailable
from clipaudit.stack import (
    SERVER_NAMES,
    down,
    format_status,
    register_target,
    status,
    unregister_target,
    up,
)

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def _stack(stack) -> StackSettings:
    """The running stack of the test session (tests/conftest.py starts it if needed)."""
    return stack


def test_status_reports_all_running_and_ready(_stack: StackSettings) -> None:
    st = status(_stack)
    assert set(st) == set(SERVER_NAMES)
    for name, info in st.items():
        assert info["running"], name
        assert info["ready"], name
        assert isinstance(info["pid"], int)
    assert st["kafka"]["port"] == _stack.kafka_port
    assert st["minio"]["endpoint"] == f"http://{_stack.host}:{_stack.minio_port}"
    assert st["prometheus"]["endpoint"] == _stack.prometheus_url
    text = format_status(st)
    assert all(name in text for name in SERVER_NAMES)


def test_up_again_is_a_noop(_stack: StackSettings) -> None:
    before = status(_stack)
    again = up(_stack)
    assert {info["action"] for info in again.values()} == {"already running"}
    assert {n: i["pid"] for n, i in again.items()} == {n: i["pid"] for n, i in before.items()}


def test_kafka_produce_and_consume(_stack: StackSettings) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"test-stack-{uuid.uuid4().hex[:8]}"
    payload = uuid.uuid4().bytes
    producer = KafkaProducer(bootstrap_servers=_stack.kafka_bootstrap)
    try:
        producer.send(topic, key=b"shard-0", value=payload).get(timeout=30)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=_stack.kafka_bootstrap,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    try:
        deadline = time.monotonic() + 30
        got = []
        while not got and time.monotonic() < deadline:
            got = [m for m in consumer if m.value == payload]
    finally:
        consumer.close()
    assert got and got[0].key == b"shard-0"


def test_minio_put_and_get(_stack: StackSettings) -> None:
    from minio import Minio

    client = Minio(
        _stack.s3_endpoint,
        access_key=_stack.s3_access_key,
        secret_key=_stack.s3_secret_key.get_secret_value(),
        secure=False,
    )
    assert client.bucket_exists(_stack.s3_bucket)
    key = f"tests/stack/{uuid.uuid4().hex}.bin"
    data = uuid.uuid4().bytes * 100
    client.put_object(_stack.s3_bucket, key, io.BytesIO(data), len(data))
    resp = client.get_object(_stack.s3_bucket, key)
    try:
        assert resp.read() == data
    finally:
        resp.close()
        resp.release_conn()
    client.remove_object(_stack.s3_bucket, key)


def test_prometheus_scrapes_a_registered_target(_stack: StackSettings) -> None:
    from prometheus_client import start_http_server

    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    path = register_target(_stack, name, port, labels={"role": "test"})
    try:
        assert json.loads(path.read_text()) == [
            {"targets": [f"127.0.0.1:{port}"],
             "labels": {"job": "clipaudit", "service": name, "role": "test"}}
        ]
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline:
            targets = _get_json(f"{_stack.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
            mine = [t for t in targets if t["labels"].get("service") == name]
            health = mine[0]["health"] if mine else None
            if health == "up":
                break
            time.sleep(0.5)
        assert health == "up", f"target {name} on port {port} never scraped: {health}"
    finally:
        assert unregister_target(_stack, name)
        server.shutdown()
        thread.join(timeout=5)
    assert not path.exists()


def test_port_in_use_fails_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        settings = StackSettings(
            state_dir=tmp_path, kafka_port=port, kafka_controller_port=_free_port(),
            minio_port=_free_port(), prometheus_port=_free_port(),
        )
        with pytest.raises(Unavailable) as err:
            up(settings)
    message = str(err.value)
    assert message.startswith(f"port {port} on 127.0.0.1 is in use by another process")
    assert "CLIPAUDIT_KAFKA_PORT" in message
    assert "\n" not in message
    assert not list(tmp_path.glob("*/pid")), "nothing may start when a port is taken"


@pytest.mark.slow
def test_restart_keeps_data(tmp_path: Path) -> None:
    """down then up on the same state dir restarts Kafka (formatted once) and MinIO with their data.
    The saved cluster id starts with '-' (one new id in 64 did, and formatting read it as an option)."""
    from kafka import KafkaConsumer, KafkaProducer

    ports = [_free_port() for _ in range(4)]
    settings = StackSettings(
        state_dir=tmp_path, kafka_port=ports[0], kafka_controller_port=ports[1],
        minio_port=ports[2], prometheus_port=ports[3], s3_bucket="restart",
    )
    (tmp_path / "kafka").mkdir(parents=True)
    (tmp_path / "kafka" / "cluster_id").write_text("-ryGlvvnV0w9X8a8GrohwA\n")
    try:
        assert {i["action"] for i in up(settings).values()} == {"started"}
        meta = next((tmp_path / "kafka").rglob("meta.properties")).read_text()
        assert "cluster.id=-ryGlvvnV0w9X8a8GrohwA" in meta
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        producer.send("restart", value=b"kept").get(timeout=30)
        producer.close()
        stopped = down(settings)
        assert {i["action"] for i in stopped.values()} <= {"stopped", "killed"}
        assert not any(i["running"] for i in status(settings).values())
        assert {i["action"] for i in down(settings).values()} == {"not running"}

        assert {i["action"] for i in up(settings).values()} == {"started"}
        consumer = KafkaConsumer(
            "restart", bootstrap_servers=settings.kafka_bootstrap, group_id="restart",
            auto_offset_reset="earliest", consumer_timeout_ms=1000,
        )
        deadline = time.monotonic() + 30
        values: list[bytes] = []
        while not values and time.monotonic() < deadline:
            values = [m.value for m in consumer]
        consumer.close()
        assert values == [b"kept"]
    finally:
        down(settings)
