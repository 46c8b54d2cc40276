"""The evaluator keeps preprocessed test images per process (a study evaluates dozens of
checkpoints on the same test sets): a second evaluation must give the same numbers
without decoding again, a changed shard must be decoded again, and a test set larger
than the bound must be streamed and still be right."""

from __future__ import annotations

import os

import numpy as np
import pytest

from clipaudit.lru import ByteBoundedLRU
from services.evaluator import encoding
from services.evaluator.encoding import encode_test_set
from services.evaluator.testsets import open_test_set


def test_lru_evicts_least_recently_used_and_refuses_oversized():
    c = ByteBoundedLRU(100)
    assert c.put("a", np.zeros(40, np.uint8)) and c.put("b", np.zeros(40, np.uint8))
    assert c.get("a") is not None                  # a is now the most recent
    c.put("c", np.zeros(40, np.uint8))             # 120 > 100: b goes
    assert c.get("b") is None and c.get("a") is not None and c.get("c") is not None
    assert c.bytes == 80
    assert not c.put("big", np.zeros(101, np.uint8)) and c.get("big") is None
    assert not ByteBoundedLRU(0).put("x", np.zeros(1, np.uint8))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from clipaudit.synth import generate

    root = tmp_path_factory.mktemp("coll")
    generate("tiny", root, seed=3)
    return root / "test_sketch"


@pytest.fixture(scope="module")
def model():
    from services.evaluator.checkpoints import load_model

    return load_model("clipaudit-tiny")


def _decode_calls(monkeypatch):
    calls = {"n": 0}
    real = encoding.image_bytes

    def counting(sample):
        calls["n"] += 1
        return real(sample)

    monkeypatch.setattr(encoding, "image_bytes", counting)
    return calls


def test_second_evaluation_reuses_preprocessed_images(split, model, monkeypatch):
    monkeypatch.setattr(encoding, "PREPROCESSED", ByteBoundedLRU(64 << 20))
    calls = _decode_calls(monkeypatch)
    first = encode_test_set(model, open_test_set(str(split)), batch_size=16)
    n = calls["n"]
    assert n == len(first.metadata) > 0
    second = encode_test_set(model, open_test_set(str(split)), batch_size=7, hook_layers=True)
    assert calls["n"] == n, "the second evaluation decoded again"
    np.testing.assert_allclose(second.outputs, first.outputs, rtol=1e-5, atol=1e-6)
    assert second.metadata["key"].tolist() == first.metadata["key"].tolist()
    assert second.activations and all(len(v) == n for v in second.activations.values())
    # a rewritten shard (new mtime) is decoded again
    shard = sorted(split.glob("*.tar"))[0]
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    encode_test_set(model, open_test_set(str(split)))
    assert calls["n"] == 2 * n


def test_test_set_over_the_bound_is_streamed_and_not_kept(split, model, monkeypatch):
    reference = encode_test_set(model, open_test_set(str(split)))
    small = ByteBoundedLRU(1000)   # far less than one batch of 32-px float images
    monkeypatch.setattr(encoding, "PREPROCESSED", small)
    got = encode_test_set(model, open_test_set(str(split)), batch_size=4)
    assert len(small) == 0
    np.testing.assert_allclose(got.outputs, reference.outputs, rtol=1e-5, atol=1e-6)
