"""The message-bus port: protobuf events by topic, consumed in groups.

Two implementations share one contract (``tests/unit/test_bus_contract.py`` and
``tests/integration/test_bus_kafka.py`` run the same tests): :class:`MemoryBus` for
embedded mode and :class:`KafkaBus` (kafka-python) for the real stack.

Delivery is at-least-once: :func:`run_worker` commits a message's offset only after
its handler returned, so a worker that crashes mid-message has the message
redelivered to the next member of its group. Handlers are idempotent (outputs go to
deterministic keys), which makes the effect exactly-once. A message that cannot be
decoded, or whose handler fails ``max_attempts`` times, goes to ``<topic>.dlq`` as a
:class:`~clipaudit.events.v1.events_pb2.DeadLetter` and is committed: it never
blocks the partition and nothing else is lost.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from google.protobuf.message import DecodeError, Message as ProtoMessage

from clipaudit.errors import ClipauditError

log = logging.getLogger(__name__)

DLQ_SUFFIX = ".dlq"

# Topics between services (see ARCHITECTURE.md). Payload types in proto/clipaudit/events/v1.
TOPIC_SHARDS = "shards.v1"
TOPIC_EMBEDDINGS = "embeddings.v1"
TOPIC_LABELS = "labels.v1"
TOPIC_TRAIN_JOBS = "train-jobs.v1"
TOPIC_CHECKPOINTS = "checkpoints.v1"
TOPIC_REPORTS = "reports.v1"


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple = field(default_factory=tuple)


class Publisher(Protocol):
    def publish(self, topic: str, key: str, message: ProtoMessage | bytes) -> None: ...
    def flush(self) -> None: ...


class Consumer(Protocol):
    def poll(self, timeout_s: float = 1.0, max_records: int = 100) -> list[Message]: ...
    def commit(self, message: Message) -> None: ...
    def close(self) -> None: ...


class Bus(Publisher, Protocol):
    def consumer(self, topics: Iterable[str], group: str) -> Consumer: ...
    def close(self) -> None: ...


def partition_for(key: bytes | None, partitions: int) -> int:
    if not key:
        return 0
    return int.from_bytes(hashlib.md5(key).digest()[:4], "big") % partitions


def encode(message: ProtoMessage | bytes) -> bytes:
    return message if isinstance(message, (bytes, bytearray)) else message.SerializeToString()


@dataclass
class WorkerStats:
    handled: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0


def dead_letter(publisher: Publisher, msg: Message, error: str, attempts: int, group: str) -> None:
    from clipaudit.events.v1 import events_pb2

    dl = events_pb2.DeadLetter(
        topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key or b"",
        value=msg.value, error=error[:2000], attempts=attempts, consumer_group=group,
    )
    publisher.publish(msg.topic + DLQ_SUFFIX, (msg.key or b"").decode("utf-8", "replace"), dl)
    publisher.flush()


def handle_one(
    msg: Message,
    decode: Callable[[bytes], ProtoMessage],
    handler: Callable[[ProtoMessage], None],
    publisher: Publisher,
    *,
    group: str,
    max_attempts: int = 3,
    backoff_s: float = 0.05,
    stats: WorkerStats | None = None,
    on_error: Callable[[Message, Exception], None] | None = None,
) -> bool:
    """Decode and handle one message with retries; dead-letter it when hopeless.

    Returns True if the handler succeeded, False if the message was dead-lettered.
    Either way the caller may commit: nothing is left that a retry would fix.
    """
    stats = stats or WorkerStats()
    try:
        event = decode(msg.value)
    except (DecodeError, ValueError, TypeError) as e:
        log.warning("undecodable message on %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, e)
        stats.dead_lettered += 1
        dead_letter(publisher, msg, f"decode error: {e}", 0, group)
        return False
    last: Exception | None = None
    for attempt in range(1, max_attempts + 1):
        try:
            handler(event)
            stats.handled += 1
            return True
        except Exception as e:  # noqa: BLE001 - any failure is retried, then dead-lettered
            last = e
            stats.failed_attempts += 1
            if on_error:
                on_error(msg, e)
            log.warning("handler failed on %s@%d (attempt %d/%d): %s", msg.topic, msg.offset, attempt, max_attempts, e)
            if isinstance(e, ClipauditError) and e.exit_code == 2:  # InvalidInput: retrying cannot help
                break
            time.sleep(backoff_s * attempt)
    stats.dead_lettered += 1
    dead_letter(publisher, msg, f"{type(last).__name__}: {last}", attempt, group)
    return False


def run_worker(
    bus: Bus,
    topics: Iterable[str],
    group: str,
    decode: Callable[[bytes], ProtoMessage],
    handler: Callable[[ProtoMessage], None],
    *,
    stop: threading.Event,
    max_attempts: int = 3,
    poll_timeout_s: float = 0.5,
    stats: WorkerStats | None = None,
    on_error: Callable[[Message, Exception], None] | None = None,
    consumer: Consumer | None = None,
    metrics=None,
) -> WorkerStats:
    """Consume ``topics`` in ``group`` until ``stop`` is set.

    The one consumer loop every service uses: decode with ``decode`` (e.g.
    ``events_pb2.EmbeddingsWritten.FromString``), call ``handler``, commit after it
    returned (or after dead-lettering). ``metrics`` is a :class:`clipaudit.bus.metrics.BusMetrics`.
    """
    stats = stats or WorkerStats()
    if metrics is not None:
        user_on_error = on_error

        def on_error(msg, e):  # noqa: F811 - count, then the caller's hook
            metrics.failed_attempt(msg.topic)
            if user_on_error:
                user_on_error(msg, e)
    consumer = consumer or bus.consumer(topics, group)
    try:
        while not stop.is_set():
            for msg in consumer.poll(timeout_s=poll_timeout_s):
                if stop.is_set():
                    break  # uncommitted: redelivered to the next member
                ok = handle_one(msg, decode, handler, bus, group=group, max_attempts=max_attempts,
                                stats=stats, on_error=on_error)
                consumer.commit(msg)
                if metrics is not None:
                    metrics.handled(msg.topic, ok)
    finally:
        consumer.close()
    return stats


def open_bus(url: str | None = None, *, settings=None, max_handler_s: float = 600.0) -> Bus:
    """``memory://`` (embedded mode) or ``kafka://host:port`` / ``host:port``."""
    if url is None or url.startswith("memory"):
        from clipaudit.bus.memory import MemoryBus

        return MemoryBus()
    from clipaudit.bus.kafka import KafkaBus

    return KafkaBus(url.removeprefix("kafka://"), max_handler_s=max_handler_s)


__all__ = [
    "Bus", "Consumer", "Message", "Publisher", "WorkerStats", "handle_one", "run_worker",
    "open_bus", "dead_letter", "partition_for", "encode", "DLQ_SUFFIX",
    "TOPIC_SHARDS", "TOPIC_EMBEDDINGS", "TOPIC_LABELS", "TOPIC_TRAIN_JOBS", "TOPIC_CHECKPOINTS", "TOPIC_REPORTS",
]
