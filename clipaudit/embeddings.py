"""Embedding sets in clip-retrieval's layout.

::

    <set>/embedding_set.json          model id, dim, dtype (our sidecar; optional on read)
    <set>/img_emb/img_emb_<part>.npy   float16/float32 rows, L2-normalised
    <set>/metadata/metadata_<part>.parquet   one row per vector: key, shard, labels...
    <set>/text_emb/text_emb_<part>.npy (optional) caption embeddings, same rows

Parts are named by any string id (``0``, ``train-000003``...); readers list
``img_emb/`` and sort, so clip-retrieval's ``img_emb_0.npy`` sets read as they are,
and ours read in clip-retrieval's tools. Each part is written atomically, and
``embedding_set.json`` has the same content for every part of a set, so several
workers can write parts of one set concurrently.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from clipaudit.errors import FailedPrecondition, InvalidInput, NotFound
from clipaudit.store import Store, open_store

INFO = "embedding_set.json"
_PART = re.compile(r"^img_emb/img_emb_(.+)\.npy$")


def check_vectors(x: np.ndarray, *, dim: int | None = None, normalise: bool = False, what: str = "vectors",
                  atol: float = 1e-2) -> np.ndarray:
    """Validate a 2-D float matrix: finite, right width, L2-normalised.

    Unnormalised rows are normalised when ``normalise`` is true and refused otherwise;
    zero rows are always refused (no direction to compare).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise InvalidInput(f"{what}: expected a 2-D array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InvalidInput(f"{what}: dimension {x.shape[1]} does not match {dim}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InvalidInput(f"{what}: expected floats, got {x.dtype}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise InvalidInput(f"{what}: {int(bad.sum())} row(s) contain NaN or inf (first at row {int(np.argmax(bad))})")
    norms = np.linalg.norm(x.astype(np.float32), axis=1)
    if (norms == 0).any():
        raise InvalidInput(f"{what}: {int((norms == 0).sum())} zero vector(s)")
    if not np.allclose(norms, 1.0, atol=atol):
        if not normalise:
            raise InvalidInput(f"{what}: rows are not L2-normalised (norms {norms.min():.3f}..{norms.max():.3f})")
        x = (x.astype(np.float32) / norms[:, None]).astype(x.dtype)
    return x


def _npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass(frozen=True)
class EmbeddingSetInfo:
    model_id: str
    dim: int
    dtype: str = "float16"
    format_version: int = 1


class EmbeddingSetWriter:
    def __init__(self, location: str | Path | Store, *, model_id: str, dim: int, dtype: str = "float16"):
        self.store = location if not isinstance(location, (str, Path)) else open_store(location)
        if dtype not in ("float16", "float32"):
            raise InvalidInput(f"embedding dtype must be float16 or float32, got {dtype!r}")
        self.info = EmbeddingSetInfo(model_id=model_id, dim=dim, dtype=dtype)
        if self.store.exists(INFO):
            old = json.loads(self.store.get_bytes(INFO))
            if old.get("model_id") != model_id or old.get("dim") != dim:
                raise FailedPrecondition(
                    f"{self.store.uri()} holds embeddings of model {old.get('model_id')!r} (dim {old.get('dim')}); "
                    f"refusing to add {model_id!r} (dim {dim})"
                )
        self.store.put_bytes(INFO, json.dumps(self.info.__dict__, sort_keys=True).encode())

    def part_keys(self, part: str) -> dict[str, str]:
        return {
            "img": f"img_emb/img_emb_{part}.npy",
            "meta": f"metadata/metadata_{part}.parquet",
            "text": f"text_emb/text_emb_{part}.npy",
        }

    def has_part(self, part: str) -> bool:
        k = self.part_keys(part)
        return self.store.exists(k["img"]) and self.store.exists(k["meta"])

    def write_part(self, part: str, vectors: np.ndarray, metadata: pd.DataFrame,
                   text_vectors: np.ndarray | None = None) -> dict[str, str]:
        vectors = check_vectors(vectors, dim=self.info.dim, normalise=True) if len(vectors) else vectors.reshape(0, self.info.dim)
        if "key" not in metadata.columns:
            raise InvalidInput("embedding metadata needs a 'key' column")
        if len(metadata) != len(vectors):
            raise InvalidInput(f"{len(vectors)} vectors but {len(metadata)} metadata rows")
        k = self.part_keys(part)
        if text_vectors is not None:
            self.store.put_bytes(k["text"], _npy_bytes(np.asarray(text_vectors, dtype=self.info.dtype)))
        buf = io.BytesIO()
        metadata.reset_index(drop=True).to_parquet(buf, index=False)
        self.store.put_bytes(k["meta"], buf.getvalue())
        # the vectors last: a part counts as written once its .npy exists
        self.store.put_bytes(k["img"], _npy_bytes(np.asarray(vectors, dtype=self.info.dtype)))
        return k


class EmbeddingSet:
    """Read side. Streams part by part, so a set larger than memory can be scanned."""

    def __init__(self, store: Store):
        self.store = store
        parts = [m.group(1) for key in store.list("img_emb/") if (m := _PART.match(key))]
        if not parts:
            raise NotFound(f"no embedding set at {store.uri()} (no img_emb/img_emb_*.npy)")
        self.parts = sorted(parts, key=_natural_key)
        if store.exists(INFO):
            self.info = EmbeddingSetInfo(**json.loads(store.get_bytes(INFO)))
        else:  # a set written by clip-retrieval: infer what we can
            first = self.load_vectors(self.parts[0])
            self.info = EmbeddingSetInfo(model_id="unknown", dim=int(first.shape[1]), dtype=str(first.dtype))

    @classmethod
    def open(cls, location: str | Path | Store) -> "EmbeddingSet":
        return cls(location if not isinstance(location, (str, Path)) else open_store(location, create=False))

    @property
    def model_id(self) -> str:
        return self.info.model_id

    @property
    def dim(self) -> int:
        return self.info.dim

    def uri(self) -> str:
        return self.store.uri()

    def load_vectors(self, part: str) -> np.ndarray:
        key = f"img_emb/img_emb_{part}.npy"
        local = getattr(self.store, "local_path", None)
        if local is not None:
            return np.load(local(key), mmap_mode="r", allow_pickle=False)
        return _npy_load(self.store.get_bytes(key))

    def load_text_vectors(self, part: str) -> np.ndarray:
        return _npy_load(self.store.get_bytes(f"text_emb/text_emb_{part}.npy"))

    def has_text(self) -> bool:
        return self.store.exists(f"text_emb/text_emb_{self.parts[0]}.npy")

    def load_metadata(self, part: str, columns: list[str] | None = None) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.store.get_bytes(f"metadata/metadata_{part}.parquet")), columns=columns)

    def iter_parts(self, columns: list[str] | None = None) -> Iterator[tuple[str, np.ndarray, pd.DataFrame]]:
        for p in self.parts:
            yield p, self.load_vectors(p), self.load_metadata(p, columns)

    def iter_blocks(self, block_rows: int, dtype=np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(vectors, keys) blocks of at most ``block_rows`` rows, streamed part by part."""
        for p in self.parts:
            v = self.load_vectors(p)
            keys = self.load_metadata(p, ["key"])["key"].to_numpy()
            for s in range(0, len(v), block_rows):
                yield np.asarray(v[s:s + block_rows], dtype=dtype), keys[s:s + block_rows]

    def load(self, dtype=np.float32) -> tuple[np.ndarray, pd.DataFrame]:
        """Everything in memory: for test sets and small pools only."""
        vs, ms = [], []
        for _, v, m in self.iter_parts():
            vs.append(np.asarray(v, dtype=dtype))
            ms.append(m)
        return np.concatenate(vs) if vs else np.zeros((0, self.dim), dtype), pd.concat(ms, ignore_index=True)

    def metadata(self, columns: list[str] | None = None) -> pd.DataFrame:
        return pd.concat([self.load_metadata(p, columns) for p in self.parts], ignore_index=True)

    def __len__(self) -> int:
        """Rows in the set, without reading the vectors: a local part is memory-mapped
        (only its header is read); a remote part's row count follows from its object
        size and the .npy header numpy writes for that shape (one HEAD request)."""
        return sum(self._part_rows(p) for p in self.parts)

    def _part_rows(self, part: str) -> int:
        key = f"img_emb/img_emb_{part}.npy"
        if getattr(self.store, "local_path", None) is not None:
            return len(self.load_vectors(part))
        dtype = np.dtype(self.info.dtype)
        row_bytes = self.info.dim * dtype.itemsize
        size = self.store.size(key)
        for header in range(64, min(size, 4096) + 1, 64):    # .npy headers are padded to 64 bytes
            rows, rest = divmod(size - header, row_bytes)
            if not rest and _npy_header_bytes((rows, self.info.dim), dtype) == header:
                return rows
        return len(self.load_vectors(part))                    # not written by np.save: read it


def _npy_header_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Length of the header np.save writes for a C-ordered array of this shape and dtype."""
    fake = np.broadcast_to(np.zeros((), dtype), shape)     # no memory: zero strides
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(fake))
    return buf.tell()


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def require_same_model(a: EmbeddingSet, b: EmbeddingSet) -> None:
    """Refuse to compare embeddings of two different models."""
    if a.model_id != b.model_id and "unknown" not in (a.model_id, b.model_id):
        raise FailedPrecondition(f"embedding sets come from different models: {a.model_id!r} vs {b.model_id!r}")
    if a.dim != b.dim:
        raise InvalidInput(f"embedding dimensions differ: {a.dim} vs {b.dim}")
