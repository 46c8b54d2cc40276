"""``len(EmbeddingSet)`` counts rows without downloading the vectors (the indexer sizes
indexes and samples from it): on a remote store only object sizes are asked for."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipaudit.embeddings import EmbeddingSet, EmbeddingSetWriter
from clipaudit.store import open_store


class RemoteLikeStore:
    """A local store seen as a remote one: no local paths, and reading a vector file
    fails the test (metadata and info stay readable)."""

    def __init__(self, inner):
        self.inner = inner
        self.sized: list[str] = []

    def get_bytes(self, key):
        assert not key.startswith("img_emb/"), f"len() downloaded {key}"
        return self.inner.get_bytes(key)

    def size(self, key):
        self.sized.append(key)
        return self.inner.size(key)

    def __getattr__(self, name):
        if name == "local_path":
            raise AttributeError(name)
        return getattr(self.inner, name)


@pytest.mark.parametrize("dim,dtype", [(32, "float16"), (32, "float32"), (512, "float16"), (3, "float16")])
def test_len_counts_rows_from_object_sizes(tmp_path, dim, dtype):
    rng = np.random.default_rng(0)
    w = EmbeddingSetWriter(tmp_path / "set", model_id="m", dim=dim, dtype=dtype)
    sizes = [0, 1, 7, 64, 1000, 129]
    for p, n in enumerate(sizes):
        x = rng.standard_normal((n, dim)).astype(np.float32)
        w.write_part(str(p), x, pd.DataFrame({"key": [f"{p}-{i}" for i in range(n)]}))
    local = EmbeddingSet.open(tmp_path / "set")
    assert len(local) == sum(sizes)
    remote_store = RemoteLikeStore(open_store(tmp_path / "set", create=False))
    remote = EmbeddingSet(remote_store)
    assert len(remote) == sum(sizes)
    assert sorted(remote_store.sized) == sorted(f"img_emb/img_emb_{p}.npy" for p in range(len(sizes)))
