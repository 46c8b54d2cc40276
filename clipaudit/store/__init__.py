"""The object-store port: bytes by key.

Two implementations share one contract (``tests/unit/test_store_contract.py`` runs
the same tests against both): :class:`LocalStore` for embedded mode and
:class:`S3Store` (minio SDK) for the real stack. A *location* is either a local
path or ``s3://bucket/prefix``; :func:`open_store` turns one into a store rooted
there, and every key below is relative to that root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

from clipaudit.store.local import LocalStore


@runtime_checkable
class Store(Protocol):
    """Keys are '/'-separated relative paths. Writes are atomic: a reader sees the
    whole old object or the whole new one, never a partial write."""

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_file(self, key: str, path: str | Path) -> None: ...
    def get_file(self, key: str, path: str | Path) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str = "") -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...
    def uri(self, key: str = "") -> str: ...
    def child(self, prefix: str) -> "Store": ...


def is_s3_uri(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    from clipaudit.errors import InvalidInput

    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise InvalidInput(f"malformed S3 URI {uri!r}: expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


def open_store(location: str | Path, *, settings=None, create: bool = True) -> Store:
    """A store rooted at a local directory or at ``s3://bucket/prefix``.

    S3 credentials and endpoint come from :class:`clipaudit.config.StackSettings`
    (environment ``CLIPAUDIT_MINIO_PORT``, ``CLIPAUDIT_S3_ACCESS_KEY``...).
    """
    if is_s3_uri(location):
        from clipaudit.store.s3 import S3Store

        bucket, prefix = split_s3_uri(str(location))
        return S3Store.from_settings(bucket, prefix, settings=settings)
    return LocalStore(Path(location), create=create)


__all__ = ["Store", "LocalStore", "open_store", "is_s3_uri", "split_s3_uri"]
