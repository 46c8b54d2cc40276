"""A process-wide least-recently-used cache bounded by bytes.

In embedded mode one process trains and evaluates dozens of models on the same images
(a study's subsets overlap, every model is evaluated on the same test sets): decoding
each image once per process instead of once per run is most of the data cost. Services
keep one instance each, sized by an environment variable, and put only values whose
size they know (numpy arrays, torch tensors, or any object with ``nbytes``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable


def nbytes(value: Any) -> int:
    """Size of a cached value: ``nbytes`` (numpy), ``numel * element_size`` (torch),
    or the sum over a tuple/list of such values."""
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if hasattr(value, "element_size"):
        return int(value.numel() * value.element_size())
    return 0


class ByteBoundedLRU:
    """``get``/``put`` with least-recently-used eviction once ``max_bytes`` is exceeded.
    ``max_bytes <= 0`` disables the cache; a value larger than the bound is not kept."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._d: "OrderedDict[Hashable, tuple[Any, int]]" = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: Hashable):
        with self._lock:
            item = self._d.get(key)
            if item is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any, size: int | None = None) -> bool:
        """Keep ``value``; returns whether it was kept."""
        size = nbytes(value) if size is None else int(size)
        if self.max_bytes <= 0 or size > self.max_bytes:
            return False
        with self._lock:
            if key in self._d:
                return True
            self._d[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, old) = self._d.popitem(last=False)
                self.bytes -= old
        return True

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.bytes = 0
