"""Local-filesystem store for embedded mode and tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from clipaudit.errors import InvalidInput, NotFound, ResourceExhausted


class LocalStore:
    def __init__(self, root: Path, *, create: bool = True):
        self.root = Path(root).resolve()
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InvalidInput(f"cannot create output directory {self.root}: {e.strerror}") from e
        elif not self.root.is_dir():
            raise NotFound(f"directory {self.root} does not exist")

    def _path(self, key: str) -> Path:
        key = key.strip("/")
        p = (self.root / key).resolve()
        if p != self.root and self.root not in p.parents:
            raise InvalidInput(f"key {key!r} escapes the store root")
        return p

    def _atomic_write(self, key: str, write) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-" + dest.name)
        except PermissionError as e:
            raise InvalidInput(f"output location {dest.parent} is not writable") from e
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            if e.errno == 28:  # ENOSPC
                raise ResourceExhausted(f"disk full while writing {dest}") from e
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def put_file(self, key: str, path: str | Path) -> None:
        def copy(f):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)

        self._atomic_write(key, copy)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as e:
            raise NotFound(f"{self.uri(key)} does not exist") from e

    def get_file(self, key: str, path: str | Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"{self.uri(key)} does not exist")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
        return path

    def local_path(self, key: str) -> Path:
        """Direct path of an object (local store only; lets readers mmap)."""
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as e:
            raise NotFound(f"{self.uri(key)} does not exist") from e

    def list(self, prefix: str = "") -> Iterator[str]:
        prefix = prefix.lstrip("/")
        base = self._path(prefix.rsplit("/", 1)[0] if "/" in prefix else "")
        if not base.is_dir():
            return
        keys = []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                k = p.relative_to(self.root).as_posix()
                if k.startswith(prefix):
                    keys.append(k)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str = "") -> str:
        return str(self._path(key)) if key else str(self.root)

    def child(self, prefix: str) -> "LocalStore":
        return LocalStore(self._path(prefix))

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"
