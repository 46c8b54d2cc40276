"""Shards -> embedding set on the tiny model: layout, known vectors, determinism,
resume, every kind of bad input, checkpoints, and the CLI as a function."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from clipaudit.embeddings import EmbeddingSet
from clipaudit.errors import FailedPrecondition, NotFound
from tests.unit.test_embedder_logic import gigantic_png, good_samples, image_bytes, sample_json, write_shard

pytestmark = pytest.mark.timeout(300)   # nothing here may hang (clip-retrieval #257)


@pytest.fixture(scope="module")
def tiny():
    from clipaudit.models import load_clip

    return load_clip("clipaudit-tiny", seed=0)


@pytest.fixture
def shards(tmp_path):
    """Three shards of a split dir, 12 + 12 + 7 samples."""
    root = tmp_path / "data"
    write_shard(root / "train" / "train-000000.tar", good_samples(0, 12))
    write_shard(root / "train" / "train-000001.tar", good_samples(12, 12))
    write_shard(root / "test_sketch" / "test_sketch-000000.tar", good_samples(100, 7, size=(48, 40)))
    return root


def handler_for(tiny, **kw):
    from services.embedder.handler import EmbedderHandler
    from services.embedder.metrics import EmbedderMetrics

    registry = CollectorRegistry()
    kw.setdefault("batch_size", 5)
    kw.setdefault("workers", 2)
    kw.setdefault("worker_kind", "thread")
    return EmbedderHandler(tiny, metrics=EmbedderMetrics(registry), **kw), registry


def metric(registry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_dataset_becomes_clip_retrieval_layout_with_known_vectors(tiny, shards, tmp_path):
    from services.embedder.logic import embed_images, embed_texts

    h, m = handler_for(tiny)
    s = h.embed_dataset(shards, tmp_path / "out", text=True)
    assert (s.images, s.parts_written, s.parts_skipped, s.skipped_samples) == (31, 3, 0, 0)
    es = EmbeddingSet.open(tmp_path / "out")
    assert es.parts == ["test_sketch-000000", "train-000000", "train-000001"]
    assert es.dim == 64 and es.model_id == tiny.model_id and len(es) == 31
    v, meta = es.load()
    assert es.load_vectors("train-000000").dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=2e-3)
    for col in ("key", "shard", "class", "class_id", "domain", "domain_group", "background", "group", "split",
                "near_duplicate_of", "caption"):
        assert col in meta.columns, col
    row = meta.set_index("key").loc["000013"]
    assert row["shard"] == "train-000001.tar" and row["class"] == "class1" and row["caption"] == "a photo of class1"
    # the oracle: the same image embedded alone (no shards, no workers)
    idx = int(np.flatnonzero(meta["key"].to_numpy() == "000013")[0])
    ref = embed_images(tiny, [image_bytes(13)]).vectors[0]
    np.testing.assert_allclose(v[idx], ref, atol=2e-3)
    t = es.load_text_vectors("train-000001")
    assert t.shape == (12, 64)
    np.testing.assert_allclose(t[1], embed_texts(tiny, ["a photo of class1"])[0], atol=2e-3)
    assert metric(m, "clipaudit_embedder_images_total", source="dataset") == 31
    assert metric(m, "clipaudit_embedder_shards_total", outcome="written") == 3


def test_process_and_thread_workers_give_identical_sets(tiny, shards, tmp_path):
    """Determinism on CPU: worker kind, worker count and batch size change nothing."""
    a, _ = handler_for(tiny, workers=2, worker_kind="process", batch_size=5)
    b, _ = handler_for(tiny, workers=1, worker_kind="thread", batch_size=8)
    a.embed_dataset(shards, tmp_path / "a")
    b.embed_dataset(shards, tmp_path / "b")
    va, ma = EmbeddingSet.open(tmp_path / "a").load(np.float16)
    vb, mb = EmbeddingSet.open(tmp_path / "b").load(np.float16)
    assert ma["key"].tolist() == mb["key"].tolist()
    np.testing.assert_allclose(va.astype(np.float32), vb.astype(np.float32), atol=1e-3)
    a.embed_dataset(shards, tmp_path / "c")
    assert np.array_equal(va, EmbeddingSet.open(tmp_path / "c").load(np.float16)[0])


def test_resume_skips_finished_shards_and_redoes_changed_or_unfinished(tiny, shards, tmp_path):
    out = tmp_path / "out"
    h, m = handler_for(tiny)
    h.embed_dataset(shards, out)
    done_mtime = os.path.getmtime(out / "img_emb" / "img_emb_train-000000.npy")
    # an interruption after train-000001's vectors but before its sidecar: it is redone
    (out / "done" / "train-000001.json").unlink()
    # a shard whose bytes changed since: redone too
    write_shard(shards / "test_sketch" / "test_sketch-000000.tar", good_samples(200, 3))
    s = h.embed_dataset(shards, out)
    assert (s.parts_written, s.parts_skipped, s.images) == (2, 1, 15)
    assert os.path.getmtime(out / "img_emb" / "img_emb_train-000000.npy") == done_mtime
    assert len(EmbeddingSet.open(out)) == 12 + 12 + 3
    assert json.loads((out / "done" / "train-000001.json").read_text())["rows"] == 12
    # asking for captions now redoes parts that were written without them
    s = h.embed_dataset(shards, out, text=True)
    assert s.parts_written == 3 and EmbeddingSet.open(out).has_text()
    # another model must not add to (or skip into) this set
    from clipaudit.models import load_clip

    other, _ = handler_for(load_clip("clipaudit-tiny", seed=1))
    with pytest.raises(FailedPrecondition, match="holds embeddings of model"):
        other.embed_dataset(shards, out)


def test_every_bad_input_is_counted_and_skipped(tiny, tmp_path):
    good = good_samples(0, 3)
    j = sample_json
    bad = [
        ("z00001", {"jpg": b"", "json": j(1)}),                                  # zero bytes
        ("z00002", {"jpg": image_bytes(2)[:200], "json": j(2)}),                  # truncated JPEG
        ("z00003", {"jpg": b"\xff\xd8\xff" + os.urandom(300), "json": j(3)}),     # corrupt JPEG
        ("z00004", {"png": gigantic_png(), "json": j(4)}),                        # 900 Mpx bomb
        ("z00005", {"json": j(5), "txt": "caption, no image"}),                   # no image member
        ("c00006", {"jpg": image_bytes(6, mode="CMYK"), "json": j(6)}),           # converted, kept
        ("c00007", {"png": image_bytes(7, mode="I;16"), "json": j(7)}),
        ("c00008", {"png": image_bytes(8, mode="P"), "json": j(8)}),
        ("c00009", {"png": image_bytes(9, mode="RGBA"), "json": j(9)}),
        ("c00010", {"jpg": image_bytes(10, size=(2000, 1200)), "json": j(10)}),   # large, draft-decoded
    ]
    data = tmp_path / "data"
    write_shard(data / "mixed-000000.tar", good + bad)
    write_shard(data / "only-json-000000.tar", [("n00001", {"json": j(1)})])    # a shard with no images
    (data / "empty-000000.tar").write_bytes(b"")                                 # zero-byte shard
    # a tar cut in the middle of its 4th sample: the first 3 are kept
    write_shard(tmp_path / "t.tar", good_samples(50, 6))
    raw = (tmp_path / "t.tar").read_bytes()
    (data / "cut-000000.tar").write_bytes(raw[: int(len(raw) * 0.55)])

    h, m = handler_for(tiny)
    s = h.embed_dataset(data, tmp_path / "out")
    es = EmbeddingSet.open(tmp_path / "out")
    mixed = es.load_metadata("mixed-000000")["key"].tolist()
    assert mixed == ["000000", "000001", "000002", "c00006", "c00007", "c00008", "c00009", "c00010"]
    assert len(es.load_vectors("only-json-000000")) == 0
    assert len(es.load_vectors("empty-000000")) == 0
    cut = es.load_metadata("cut-000000")["key"].tolist()
    assert cut == [f"{i:06d}" for i in range(50, 50 + len(cut))] and 0 < len(cut) < 6
    # 5 bad samples in mixed, 1 in only-json, 1 empty shard, 1 cut shard
    assert s.skipped_samples == 8
    assert s.parts_written == 4 and not s.parts_failed
    kinds = {k: metric(m, "clipaudit_embedder_decode_errors_total", kind=k)
             for k in ("zero_byte", "truncated", "too_large", "corrupt", "no_image", "shard")}
    assert kinds["zero_byte"] == 1 and kinds["too_large"] == 1 and kinds["no_image"] == 2
    assert sum(kinds.values()) == 8
    v, _ = es.load()
    assert np.isfinite(v).all()


def test_missing_data_and_duplicate_part_ids_are_clear_errors(tiny, tmp_path):
    h, _ = handler_for(tiny)
    with pytest.raises(NotFound, match="does not exist"):
        h.embed_dataset(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="no .tar shards"):
        h.embed_dataset(tmp_path / "empty", tmp_path / "out")
    write_shard(tmp_path / "d" / "a" / "x-000000.tar", good_samples(0, 1))
    write_shard(tmp_path / "d" / "b" / "x-000000.tar", good_samples(1, 1))
    from clipaudit.errors import InvalidInput

    with pytest.raises(InvalidInput, match="same part"):
        h.embed_dataset(tmp_path / "d", tmp_path / "out")
    # a single tar is a dataset of one shard
    s = h.embed_dataset(tmp_path / "d" / "a" / "x-000000.tar", tmp_path / "one")
    assert s.images == 1 and EmbeddingSet.open(tmp_path / "one").parts == ["x-000000"]


# --------------------------------------------------------------------------- CLI and checkpoints


def test_cli_embed_reports_rate_and_writes_the_set(shards, tmp_path, capsys):
    from clipaudit.cli import main

    rc = main(["embed", "--data", str(shards), "--model", "clipaudit-tiny", "--out", str(tmp_path / "o"),
               "--workers", "2", "--batch-size", "8", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "embedded 31 images from 3 shard(s)" in out and "images/s" in out
    rc = main(["embed", "--data", str(shards), "--out", str(tmp_path / "o"), "--quiet", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["parts_skipped"] == 3 and summary["images"] == 0


def test_checkpoint_of_another_architecture_is_failed_precondition_naming_it(shards, tmp_path, capsys):
    from clipaudit.cli import main
    from clipaudit.models import load_clip

    from clipaudit.models import CONFIG_DIR

    cfg = json.loads((CONFIG_DIR / "clipaudit-tiny.json").read_text())
    cfg["embed_dim"] = 32
    other = tmp_path / "other-arch.json"
    other.write_text(json.dumps(cfg))
    wrong = tmp_path / "wrong-arch.pt"
    torch.save(load_clip(str(other)).model.state_dict(), wrong)
    rc = main(["embed", "--data", str(shards), "--model", f"clipaudit-tiny@{wrong}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == FailedPrecondition.exit_code and str(wrong) in err and len(err.strip().splitlines()) == 1

    rc = main(["embed", "--data", str(shards), "--model", f"clipaudit-tiny@{tmp_path / 'gone.pt'}",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == NotFound.exit_code and "gone.pt" in err and "does not exist" in err


def test_checkpoint_of_the_right_architecture_loads_and_changes_the_model_id(shards, tmp_path):
    from clipaudit.models import load_clip
    from services.embedder.handler import embed_dataset

    ckpt = tmp_path / "tiny-seed3.pt"
    torch.save({"state_dict": load_clip("clipaudit-tiny", seed=3).model.state_dict()}, ckpt)
    s = embed_dataset(shards, f"clipaudit-tiny@{ckpt}", tmp_path / "o", workers=1, worker_kind="thread")
    assert s.images == 31 and s.model_id.startswith("clipaudit-tiny@") and "init" not in s.model_id
    s3 = embed_dataset(shards, "clipaudit-tiny", tmp_path / "o3", workers=1, worker_kind="thread", seed=3)
    a = EmbeddingSet.open(tmp_path / "o").load()[0]
    b = EmbeddingSet.open(tmp_path / "o3").load()[0]
    np.testing.assert_allclose(a, b, atol=1e-3)   # same weights, same vectors
    assert s3.model_id != s.model_id


def test_resize_on_device_keeps_rows_aligned_in_mixed_size_shards(tiny, tmp_path):
    """The GPU path (centre squares resized by the device, batches grouped by size)
    run on CPU: every row's vector still belongs to that row's image."""
    from services.embedder.logic import embed_images

    sizes = [(32, 32), (48, 40), (64, 64), (40, 48), (32, 32), (60, 45)]
    samples = [(f"{i:06d}", {"jpg": image_bytes(i, sizes[i % len(sizes)]), "json": sample_json(i)})
               for i in range(13)]
    write_shard(tmp_path / "data" / "mixed-000000.tar", samples)
    h, _ = handler_for(tiny, resize_on_device=True, batch_size=4)
    s = h.embed_dataset(tmp_path / "data", tmp_path / "out")
    assert s.images == 13
    v, meta = EmbeddingSet.open(tmp_path / "out").load()
    assert sorted(meta["key"]) == [k for k, _ in samples]
    ref = embed_images(tiny, [dict(samples)[k]["jpg"] for k in meta["key"]]).vectors
    # a random-init model maps all images close together, so check identity, not closeness:
    # each stored row is nearest to its own image's reference vector
    dist = np.linalg.norm(v[:, None, :] - ref[None, :, :], axis=2)
    assert (dist.argmin(axis=1) == np.arange(13)).all(), dist
