"""Test sets the evaluator reads, whatever their layout.

A test-set *location* (local dir or ``s3://``) is one of:

* a split of the synthetic collection: ``<split>/<split>-000000.tar`` ... with a
  ``json`` member per sample (``class``, ``class_id``, ``domain``, ``group``...);
* a CLIP_benchmark WebDataset root (``wds/``): ``test/0.tar``... with ``cls`` labels,
  ``classnames.txt`` and ``zeroshot_classification_templates.txt`` beside them;
* an embedding set (``img_emb/`` + ``metadata/``, clipaudit/embeddings.py) computed with
  the checkpoint under evaluation, so several evaluations need no re-decoding.

Class names come from (first found) the request, ``classnames.txt``, or the labels
themselves (``class`` by ``class_id``). Templates from the request,
``zeroshot_classification_templates.txt``, or the 80 OpenAI ImageNet templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd

from clipaudit.errors import ClipauditError, InvalidInput, NotFound
from clipaudit.store import Store, open_store

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


@dataclass
class TestSetSource:
    """Where a test set's samples are; nothing decoded yet."""

    location: str
    store: Store
    kind: str                         # "shards" | "embeddings"
    shard_keys: list[str] = field(default_factory=list)
    classnames: list[str] | None = None
    templates_text: str | None = None

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1] or self.location


def _read_text(store: Store, key: str) -> str | None:
    return store.get_bytes(key).decode("utf-8") if store.exists(key) else None


def open_test_set(location: str, *, settings=None) -> TestSetSource:
    """Find the samples at ``location`` (see the module docstring); NotFound if none."""
    try:
        store = open_store(location, settings=settings, create=False)
    except (FileNotFoundError, NotFound) as e:
        raise NotFound(f"test set {location} does not exist") from e
    keys = list(store.list(""))
    if not keys:
        raise NotFound(f"test set {location} is empty or does not exist")
    classnames_text = _read_text(store, CLASSNAMES_FILE)
    templates_text = _read_text(store, TEMPLATES_FILE)
    classnames = [ln.strip() for ln in classnames_text.splitlines() if ln.strip()] if classnames_text else None
    if classnames is None:
        classnames = _collection_classes(location, settings)
    if any(k.startswith("img_emb/") for k in keys):
        return TestSetSource(location, store, "embeddings", classnames=classnames, templates_text=templates_text)
    tars = sorted(k for k in keys if k.endswith(".tar") and "/" not in k)
    if not tars:  # CLIP_benchmark layout: <root>/test/*.tar
        tars = sorted((k for k in keys if k.startswith("test/") and k.endswith(".tar")),
                      key=lambda k: int(k[5:-4]) if k[5:-4].isdigit() else 1 << 30)
    if not tars:
        raise NotFound(f"test set {location} has no .tar shards (nor test/*.tar) and no embedding set")
    return TestSetSource(location, store, "shards", shard_keys=tars, classnames=classnames,
                         templates_text=templates_text)


def _collection_classes(location: str, settings) -> list[str] | None:
    """The class list of the synthetic collection a split belongs to (``../collection.json``),
    so a split that lacks some classes still gets the collection's full label set."""
    import json

    parent = location.rstrip("/").rpartition("/")[0]
    if not parent:
        return None
    try:
        store = open_store(parent, settings=settings, create=False)
        if not store.exists("collection.json"):
            return None
        classes = json.loads(store.get_bytes("collection.json")).get("classes")
    except (ClipauditError, ValueError, OSError):
        return None
    return [str(c) for c in classes] if isinstance(classes, list) and classes else None


def sample_metadata(sample: dict[str, Any]) -> dict[str, Any]:
    """Flat label row of one WebDataset sample: key, label columns from ``json``, ``cls``."""
    row: dict[str, Any] = {"key": sample["__key__"]}
    meta = sample.get("json")
    if isinstance(meta, dict):
        for k, v in meta.items():
            if isinstance(v, (str, int, float, bool)) or v is None:
                row[k] = v
    if "cls" in sample and "class_id" not in row:
        row["class_id"] = int(sample["cls"])
    row.setdefault("key", sample["__key__"])
    return row


def image_bytes(sample: dict[str, Any]) -> bytes | None:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    return None


def iter_shard_samples(source: TestSetSource, handler) -> Iterator[dict[str, Any]]:
    from clipaudit.shards import iter_samples

    local = getattr(source.store, "local_path", None)
    for key in source.shard_keys:
        src = local(key) if local is not None else source.store.get_bytes(key)
        yield from iter_samples(src, handler=handler)


def resolve_labels(metadata: pd.DataFrame, classnames: list[str] | None, *, where: str) -> tuple[list[str], np.ndarray]:
    """(class names, label index per row). Every row's class must be one of the class
    names: a label that is not is refused with the names that are missing."""
    if classnames is None:
        if "class" in metadata.columns and "class_id" in metadata.columns:
            pairs = metadata[["class_id", "class"]].drop_duplicates().sort_values("class_id")
            if pairs["class_id"].duplicated().any() or pairs["class"].duplicated().any():
                raise InvalidInput(f"{where}: class ids and class names do not map one to one")
            classnames = pairs["class"].astype(str).tolist()
        elif "class" in metadata.columns:
            classnames = sorted(metadata["class"].astype(str).unique())
        else:
            raise InvalidInput(f"{where}: no class names (no classnames.txt, none in the request, no 'class' labels)")
    if len(set(classnames)) != len(classnames):
        raise InvalidInput(f"{where}: class names repeat")
    index = {c: i for i, c in enumerate(classnames)}
    if "class" in metadata.columns:
        names = metadata["class"].astype(str)
        missing = sorted(set(names) - set(index))
        if missing:
            raise InvalidInput(f"{where}: {len(missing)} label(s) missing from the class names: "
                               f"{', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}")
        labels = names.map(index).to_numpy(dtype=np.int64)
    elif "class_id" in metadata.columns:
        labels = metadata["class_id"].to_numpy(dtype=np.int64)
        bad = (labels < 0) | (labels >= len(classnames))
        if bad.any():
            raise InvalidInput(f"{where}: class id(s) {sorted(set(labels[bad].tolist()))[:5]} outside the "
                               f"{len(classnames)} class names")
    else:
        raise InvalidInput(f"{where}: samples carry no label ('class', 'class_id' or 'cls')")
    return list(classnames), labels
