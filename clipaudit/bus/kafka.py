"""Kafka bus over kafka-python, against a real broker."""

from __future__ import annotations

from typing import Iterable

from clipaudit.bus import Message, encode
from clipaudit.errors import Unavailable


def _unavailable(bootstrap: str, e: Exception) -> Unavailable:
    return Unavailable(f"Kafka broker at {bootstrap} unreachable ({type(e).__name__}); is `clipaudit stack up` running?")


class KafkaBus:
    def __init__(self, bootstrap: str, *, client_id: str = "clipaudit", request_timeout_ms: int = 15000,
                 max_handler_s: float = 600.0):
        """``max_handler_s``: the longest a handler may run between two polls before Kafka
        considers the consumer dead and rebalances (a training job needs hours)."""
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.bootstrap = bootstrap
        self.client_id = client_id
        self.max_poll_interval_ms = int(max_handler_s * 1000)
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap, client_id=client_id, acks="all", linger_ms=2,
                request_timeout_ms=request_timeout_ms, max_block_ms=request_timeout_ms,
            )
        except KafkaError as e:
            raise _unavailable(bootstrap, e) from e

    def publish(self, topic: str, key: str, message) -> None:
        from kafka.errors import KafkaError

        kb = key.encode() if isinstance(key, str) else key
        try:
            self._producer.send(topic, key=kb, value=encode(message))
        except KafkaError as e:
            raise _unavailable(self.bootstrap, e) from e

    def flush(self) -> None:
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=30)
        except KafkaError as e:
            raise _unavailable(self.bootstrap, e) from e

    def consumer(self, topics: Iterable[str], group: str) -> "KafkaConsumerAdapter":
        return KafkaConsumerAdapter(self.bootstrap, list(topics), group, self.client_id, self.max_poll_interval_ms)

    def ensure_topics(self, topics: Iterable[str], partitions: int = 4) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id)
        try:
            existing = set(admin.list_topics())
            new = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
            if new:
                try:
                    admin.create_topics(new)
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()

    def close(self) -> None:
        self._producer.close(timeout=5)


class KafkaConsumerAdapter:
    def __init__(self, bootstrap: str, topics: list[str], group: str, client_id: str,
                 max_poll_interval_ms: int = 600000):
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self.group = group
        try:
            self._c = KafkaConsumer(
                *topics, bootstrap_servers=bootstrap, group_id=group, client_id=client_id,
                enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=10000, heartbeat_interval_ms=1000, max_poll_interval_ms=max_poll_interval_ms,
            )
        except KafkaError as e:
            raise _unavailable(bootstrap, e) from e

    def poll(self, timeout_s: float = 1.0, max_records: int = 100) -> list[Message]:
        batches = self._c.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out = []
        for records in batches.values():
            for r in records:
                out.append(Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ())))
        return out

    def commit(self, message: Message) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        self._c.commit({TopicPartition(message.topic, message.partition): OffsetAndMetadata(message.offset + 1, "", -1)})

    def close(self) -> None:
        self._c.close(autocommit=False)
