"""Checkpoints in a store (a local directory or ``s3://``), written atomically.

Layout under the run's output location::

    checkpoints/step-00000100.pt   torch.save dict (tensors and primitives only:
    checkpoints/step-00000200.pt   loadable with torch.load(weights_only=True))
    latest.json                    {"checkpoint": "checkpoints/step-00000200.pt", "step": 200, "final": false, ...}

A checkpoint is serialised to a local temp file first, then stored with one
atomic put (temp file + ``os.replace`` locally, a single PUT on S3), and only
then does ``latest.json`` move to it. A failed write (disk or bucket full, S3
down) raises and leaves ``latest.json`` and the previous checkpoint untouched;
older checkpoints beyond ``keep`` are deleted only after a successful write.

The dict holds ``{"model": state_dict, ...}``, so ``clipaudit.models.load_clip(
"clipaudit-tiny@<checkpoint>")`` loads the weights directly.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clipaudit.errors import ClipauditError, FailedPrecondition, InvalidInput, NotFound, ResourceExhausted

LATEST = "latest.json"
PREFIX = "checkpoints/"


@dataclass
class SavedCheckpoint:
    key: str
    uri: str
    step: int
    final: bool
    sha256: str
    size_bytes: int


class CheckpointStore:
    def __init__(self, store, keep: int = 2):
        self.store = store
        self.keep = max(1, keep)

    def latest(self) -> dict | None:
        """The contents of ``latest.json``, or None when the run has no checkpoint yet."""
        if not self.store.exists(LATEST):
            return None
        try:
            return json.loads(self.store.get_bytes(LATEST))
        except ValueError as e:
            raise InvalidInput(f"{self.store.uri(LATEST)} does not parse: {e}") from e

    def save(self, state: dict, *, step: int, final: bool) -> SavedCheckpoint:
        import torch

        key = f"{PREFIX}step-{step:08d}.pt"
        fd, tmp = tempfile.mkstemp(prefix="clipaudit-ckpt-", suffix=".pt")
        os.close(fd)
        try:
            try:
                torch.save(state, tmp)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise ResourceExhausted(f"disk full while serialising checkpoint step {step} to {tmp}") from e
                raise
            digest, size = _sha256_size(tmp)
            try:
                self.store.put_file(key, tmp)
            except ClipauditError:
                raise
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise ResourceExhausted(f"disk full while writing {self.store.uri(key)}") from e
                raise
        finally:
            Path(tmp).unlink(missing_ok=True)
        pointer = {"checkpoint": key, "step": step, "final": final, "sha256": digest, "size_bytes": size}
        self.store.put_bytes(LATEST, json.dumps(pointer, indent=1).encode())
        self._prune(keep_key=key)
        return SavedCheckpoint(key, self.store.uri(key), step, final, digest, size)

    def _prune(self, keep_key: str) -> None:
        keys = sorted(k for k in self.store.list(PREFIX) if k.endswith(".pt"))
        for k in keys[: max(0, len(keys) - self.keep)]:
            if k != keep_key:
                self.store.delete(k)

    def load(self, key: str) -> dict:
        import torch

        local = getattr(self.store, "local_path", None)
        if local is not None:
            path = local(key)
            if not path.is_file():
                raise NotFound(f"checkpoint {self.store.uri(key)} does not exist")
            return _load(path, self.store.uri(key))
        with tempfile.TemporaryDirectory(prefix="clipaudit-ckpt-") as d:
            path = self.store.get_file(key, Path(d) / "ckpt.pt")
            return _load(path, self.store.uri(key))

    def load_latest(self) -> dict | None:
        pointer = self.latest()
        if pointer is None:
            return None
        return self.load(pointer["checkpoint"])

    def uri(self, key: str) -> str:
        return self.store.uri(key)


def _load(path: Path, uri: str) -> dict:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one clear line for any unreadable file
        raise FailedPrecondition(f"checkpoint {uri} could not be read: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''}") from e
    if not isinstance(obj, dict) or "model" not in obj:
        raise FailedPrecondition(f"checkpoint {uri} is not a clipaudit training checkpoint")
    return obj


def _sha256_size(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
