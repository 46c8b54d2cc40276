"""The bus contract against the real Kafka broker of the local stack."""

from __future__ import annotations

import time

import pytest

from clipaudit.errors import Unavailable
from tests.unit.test_bus_contract import BusContract, drain, event

pytestmark = pytest.mark.integration


class TestKafkaBus(BusContract):
    @pytest.fixture
    def bus(self, kafka_bus):
        return kafka_bus

    @pytest.fixture
    def topic(self, kafka_bus, unique):
        t = f"test-{unique}"
        kafka_bus.ensure_topics([t, t + ".dlq"], partitions=4)
        return t

    def test_group_members_split_partitions(self, bus, topic):
        a = bus.consumer([topic], "split")
        b = bus.consumer([topic], "split")
        # let the group settle with both members before producing
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            a.poll(0.2); b.poll(0.2)
            if a._c.assignment() and b._c.assignment():
                break
        for i in range(40):
            bus.publish(topic, f"k{i}", event(i))
        bus.flush()
        ga, gb = [], []
        deadline = time.monotonic() + 20
        while len(ga) + len(gb) < 40 and time.monotonic() < deadline:
            ga += a.poll(0.3); gb += b.poll(0.3)
        a.close(); b.close()
        assert len(ga) + len(gb) == 40 and ga and gb
        assert not {m.partition for m in ga} & {m.partition for m in gb}


def test_unreachable_broker_is_one_clear_error():
    from clipaudit.bus.kafka import KafkaBus

    with pytest.raises(Unavailable, match="unreachable"):
        KafkaBus("127.0.0.1:1", request_timeout_ms=2000)
