"""Shared fixtures. Unit tests need no server. Integration tests use the real local
stack (Kafka, MinIO, Prometheus): `make test` starts it; the `stack` fixture starts it
too when a developer runs pytest by hand, and fails (never skips) if it cannot."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config, items):
    import torch  # noqa: F401 - imported once here so gpu checks are cheap

    has_cuda = torch.cuda.is_available()
    for item in items:
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (gpu tests never run on CPU instead)"))


@pytest.fixture(scope="session")
def stack():
    """StackSettings of a running, ready local stack."""
    from clipaudit import stack as stack_mod
    from clipaudit.config import StackSettings

    settings = StackSettings()
    status = stack_mod.status(settings)
    if not all(v.get("ready") for v in status.values() if isinstance(v, dict)):
        stack_mod.ensure_tools(settings)
        stack_mod.up(settings)
    return settings


@pytest.fixture
def s3_store(stack):
    from clipaudit.store import open_store

    return open_store(f"s3://{stack.s3_bucket}/tests/{uuid.uuid4().hex[:10]}", settings=stack)


@pytest.fixture
def kafka_bus(stack):
    from clipaudit.bus.kafka import KafkaBus

    bus = KafkaBus(stack.kafka_bootstrap)
    yield bus
    bus.close()


@pytest.fixture
def unique():
    return uuid.uuid4().hex[:10]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
