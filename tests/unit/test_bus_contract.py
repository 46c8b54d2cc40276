"""One contract, two buses: in-memory (here) and Kafka on the real broker
(tests/integration/test_bus_kafka.py runs the same class)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from clipaudit.bus import DLQ_SUFFIX, handle_one, run_worker
from clipaudit.bus.memory import MemoryBus
from clipaudit.common.v1 import common_pb2
from clipaudit.events.v1 import events_pb2


def drain(consumer, n, timeout_s=20.0, commit=True):
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for m in consumer.poll(timeout_s=0.5):
            got.append(m)
            if commit:
                consumer.commit(m)
    return got


def event(i: int) -> events_pb2.ShardCreated:
    return events_pb2.ShardCreated(dataset="d", shard_id=f"s{i}", shard=common_pb2.ObjectRef(uri=f"s3://b/s{i}.tar", rows=i))


class BusContract:
    @pytest.fixture
    def bus(self):  # overridden
        raise NotImplementedError

    @pytest.fixture
    def topic(self):
        return f"test-{uuid.uuid4().hex[:10]}"

    def test_publish_consume_protobuf(self, bus, topic):
        for i in range(5):
            bus.publish(topic, f"s{i}", event(i))
        bus.flush()
        c = bus.consumer([topic], "g1")
        got = drain(c, 5)
        c.close()
        decoded = sorted(events_pb2.ShardCreated.FromString(m.value).shard.rows for m in got)
        assert decoded == [0, 1, 2, 3, 4]
        assert {m.key for m in got} == {f"s{i}".encode() for i in range(5)}

    def test_key_keeps_order(self, bus, topic):
        for i in range(10):
            bus.publish(topic, "same-shard", event(i))
        bus.flush()
        c = bus.consumer([topic], "g-order")
        got = drain(c, 10)
        c.close()
        assert [events_pb2.ShardCreated.FromString(m.value).shard.rows for m in got] == list(range(10))
        assert len({m.partition for m in got}) == 1

    def test_groups_are_independent(self, bus, topic):
        for i in range(3):
            bus.publish(topic, f"s{i}", event(i))
        bus.flush()
        a, b = bus.consumer([topic], "ga"), bus.consumer([topic], "gb")
        assert len(drain(a, 3)) == 3
        assert len(drain(b, 3)) == 3
        a.close(); b.close()

    def test_uncommitted_is_redelivered_after_crash(self, bus, topic):
        for i in range(4):
            bus.publish(topic, f"s{i}", event(i))
        bus.flush()
        c1 = bus.consumer([topic], "g-crash")
        first = drain(c1, 4, commit=False)  # "crash": handled but never committed
        assert len(first) == 4
        c1.close()
        c2 = bus.consumer([topic], "g-crash")
        again = drain(c2, 4)
        c2.close()
        assert sorted(m.offset for m in again) == sorted(m.offset for m in first)
        c3 = bus.consumer([topic], "g-crash")
        assert drain(c3, 1, timeout_s=3) == []  # committed now: nothing comes back
        c3.close()

    def test_worker_commits_after_handler_and_dead_letters(self, bus, topic):
        bus.publish(topic, "good", event(1))
        bus.publish(topic, "garbage", b"\xff\xff not a protobuf \x00")
        bus.publish(topic, "poison", event(666))
        bus.publish(topic, "good2", event(2))
        bus.flush()
        handled, attempts = [], {}

        def handler(ev):
            attempts[ev.shard.rows] = attempts.get(ev.shard.rows, 0) + 1
            if ev.shard.rows == 666:
                raise RuntimeError("poison pill")
            handled.append(ev.shard.rows)

        def decode(b):
            ev = events_pb2.ShardCreated.FromString(b)
            if not ev.shard_id:
                raise ValueError("not a ShardCreated")
            return ev

        stop = threading.Event()
        t = threading.Thread(target=run_worker, args=(bus, [topic], "g-worker", decode, handler),
                             kwargs={"stop": stop, "max_attempts": 3})
        t.start()
        deadline = time.monotonic() + 30
        while len(handled) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        dlq = bus.consumer([topic + DLQ_SUFFIX], "g-dlq")
        dead = drain(dlq, 2)
        dlq.close()
        stop.set()
        t.join(15)
        assert sorted(handled) == [1, 2]
        assert attempts[666] == 3
        letters = sorted((events_pb2.DeadLetter.FromString(m.value) for m in dead), key=lambda d: d.attempts)
        assert [d.attempts for d in letters] == [0, 3]
        assert "decode" in letters[0].error and letters[0].value.startswith(b"\xff\xff")
        assert "poison pill" in letters[1].error and letters[1].topic == topic
        # all four were committed: a new member of the group gets nothing
        c = bus.consumer([topic], "g-worker")
        assert drain(c, 1, timeout_s=3) == []
        c.close()


class TestMemoryBus(BusContract):
    @pytest.fixture
    def bus(self):
        return MemoryBus()

    def test_group_members_split_partitions(self, bus, topic):
        for i in range(40):
            bus.publish(topic, f"k{i}", event(i))
        a, b = bus.consumer([topic], "split"), bus.consumer([topic], "split")
        ga, gb = drain(a, 40, timeout_s=1), drain(b, 40, timeout_s=1)
        assert len(ga) + len(gb) == 40 and ga and gb
        assert not {m.partition for m in ga} & {m.partition for m in gb}


def test_handle_one_invalid_input_not_retried():
    from clipaudit.errors import InvalidInput

    bus = MemoryBus()
    calls = []

    def handler(ev):
        calls.append(ev)
        raise InvalidInput("bad shard")

    from clipaudit.bus import Message

    ok = handle_one(Message("t", 0, 0, b"k", event(1).SerializeToString()), events_pb2.ShardCreated.FromString,
                    handler, bus, group="g", max_attempts=5)
    assert not ok and len(calls) == 1
    assert len(bus.messages("t" + DLQ_SUFFIX)) == 1


def test_worker_metrics_count_outcomes():
    from prometheus_client import CollectorRegistry

    from clipaudit.bus.metrics import BusMetrics

    bus, reg = MemoryBus(), CollectorRegistry()
    bus.publish("m", "same", b"\x00garbage")   # same key: same partition, in this order
    bus.publish("m", "same", event(1))
    stop = threading.Event()

    def handler(ev):
        stop.set()

    t = threading.Thread(target=run_worker, args=(bus, ["m"], "g", events_pb2.ShardCreated.FromString, handler),
                         kwargs={"stop": stop, "metrics": BusMetrics(reg, "svc"), "poll_timeout_s": 0.1})
    t.start()
    t.join(10)
    def count(o):
        return reg.get_sample_value("clipaudit_bus_messages_total", {"service": "svc", "topic": "m", "outcome": o})

    assert (count("dead_lettered"), count("handled")) == (1.0, 1.0)
    assert reg.get_sample_value("clipaudit_bus_dead_letters_total", {"service": "svc", "topic": "m"}) == 1.0
