"""``collection.json``: the description of a generated synthetic collection.

Other code reads a collection through :class:`Collection`::

    coll = Collection.load("out/synth")          # or a Store, or s3://bucket/prefix
    coll.classes, coll.common_background["star"], coll.held_out_classes
    coll.shard_keys("test_sketch")                # ["test_sketch/test_sketch-000000.tar"]
    for s in coll.iter_samples("test_sketch"):    # {"__key__", "jpg", "txt", "json"}
        ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from clipaudit.errors import InvalidInput, NotFound
from clipaudit.shards import Handler, ShardInfo, iter_store_samples, reraise

COLLECTION_FILE = "collection.json"
FORMAT = "clipaudit.synth.collection"
FORMAT_VERSION = 1


class SplitInfo(BaseModel):
    """One split: where its shards are and what is in it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["train", "reference", "test"]
    nominal_domain: str | None  # what a test set claims to be ("sketch"); None for the mixed train pool
    count: int
    domains: dict[str, int]  # true domain -> images
    domain_groups: dict[str, int]  # natural / rendition -> images
    groups: dict[str, int]  # common / counter / none -> images
    backgrounds: dict[str, int]  # background (or "none") -> images
    classes: dict[str, int]
    near_duplicates: int  # train: images planted as near-duplicates of test images
    contaminated: int  # test/reference: images whose domain group differs from the nominal domain's
    shards: list[ShardInfo]

    @property
    def shard_keys(self) -> list[str]:
        return [s.key for s in self.shards]


class Collection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["clipaudit.synth.collection"] = FORMAT
    format_version: int = FORMAT_VERSION
    generator_version: str
    name: str
    preset: str
    preset_config: dict[str, Any]
    seed: int
    image_size: int
    image_format: str = "jpg"
    classes: list[str]
    domains: list[str]
    domain_groups: dict[str, str]  # domain -> natural | rendition
    rendition_styles: list[str]
    backgrounds: list[str]
    common_background: dict[str, str]  # class -> its common background
    held_out_classes: list[str]  # a suggestion for compositional-generalisation tests
    sample_fields: list[str]  # keys of every sample's json
    splits: dict[str, SplitInfo]

    _store: Any = PrivateAttr(default=None)

    # ----------------------------------------------------------------- reading
    @classmethod
    def load(cls, store_or_location) -> "Collection":
        """Read ``collection.json`` from a store or a location (dir or s3://...)."""
        from clipaudit.store import open_store

        if isinstance(store_or_location, (str, Path)):
            if not str(store_or_location).startswith("s3://") and not Path(store_or_location).is_dir():
                raise NotFound(f"no synthetic collection at {store_or_location}: not a directory")
            store = open_store(store_or_location, create=False)
        else:
            store = store_or_location
        if not store.exists(COLLECTION_FILE):
            raise NotFound(f"no {COLLECTION_FILE} in {store.uri()}: generate one with `clipaudit synth`")
        try:
            coll = cls.model_validate(json.loads(store.get_bytes(COLLECTION_FILE)))
        except (ValueError, ValidationError) as e:
            raise InvalidInput(f"{store.uri(COLLECTION_FILE)} is not a valid collection description: {e}") from e
        coll._store = store
        return coll

    def dump_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=False) + "\n").encode()

    @property
    def store(self):
        if self._store is None:
            raise InvalidInput("this Collection was not loaded from a store")
        return self._store

    @property
    def test_splits(self) -> list[str]:
        return [n for n, s in self.splits.items() if s.kind == "test"]

    def split(self, name: str) -> SplitInfo:
        try:
            return self.splits[name]
        except KeyError:
            raise NotFound(f"collection {self.name} has no split {name!r}; splits: {', '.join(self.splits)}") from None

    def shard_keys(self, split: str) -> list[str]:
        return self.split(split).shard_keys

    def shard_uris(self, split: str) -> list[str]:
        return [self.store.uri(k) for k in self.shard_keys(split)]

    def iter_samples(self, split: str, handler: Handler = reraise) -> Iterator[dict[str, Any]]:
        """Samples of one split in order: ``{"__key__", "__shard__", "jpg", "txt", "json"}``."""
        return iter_store_samples(self.store, self.shard_keys(split), handler=handler)
