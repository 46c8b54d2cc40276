"""Round trips of the embedding-set and manifest formats."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clipaudit.embeddings import EmbeddingSet, EmbeddingSetWriter, check_vectors, require_same_model
from clipaudit.errors import FailedPrecondition, InvalidInput, NotFound
from clipaudit.manifests import diff_manifests, keys_sha256, read_manifest, write_manifest


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_embedding_set_round_trip_clip_retrieval_layout(tmp_path):
    w = EmbeddingSetWriter(tmp_path / "set", model_id="tiny@abc", dim=8)
    x0, x1 = unit_rows(5, 8, 0), unit_rows(3, 8, 1)
    w.write_part("0", x0, pd.DataFrame({"key": [f"a{i}" for i in range(5)], "class": ["cat"] * 5}))
    w.write_part("1", x1, pd.DataFrame({"key": [f"b{i}" for i in range(3)], "class": ["dog"] * 3}),
                 text_vectors=unit_rows(3, 8, 2))
    assert (tmp_path / "set/img_emb/img_emb_0.npy").exists()
    assert (tmp_path / "set/metadata/metadata_1.parquet").exists()
    s = EmbeddingSet.open(tmp_path / "set")
    assert s.model_id == "tiny@abc" and s.dim == 8 and len(s) == 8
    v, meta = s.load()
    assert v.dtype == np.float32 and np.allclose(v, np.concatenate([x0, x1]), atol=1e-3)
    assert meta["key"].tolist() == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(3)]
    assert np.load(tmp_path / "set/img_emb/img_emb_0.npy").dtype == np.float16
    blocks = list(s.iter_blocks(4))
    assert [len(b[0]) for b in blocks] == [4, 1, 3]


def test_reads_a_set_without_our_sidecar(tmp_path):
    (tmp_path / "img_emb").mkdir()
    (tmp_path / "metadata").mkdir()
    np.save(tmp_path / "img_emb/img_emb_0.npy", unit_rows(4, 6).astype(np.float16))
    pd.DataFrame({"key": list("abcd")}).to_parquet(tmp_path / "metadata/metadata_0.parquet")
    s = EmbeddingSet.open(tmp_path)
    assert s.model_id == "unknown" and s.dim == 6 and len(s) == 4


def test_writer_refuses_other_model(tmp_path):
    EmbeddingSetWriter(tmp_path, model_id="m1", dim=4)
    with pytest.raises(FailedPrecondition, match="m1"):
        EmbeddingSetWriter(tmp_path, model_id="m2", dim=4)


def test_require_same_model(tmp_path):
    for name, mid in (("a", "m1"), ("b", "m2")):
        EmbeddingSetWriter(tmp_path / name, model_id=mid, dim=4).write_part("0", unit_rows(2, 4), pd.DataFrame({"key": ["x", "y"]}))
    with pytest.raises(FailedPrecondition):
        require_same_model(EmbeddingSet.open(tmp_path / "a"), EmbeddingSet.open(tmp_path / "b"))


def test_check_vectors():
    x = unit_rows(3, 4)
    assert check_vectors(x) is x
    with pytest.raises(InvalidInput, match="NaN"):
        check_vectors(np.array([[np.nan, 1.0]]))
    with pytest.raises(InvalidInput, match="dimension"):
        check_vectors(x, dim=5)
    with pytest.raises(InvalidInput, match="normalised"):
        check_vectors(x * 3)
    assert np.allclose(np.linalg.norm(check_vectors(x * 3, normalise=True), axis=1), 1)
    with pytest.raises(InvalidInput, match="zero"):
        check_vectors(np.zeros((1, 4), np.float32), normalise=True)


def test_missing_set_is_not_found(tmp_path):
    with pytest.raises(NotFound):
        EmbeddingSet.open(tmp_path / "nothing")


def test_manifest_round_trip_and_lineage(tmp_path):
    m = write_manifest(tmp_path / "near", ["c", "a", "b", "a"], rule="near", parameters={"keep": 3},
                       parent="s3://b/train", sources=["s3://b/test"])
    assert m.keys == ["a", "b", "c"]
    side = json.loads((tmp_path / "near.json").read_text())
    assert side["rule"] == "near" and side["parameters"] == {"keep": 3} and side["count"] == 3
    assert side["keys_sha256"] == keys_sha256(["a", "b", "c"]) and side["clipaudit_version"]
    r = read_manifest(tmp_path / "near.parquet")
    assert r.keys == m.keys and r.lineage == m.lineage


def test_manifest_tamper_detected(tmp_path):
    write_manifest(tmp_path / "m", ["a", "b"], rule="random")
    pd.DataFrame({"key": ["a", "z"]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(InvalidInput, match="sha256"):
        read_manifest(tmp_path / "m")


def test_manifest_diff(tmp_path):
    a = write_manifest(tmp_path / "a", ["1", "2", "3"], rule="x")
    b = write_manifest(tmp_path / "b", ["2", "3", "4", "5"], rule="y")
    d = diff_manifests(a, b)
    assert (d["common"], d["only_a"], d["only_b"]) == (2, 1, 2)
    assert d["jaccard"] == pytest.approx(2 / 5)


def test_manifest_cli(tmp_path, capsys):
    from clipaudit.cli import main

    write_manifest(tmp_path / "a", ["1", "2"], rule="x")
    write_manifest(tmp_path / "b", ["2"], rule="y")
    assert main(["manifest", "show", str(tmp_path / "a.parquet")]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 2
    assert main(["manifest", "diff", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert json.loads(capsys.readouterr().out)["only_a"] == 1
    assert main(["manifest", "show", str(tmp_path / "missing")]) == 3
    assert "error" in capsys.readouterr().err
