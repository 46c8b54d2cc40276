"""Seeded synthetic embeddings with known domains for the classifier tests: two
clusters on the unit sphere (natural around e0, rendition around e1) whose overlap is
set by ``noise``; test sets with a planted share of the other domain."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipaudit.embeddings import EmbeddingSetWriter

MODEL_ID = "synthetic@test"
DIM = 32


def domain_vectors(domains: np.ndarray, rng: np.random.Generator, *, dim: int = DIM, noise: float = 0.15) -> np.ndarray:
    """One unit vector per entry of ``domains`` (0 natural, 1 rendition)."""
    centres = np.zeros((2, dim), np.float32)
    centres[0, 0] = 1.0
    centres[1, 1] = 1.0
    x = centres[domains] + rng.normal(0, noise, (len(domains), dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_labelled_set(location, *, n: int = 2000, rendition_share: float = 0.3, seed: int = 0, noise: float = 0.15,
                       model_id: str = MODEL_ID, parts: int = 2) -> pd.DataFrame:
    """A 'training' set with `domain` (natural|sketch|painting) and `domain_group` columns."""
    rng = np.random.default_rng(seed)
    dom = (rng.random(n) < rendition_share).astype(int)
    style = np.where(dom == 0, "natural", rng.choice(["sketch", "painting"], n))
    x = domain_vectors(dom, rng, noise=noise)
    meta = pd.DataFrame({"key": [f"s{seed}-{i:06d}" for i in range(n)], "domain": style,
                         "domain_group": np.where(dom == 0, "natural", "rendition"),
                         "class": rng.choice(["circle", "star"], n), "split": "train"})
    w = EmbeddingSetWriter(location, model_id=model_id, dim=DIM, dtype="float16")
    for p, idx in enumerate(np.array_split(np.arange(n), parts)):
        w.write_part(str(p), x[idx], meta.iloc[idx].reset_index(drop=True))
    return meta


def write_test_sets(location, *, n: int = 4000, contamination: float = 0.05, seed: int = 1, noise: float = 0.15,
                    model_id: str = MODEL_ID) -> pd.DataFrame:
    """Two test splits in one set: `test_sketch` (nominally rendition) and `test_natural`,
    each with exactly round(n * contamination) images of the other domain."""
    rng = np.random.default_rng(seed)
    k = round(n * contamination)
    w = EmbeddingSetWriter(location, model_id=model_id, dim=DIM, dtype="float16")
    metas = []
    for part, (split, nominal) in enumerate((("test_sketch", 1), ("test_natural", 0))):
        dom = np.full(n, nominal)
        dom[rng.choice(n, k, replace=False)] = 1 - nominal
        x = domain_vectors(dom, rng, noise=noise)
        meta = pd.DataFrame({"key": [f"{split}-{i:06d}" for i in range(n)], "split": split,
                             "domain_group": np.where(dom == 0, "natural", "rendition")})
        w.write_part(str(part), x, meta)
        metas.append(meta)
    return pd.concat(metas, ignore_index=True)
