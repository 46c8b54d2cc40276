"""Subset manifests: the unit of curation.

A manifest is ``<name>.parquet`` (one column ``key``, sorted and unique) beside
``<name>.json``, its lineage: the rule that made it, its parameters, the parent
manifest or embedding set, the clipaudit version and the sha256 of the sorted keys
(joined with newlines), so two manifests with the same keys have the same hash
whatever made them.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from clipaudit import __version__
from clipaudit.errors import InvalidInput, NotFound
from clipaudit.store import Store, open_store


def keys_sha256(sorted_keys: Iterable[str]) -> str:
    h = hashlib.sha256()
    for i, k in enumerate(sorted_keys):
        h.update((("\n" if i else "") + k).encode())
    return h.hexdigest()


class Lineage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    parent: str | None = None          # manifest or embedding-set URI this was derived from
    sources: list[str] = Field(default_factory=list)  # other inputs (test sets, reference...)
    clipaudit_version: str = __version__
    count: int
    keys_sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    keys: list[str]
    lineage: Lineage
    uri: str | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def key_set(self) -> set[str]:
        return set(self.keys)


def _split(location: str | Path | Store, name: str | None) -> tuple[Store, str]:
    if not isinstance(location, (str, Path)):
        if not name:
            raise InvalidInput("a manifest name is needed with a store")
        return location, name
    loc = str(location)
    for ext in (".parquet", ".json"):
        if loc.endswith(ext):
            loc = loc[: -len(ext)]
    parent, _, base = loc.rstrip("/").rpartition("/")
    return open_store(parent or "."), base


def write_manifest(location: str | Path | Store, keys: Iterable[str], *, rule: str,
                   parameters: dict[str, Any] | None = None, parent: str | None = None,
                   sources: Iterable[str] = (), name: str | None = None) -> Manifest:
    """Write ``<location>.parquet`` + ``<location>.json`` (or ``name`` inside a store)."""
    store, base = _split(location, name)
    ks = sorted(set(map(str, keys)))
    lineage = Lineage(rule=rule, parameters=dict(parameters or {}), parent=parent, sources=list(sources),
                      count=len(ks), keys_sha256=keys_sha256(ks))
    buf = io.BytesIO()
    pd.DataFrame({"key": pd.Series(ks, dtype="string")}).to_parquet(buf, index=False)
    store.put_bytes(base + ".parquet", buf.getvalue())
    store.put_bytes(base + ".json", lineage.model_dump_json(indent=2).encode())
    return Manifest(keys=ks, lineage=lineage, uri=store.uri(base + ".parquet"))


def read_manifest(location: str | Path | Store, name: str | None = None, *, verify: bool = True) -> Manifest:
    store, base = _split(location, name)
    try:
        lineage = Lineage.model_validate_json(store.get_bytes(base + ".json"))
        keys = pd.read_parquet(io.BytesIO(store.get_bytes(base + ".parquet")))["key"].astype(str).tolist()
    except NotFound as e:
        raise NotFound(f"no manifest at {store.uri(base)} ({e})") from e
    if verify and keys_sha256(keys) != lineage.keys_sha256:
        raise InvalidInput(f"manifest {store.uri(base)}: keys do not match the sha256 recorded in its lineage")
    return Manifest(keys=keys, lineage=lineage, uri=store.uri(base + ".parquet"))


def diff_manifests(a: Manifest, b: Manifest) -> dict[str, Any]:
    sa, sb = a.key_set(), b.key_set()
    only_a, only_b = sorted(sa - sb), sorted(sb - sa)
    return {
        "a": {"uri": a.uri, "count": len(sa), "rule": a.lineage.rule},
        "b": {"uri": b.uri, "count": len(sb), "rule": b.lineage.rule},
        "common": len(sa & sb),
        "only_a": len(only_a),
        "only_b": len(only_b),
        "jaccard": (len(sa & sb) / len(sa | sb)) if (sa | sb) else 1.0,
        "examples_only_a": only_a[:5],
        "examples_only_b": only_b[:5],
    }
