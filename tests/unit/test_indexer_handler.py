"""The indexer's use cases through the CLI (``clipaudit.cli.main``) and the handler, on
embedding sets written to local directories: outputs checked against numpy brute
force, manifests and their lineage, bad input refused with one line and an exit code."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from clipaudit.bus import handle_one
from clipaudit.bus.memory import MemoryBus
from clipaudit.cli import main
from clipaudit.common.v1 import common_pb2
from clipaudit.embeddings import EmbeddingSetWriter
from clipaudit.errors import FailedPrecondition, InvalidInput, NotFound
from clipaudit.events.v1 import events_pb2
from clipaudit.manifests import read_manifest
from clipaudit.store import open_store
from services.indexer.handler import IndexerHandler
from services.indexer.metrics import IndexerMetrics
from tests.unit.test_indexer_logic import clustered, matched_oracle, oracle_topk, unit

D = 32


def write_set(path, vectors, prefix, model="tiny-m", parts=3, dtype="float16"):
    w = EmbeddingSetWriter(path, model_id=model, dim=vectors.shape[1], dtype=dtype)
    keys = np.array([f"{prefix}{i:05d}" for i in range(len(vectors))])
    for p, idx in enumerate(np.array_split(np.arange(len(vectors)), parts)):
        w.write_part(str(p), vectors[idx], pd.DataFrame({"key": keys[idx], "shard": p}))
    return str(path), keys


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    train = clustered(rng, 900, D, 8)
    ref = clustered(rng, 300, D, 8)
    t1, t2 = clustered(rng, 40, D, 8), clustered(rng, 30, D, 8)
    train = np.concatenate([train, ref[:60], t1[:5]])
    sets = {}
    for name, x in [("train", train), ("ref", ref), ("test_a", t1), ("test_b", t2)]:
        sets[name] = write_set(tmp_path / name, x, name + "-")
    vec = {"train": train, "ref": ref, "test_a": t1, "test_b": t2}
    # stored as float16: read back exactly what the oracle sees
    return tmp_path, sets, {k: v.astype(np.float16).astype(np.float32) for k, v in vec.items()}


def test_similarity_cli_matches_brute_force(data, capsys):
    tmp, sets, vec = data
    out = tmp / "sim.parquet"
    assert main(["similarity", "--query", sets["test_a"][0], "--ref", sets["train"][0], "--out", str(out),
                 "--ref-block", "128", "--query-block", "16", "--device", "cpu"]) == 0
    f = pd.read_parquet(out)
    assert list(f.columns) == ["key", "sim", "ref_key"]
    osims, opos = oracle_topk(vec["test_a"], vec["train"], 1)
    assert (f["key"] == sets["test_a"][1]).all()
    np.testing.assert_allclose(f["sim"], osims[:, 0], atol=1e-6)
    assert (f["ref_key"].to_numpy() == sets["train"][1][opos[:, 0]]).all()
    assert "exact" in capsys.readouterr().out

    out3 = tmp / "sim3.parquet"
    assert main(["similarity", "--query", sets["test_b"][0], "--ref", sets["train"][0], "--out", str(out3),
                 "--k", "3", "--quiet"]) == 0
    f3 = pd.read_parquet(out3)
    osims, opos = oracle_topk(vec["test_b"], vec["train"], 3)
    np.testing.assert_allclose(np.stack(f3["sims"]), osims, atol=1e-6)
    assert (np.stack(f3["ref_keys"]) == sets["train"][1][opos]).all()
    assert (f3["ref_key"] == np.stack(f3["ref_keys"])[:, 0]).all()


def test_similarity_approximate_flat_equals_exact(data):
    tmp, sets, vec = data
    h = IndexerHandler(open_store(tmp / "store"))
    exact = h.similarity(sets["test_a"][0], sets["train"][0], k=2)
    approx = h.similarity(sets["test_a"][0], sets["train"][0], k=2, approximate=True)   # small -> Flat
    np.testing.assert_allclose(np.stack(approx.frame["sims"]), np.stack(exact.frame["sims"]), atol=1e-5)


def test_prune_near_far_random_manifests(data):
    tmp, sets, vec = data
    sims = (vec["train"].astype(np.float64) @ vec["test_a"].T.astype(np.float64)).max(1)
    for rule in ("near", "far"):
        out = tmp / f"{rule}.parquet"
        assert main(["prune", rule, "--train", sets["train"][0], "--test", sets["test_a"][0], "--keep", "100",
                     "--out", str(out), "--quiet"]) == 0
        m = read_manifest(out)
        order = np.lexsort((np.arange(len(sims)), sims if rule == "near" else -sims))[:100]
        assert m.keys == sorted(sets["train"][1][order])
        assert m.lineage.rule == f"prune-{rule}" and m.lineage.parent.endswith("train")
        assert m.lineage.parameters["removed"] == len(sims) - 100 and m.lineage.sources[0].endswith("test_a")
    out = tmp / "rand.parquet"
    assert main(["prune", "random", "--train", sets["train"][0], "--keep", "50", "--seed", "3", "--out", str(out)]) == 0
    assert len(read_manifest(out)) == 50 and read_manifest(out).lineage.parameters["seed"] == 3


def test_prune_matched_per_test_set_and_combined(data, capsys):
    tmp, sets, vec = data
    out = tmp / "matched"
    assert main(["prune", "matched", "--train", sets["train"][0],
                 "--tests", f"{sets['test_a'][0]},{sets['test_b'][0]}", "--reference", sets["ref"][0],
                 "--out", str(out), "--ref-block", "100", "--query-block", "8", "--quiet"]) == 0
    thr, removed = matched_oracle(vec["train"], [vec["test_a"], vec["test_b"]], vec["ref"])
    keys = sets["train"][1]
    a, b, c = (read_manifest(out / f"{n}.parquet") for n in ("test_a", "test_b", "combined"))
    assert a.keys == sorted(keys[~removed[:, 0]]) and b.keys == sorted(keys[~removed[:, 1]])
    assert c.keys == sorted(keys[~removed.any(1)])
    assert c.lineage.parameters["removed"] == removed.any(1).sum() > 0
    assert c.lineage.rule == "prune-matched" and len(c.lineage.sources) == 3
    # the invariant, on the written manifest: sim(t, pruned) <= thr(t)
    kept = vec["train"][np.isin(keys, c.keys)]
    for t, th in zip([vec["test_a"], vec["test_b"]], thr):
        assert ((t.astype(np.float64) @ kept.T.astype(np.float64)).max(1) <= th).all()
    assert "combined" in capsys.readouterr().out


def test_dedup_cli(data):
    tmp, sets, vec = data
    out = tmp / "dedup.parquet"
    assert main(["dedup", "--train", sets["train"][0], "--threshold", "0.876", "--clusters", "4",
                 "--out", str(out), "--quiet"]) == 0
    m = read_manifest(out)
    assert 0 < m.lineage.parameters["removed"] and len(m) + m.lineage.parameters["removed"] == len(vec["train"])


def test_bad_input_gets_one_line_and_exit_code(data, capsys, tmp_path):
    tmp, sets, vec = data
    # NaN in a set (written around the writer, which refuses NaN itself)
    bad = tmp / "bad"
    write_set(bad, vec["test_a"], "bad-", parts=1)
    x = vec["test_a"].copy()
    x[3, 0] = np.nan
    np.save(bad / "img_emb" / "img_emb_0.npy", x.astype(np.float16))
    unnorm = tmp / "unnorm"
    write_set(unnorm, vec["test_a"], "u-", parts=1)
    np.save(unnorm / "img_emb" / "img_emb_0.npy", (vec["test_a"] * 3).astype(np.float16))
    other, _ = write_set(tmp / "other", vec["test_a"], "o-", model="another-model", parts=1)
    wrongdim, _ = write_set(tmp / "wd", unit(np.random.default_rng(0), 10, D + 1), "w-", parts=1)
    cases = [
        (["similarity", "--query", str(bad), "--ref", sets["train"][0], "--out", str(tmp / "o.parquet")], 2, "NaN"),
        (["similarity", "--query", str(unnorm), "--ref", sets["train"][0], "--out", str(tmp / "o.parquet")], 2, "normalised"),
        (["similarity", "--query", other, "--ref", sets["train"][0], "--out", str(tmp / "o.parquet")], 5, "different models"),
        (["similarity", "--query", wrongdim, "--ref", sets["train"][0], "--out", str(tmp / "o.parquet")], 2, "dimensions differ"),
        (["similarity", "--query", str(tmp / "nope"), "--ref", sets["train"][0], "--out", str(tmp / "o.parquet")], 3, "does not exist"),
        (["similarity", "--query", sets["test_a"][0], "--ref", sets["test_b"][0], "--out", str(tmp / "o.parquet"), "--k", "31"], 2, "larger than"),
        (["prune", "near", "--train", sets["train"][0], "--test", sets["test_a"][0], "--keep", "100000", "--out", str(tmp / "x")], 2, "--keep"),
        (["prune", "matched", "--train", sets["train"][0], "--tests", str(bad), "--reference", sets["ref"][0], "--out", str(tmp / "m")], 2, "NaN"),
        (["dedup", "--train", sets["train"][0], "--threshold", "2", "--out", str(tmp / "d")], 2, "threshold"),
    ]
    for argv, code, needle in cases:
        capsys.readouterr()
        assert main(argv) == code, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, (argv, err)


def test_index_build_search_shards_and_model_guard(data):
    tmp, sets, vec = data
    reg = CollectorRegistry()
    texts = {"a photo": vec["test_a"][0]}
    h = IndexerHandler(open_store(tmp / "store"), metrics=IndexerMetrics(reg),
                       embed_texts=lambda ts: np.stack([texts[t] for t in ts]), embedder_model_id="tiny-m")
    announced = []
    info = h.build_index(sets["train"][0], "tr", announce=announced.append)
    assert info.index_type == "Flat" and info.count == len(vec["train"]) and "Flat" in announced[0]
    sharded = h.build_index(sets["train"][0], "tr3", shards=3)
    assert sharded.shards == 3
    q = vec["test_a"][:6]
    osims, opos = oracle_topk(q / np.linalg.norm(q, axis=1, keepdims=True), vec["train"], 5)
    for name in ("tr", "tr3"):
        res = h.search(index=name, k=5, vectors=q * 2.0)          # query vectors are normalised
        assert [r[0] for r in res] == [list(sets["train"][1][p]) for p in opos]
        np.testing.assert_allclose([r[1] for r in res], osims, atol=1e-5)
    by_key = h.search(index="tr3", k=3, keys=[sets["train"][1][7]])
    assert by_key[0][0][0] == sets["train"][1][7]
    by_text = h.search(index="tr", k=1, text="a photo")
    assert by_text[0][0][0] == sets["train"][1][opos[0, 0]]
    # a fresh handler (another process) loads the index from the store
    h2 = IndexerHandler(open_store(tmp / "store"))
    assert h2.search(index="tr3", k=5, vectors=q) == h.search(index="tr3", k=5, vectors=q)
    # append: same model extends, another model is refused
    extra, _ = write_set(tmp / "extra", vec["test_b"], "x-", parts=2)
    assert h.build_index(extra, "tr3", append=True).count == len(vec["train"]) + len(vec["test_b"])
    assert h.search(index="tr3", k=1, vectors=vec["test_b"][:1])[0][0] == ["x-00000"]
    other, _ = write_set(tmp / "other", vec["test_b"], "y-", model="another", parts=1)
    with pytest.raises(FailedPrecondition):
        h.build_index(other, "tr3", append=True)
    with pytest.raises(NotFound):
        h.search(index="tr", k=1, keys=["missing"])
    with pytest.raises(NotFound):
        h.search(index="nope", k=1, vectors=q)
    with pytest.raises(InvalidInput, match="larger"):
        h.search(index="tr", k=10_000, vectors=q)
    with pytest.raises(InvalidInput, match="NaN"):
        h.search(index="tr", k=1, vectors=np.full((1, D), np.nan, np.float32))
    with pytest.raises(InvalidInput, match="dimension"):
        h.search(index="tr", k=1, vectors=np.ones((1, D + 2), np.float32))
    with pytest.raises(InvalidInput, match="exactly one"):
        h.search(index="tr", k=1)
    h.embedder_model_id = "another"
    with pytest.raises(FailedPrecondition):
        h.search(index="tr", k=1, text="a photo")
    assert reg.get_sample_value("clipaudit_indexer_queries_total", {"kind": "vector"}) >= 12
    assert reg.get_sample_value("clipaudit_indexer_rejected_total", {"operation": "search", "error": "NotFound"}) == 2
    assert reg.get_sample_value("clipaudit_indexer_vectors_indexed_total", {"index": "tr3"}) == len(vec["train"]) + 30


def test_index_ivf_and_cli(data, capsys):
    tmp, sets, vec = data
    store = str(tmp / "store")
    assert main(["index", "build", "--vectors", sets["train"][0], "--name", "ivf", "--type", "IVF8,Flat",
                 "--store", store, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "estimated" in out and json.loads(out[out.index("{"):])["index_type"] == "IVF8,Flat"
    assert main(["search", "--index", "ivf", "--key", sets["train"][1][3], "--k", "2", "--store", store]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["keys"][0] == sets["train"][1][3] and abs(res[0]["similarities"][0] - 1) < 1e-3


def test_kafka_worker_handler_is_idempotent_and_refuses_other_models(data):
    tmp, sets, vec = data
    h = IndexerHandler(open_store(tmp / "store"))
    bus = MemoryBus()

    def event(name, vectors, model="tiny-m", shard="s0"):
        npy, meta = tmp / f"{name}.npy", tmp / f"{name}.parquet"
        np.save(npy, vectors.astype(np.float16))
        pd.DataFrame({"key": [f"{name}-{i}" for i in range(len(vectors))]}).to_parquet(meta)
        return events_pb2.EmbeddingsWritten(
            dataset="synth/train", shard_id=shard, model_id=model, dim=vectors.shape[1],
            embeddings=common_pb2.ObjectRef(uri=str(npy)), metadata=common_pb2.ObjectRef(uri=str(meta)))

    def deliver(ev):
        from clipaudit.bus import Message
        msg = Message("embeddings.v1", 0, 0, b"k", ev.SerializeToString())
        return handle_one(msg, events_pb2.EmbeddingsWritten.FromString,
                          lambda e: h.on_embeddings_written(e, index="live"), bus, group="indexer",
                          max_attempts=2, backoff_s=0)

    assert deliver(event("a", vec["test_a"]))
    assert deliver(event("a", vec["test_a"]))                  # redelivered: nothing added twice
    assert deliver(event("b", vec["test_b"], shard="s1"))
    assert h.index_info("live").count == len(vec["test_a"]) + len(vec["test_b"])
    assert h.search(index="live", k=1, vectors=vec["test_b"][4:5])[0][0] == ["b-4"]
    assert not deliver(event("c", vec["test_b"], model="another", shard="s2"))   # dead-lettered
    bad = vec["test_a"].copy()
    bad[0] = np.inf
    assert not deliver(event("d", bad, shard="s3"))
    dlq = bus.messages("embeddings.v1.dlq")
    assert len(dlq) == 2 and "another" in events_pb2.DeadLetter.FromString(dlq[0].value).error
    assert h.index_info("live").count == len(vec["test_a"]) + len(vec["test_b"])
    # bound to a model, an index refuses another model's event even when it arrives first
    with pytest.raises(FailedPrecondition, match="consume_model"):
        h.on_embeddings_written(event("e", vec["test_b"], model="another", shard="s4"), index="fresh",
                                model_id="tiny-m")
    assert h.on_embeddings_written(event("f", vec["test_b"], shard="s5"), index="fresh", model_id="tiny-m") == \
        len(vec["test_b"])


def test_add_vectors_appends_without_rewriting_the_shard(data):
    """The Kafka worker's path: a small batch added to a large shard is stored as an
    append-log batch (the shard file is not rewritten); a fresh handler replays the log;
    once the log is as large as the shard file it is folded in and its objects removed."""
    tmp, sets, vec = data
    st = open_store(tmp / "store")
    h = IndexerHandler(st)
    h.build_index(sets["train"][0], "inc", index_type="IVF4,Flat")
    shard_file = st.get_bytes("indexes/inc/shard-000.faiss")
    n = len(vec["train"])
    batches = [(vec["test_a"][i:i + 10], [f"add-{i + j}" for j in range(10)]) for i in range(0, 40, 10)]
    for i, (x, keys) in enumerate(batches):
        assert h.add_vectors("inc", x, keys, model_id="tiny-m", source=f"ev{i}") == 10
    assert st.get_bytes("indexes/inc/shard-000.faiss") == shard_file          # not rewritten
    info = json.loads(st.get_bytes("indexes/inc/index.json"))
    appends = info["shards"][0]["appends"]
    assert [a["count"] for a in appends] == [10] * 4 and info["count"] == n + 40
    ist = st.child("indexes/inc")
    assert all(ist.exists(a["vectors"]) and ist.exists(a["keys"]) for a in appends)
    q = vec["test_a"][:40]
    fresh = IndexerHandler(open_store(tmp / "store"))                          # replays the log
    assert fresh.index_info("inc").count == n + 40
    assert fresh.search(index="inc", k=3, vectors=q) == h.search(index="inc", k=3, vectors=q)
    assert fresh.search(index="inc", k=1, keys=["add-17"])[0][0][0] == "add-17"
    assert h.add_vectors("inc", batches[0][0], batches[0][1], model_id="tiny-m", source="ev0") == 0  # redelivered

    # a batch that makes the log as large as the shard file folds it in
    big = clustered(np.random.default_rng(5), n, D, 8)
    h.add_vectors("inc", big, [f"big-{i}" for i in range(n)], model_id="tiny-m", source="big")
    info = json.loads(st.get_bytes("indexes/inc/index.json"))
    assert info["shards"][0]["appends"] == [] and info["count"] == 2 * n + 40
    assert st.get_bytes("indexes/inc/shard-000.faiss") != shard_file
    assert not any(ist.exists(a["vectors"]) or ist.exists(a["keys"]) for a in appends)
    fresh = IndexerHandler(open_store(tmp / "store"))
    assert fresh.search(index="inc", k=5, vectors=q) == h.search(index="inc", k=5, vectors=q)


def test_dedup_streams_through_buckets_and_matches_oracle(data, tmp_path):
    """One cluster (no k-means randomness), a memory budget that forces many disk
    buckets: the handler's kept keys are the greedy oracle's."""
    from tests.unit.test_indexer_logic import greedy_oracle

    tmp, sets, vec = data
    spill = tmp_path / "spill"
    spill.mkdir()
    h = IndexerHandler(open_store(tmp / "store"), memory_budget_bytes=64 << 10, spill_dir=str(spill))
    m = h.dedup(sets["train"][0], 0.876, str(tmp / "dd"), clusters=1)
    want = greedy_oracle(vec["train"], np.zeros(len(vec["train"]), int), 0.876)
    assert list(read_manifest(tmp / "dd").keys) == list(sets["train"][1][want])
    assert m.lineage.parameters["removed"] == len(vec["train"]) - len(want) > 0
    assert list(spill.iterdir()) == []
