"""In-process bus with Kafka's semantics that matter to us: partitions by key,
consumer groups that split partitions, committed offsets per group, redelivery of
everything after the last commit when a member leaves without committing."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Iterable

from clipaudit.bus import Message, encode, partition_for


class MemoryBus:
    def __init__(self, partitions: int = 4):
        self.partitions = partitions
        self._logs: dict[str, list[list[Message]]] = {}
        self._committed: dict[tuple[str, str, int], int] = defaultdict(int)  # (group, topic, p) -> next offset
        self._members: dict[str, list["MemoryConsumer"]] = defaultdict(list)
        self._cond = threading.Condition()

    def _log(self, topic: str) -> list[list[Message]]:
        if topic not in self._logs:
            self._logs[topic] = [[] for _ in range(self.partitions)]
        return self._logs[topic]

    def publish(self, topic: str, key: str, message) -> None:
        kb = key.encode() if isinstance(key, str) else key
        with self._cond:
            log = self._log(topic)
            p = partition_for(kb, self.partitions)
            log[p].append(Message(topic, p, len(log[p]), kb, encode(message)))
            self._cond.notify_all()

    def flush(self) -> None:
        pass

    def messages(self, topic: str) -> list[Message]:
        """Everything ever published to ``topic`` (for tests and the embedded runner)."""
        with self._cond:
            return [m for part in self._log(topic) for m in part]

    def consumer(self, topics: Iterable[str], group: str) -> "MemoryConsumer":
        c = MemoryConsumer(self, list(topics), group)
        with self._cond:
            self._members[group].append(c)
        return c

    def _assigned(self, c: "MemoryConsumer", topic: str) -> list[int]:
        members = self._members[c.group]
        i = members.index(c)
        return [p for p in range(self.partitions) if p % len(members) == i]

    def _leave(self, c: "MemoryConsumer") -> None:
        with self._cond:
            if c in self._members[c.group]:
                self._members[c.group].remove(c)

    def close(self) -> None:
        pass


class MemoryConsumer:
    def __init__(self, bus: MemoryBus, topics: list[str], group: str):
        self.bus, self.topics, self.group = bus, topics, group
        self._position: dict[tuple[str, int], int] = {}
        self._generation: dict[tuple[str, int], int] = {}

    def poll(self, timeout_s: float = 1.0, max_records: int = 100) -> list[Message]:
        bus = self.bus
        with bus._cond:
            out = self._take(max_records)
            if not out and timeout_s > 0:
                bus._cond.wait(timeout_s)
                out = self._take(max_records)
            return out

    def _take(self, max_records: int) -> list[Message]:
        out: list[Message] = []
        for t in self.topics:
            log = self.bus._log(t)
            for p in self.bus._assigned(self, t):
                committed = self.bus._committed[(self.group, t, p)]
                pos = max(self._position.get((t, p), committed), committed)
                while pos < len(log[p]) and len(out) < max_records:
                    out.append(log[p][pos])
                    pos += 1
                self._position[(t, p)] = pos
        return out

    def commit(self, message: Message) -> None:
        with self.bus._cond:
            k = (self.group, message.topic, message.partition)
            self.bus._committed[k] = max(self.bus._committed[k], message.offset + 1)

    def close(self) -> None:
        self.bus._leave(self)
