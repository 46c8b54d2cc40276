"""The classifier's use cases end to end on seeded synthetic embeddings with known
domains: training + thresholds, the contamination report recovering a planted rate,
filtering with lineage, zero-shot bootstrapping, the bus worker, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from clipaudit.bus import TOPIC_LABELS
from clipaudit.bus.memory import MemoryBus
from clipaudit.embeddings import EmbeddingSetWriter
from clipaudit.errors import FailedPrecondition, InvalidInput, NotFound
from clipaudit.manifests import read_manifest
from clipaudit.store import open_store
from services.classifier.handler import ClassifierHandler, nominal_domain_of
from services.classifier.metrics import ClassifierMetrics
from services.classifier.model_file import DomainClassifier
from tests.unit.classifier_synthetic import DIM, MODEL_ID, domain_vectors, write_labelled_set, write_test_sets

PLANTED = 0.05


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """Well separated domains: a near-perfect classifier."""
    d = tmp_path_factory.mktemp("sep")
    write_labelled_set(d / "train", n=2000, noise=0.15, seed=0)
    write_test_sets(d / "test", n=4000, contamination=PLANTED, noise=0.15, seed=1)
    h = ClassifierHandler()
    r = h.train(str(d / "train"), out=str(d / "m.json"), label_column="domain", classes=["natural", "rendition"])
    return d, h, r


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    """Overlapping domains: the classifier errs on ~10% of rows, so raw shares are biased."""
    d = tmp_path_factory.mktemp("ovl")
    write_labelled_set(d / "train", n=4000, noise=0.45, seed=0)
    write_test_sets(d / "test", n=4000, contamination=PLANTED, noise=0.45, seed=1)
    h = ClassifierHandler()
    r = h.train(str(d / "train"), out=str(d / "m.json"), label_column="domain_group")
    return d, h, r


def test_model_file_holds_everything_and_round_trips(separable):
    d, h, r = separable
    doc = json.loads((d / "m.json").read_text())
    assert doc["embedding_model_id"] == MODEL_ID and doc["classes"] == ["natural", "rendition"]
    assert doc["training"]["label_mapping"] == {"natural": "natural", "sketch": "rendition", "painting": "rendition"}
    assert doc["training"]["labels_source"] == "labels:domain"
    assert (doc["training"]["n_train"], doc["training"]["n_validation"], doc["training"]["n_test"]) == (1500, 250, 250)
    for level, target in (("default", 0.95), ("strict", 0.98)):
        assert doc["thresholds"][level]["target_precision"] == target
        for c in ("natural", "rendition"):
            ch = doc["thresholds"][level]["per_class"][c]
            assert 0 < ch["threshold"] < 1 and ch["reachable"] and ch["precision"] >= target
    m = DomainClassifier.from_json((d / "m.json").read_bytes())
    assert m.classifier_id == r.model.classifier_id
    x = domain_vectors(np.array([0, 1, 0]), np.random.default_rng(5))
    assert np.array_equal(m.heads.scores(x), r.model.heads.scores(x))


def test_thresholds_are_the_precision_targeted_ones_on_the_validation_split(separable):
    """Recompute the validation split and check the stored thresholds against select_threshold."""
    from services.classifier import logic

    d, h, r = separable
    from clipaudit.embeddings import EmbeddingSet

    x, meta = EmbeddingSet.open(d / "train").load()
    y, _ = logic.map_labels(meta["domain"].tolist(), ["natural", "rendition"])
    _, va, _ = logic.stratified_split(y, 0)
    s = r.model.heads.scores(logic.check_embeddings(x[va]))
    for i, c in enumerate(["natural", "rendition"]):
        t, prec, rec, _ = logic.precision_curve(s[:, i], y[va] == i)
        chosen = r.model.thresholds["strict"]["per_class"][c]["threshold"]
        ok = t[(prec >= 0.98) & (t >= 0.5)]   # the target, above the default floor min_threshold=0.5
        assert chosen == pytest.approx(ok.min())


def test_separable_report_recovers_the_planted_contamination_within_the_wilson_ci(separable):
    d, h, _ = separable
    rep = h.report(str(d / "test"), str(d / "m.json"))
    assert rep["n"] == 8000 and set(rep["by"]["split"]) == {"test_natural", "test_sketch"}
    assert rep["nominal_domain"] is None and "contamination" not in rep["overall"]["strict"]   # "test" claims no domain
    for split, nominal in (("test_sketch", "rendition"), ("test_natural", "natural")):
        g = rep["by"]["split"][split]
        assert g["nominal_domain"] == nominal
        for level in ("default", "strict"):
            c = g[level]["contamination"]
            assert c["ci95"][0] <= PLANTED <= c["ci95"][1], (split, level, c)
            assert c["ci95"][1] - c["ci95"][0] < 0.02
    # the whole set: half natural, half rendition
    shares = rep["overall"]["strict"]["shares"]
    assert shares["natural"]["ci95"][0] <= 0.5 <= shares["natural"]["ci95"][1]


def test_overlapping_raw_share_is_biased_but_the_corrected_share_recovers_it(overlapping):
    d, h, _ = overlapping
    rep = h.report(str(d / "test"), str(d / "m.json"))
    g = rep["by"]["split"]["test_sketch"]
    assert g["ground_truth"]["contamination"] == pytest.approx(PLANTED)
    c = g["default"]["contamination"]
    assert not (c["ci95"][0] <= PLANTED <= c["ci95"][1])     # raw share: classifier errors on top of the truth
    for split in ("test_sketch", "test_natural"):
        for level in ("default", "strict"):
            c = rep["by"]["split"][split][level]["contamination"]
            lo, hi = c["corrected_ci95"]
            assert lo <= PLANTED <= hi, (split, level, c)


def test_filter_writes_a_clean_manifest_with_lineage(separable, tmp_path):
    d, h, r = separable
    m = h.filter(str(d / "test"), str(d / "m.json"), keep="rendition", threshold="strict", out=str(tmp_path / "clean"))
    back = read_manifest(tmp_path / "clean")
    assert back.keys == m.keys and back.lineage.rule == "domain_filter"
    assert back.lineage.parameters["classifier_id"] == r.model.classifier_id
    assert back.lineage.parameters["keep"] == "rendition" and back.lineage.parent.endswith("test")
    truth = pd.concat([pd.read_parquet(p) for p in sorted((d / "test" / "metadata").glob("*.parquet"))])
    kept = truth[truth["key"].isin(set(m.keys))]
    assert len(kept) > 3500 and (kept["domain_group"] == "rendition").mean() > 0.99


def test_zero_shot_bootstrap_trains_without_labels(tmp_path):
    write_labelled_set(tmp_path / "train", n=1200, noise=0.15, seed=3)
    calls = []

    def embed_texts(texts):  # a text tower whose prompts point at the two domain clusters
        calls.append(list(texts))
        e = np.zeros((len(texts), DIM), np.float32)
        for i, t in enumerate(texts):
            e[i, 0 if t.startswith(("a photo", "a photograph", "a close-up", "a real", "a snapshot")) else 1] = 1
        return e

    h = ClassifierHandler(embed_texts=embed_texts, text_model_id=MODEL_ID)
    r = h.train(str(tmp_path / "train"), out=str(tmp_path / "zs.json"))
    s = r.summary()
    assert s["bootstrapped"] and s["labels_source"] == "zero-shot" and any("zero-shot" in w for w in s["warnings"])
    assert len(calls) == 2 and any("a sketch of a star." == t for t in calls[1])
    # the bootstrapped classifier agrees with the true domains
    rep = h.report(str(tmp_path / "train"), str(tmp_path / "zs.json"), columns=["domain_group"])
    ren = rep["by"]["domain_group"]["rendition"]["default"]["shares"]["rendition"]["share"]
    nat = rep["by"]["domain_group"]["natural"]["default"]["shares"]["natural"]["share"]
    assert ren > 0.95 and nat > 0.95
    # a text model other than the embedding model is refused
    other = ClassifierHandler(embed_texts=embed_texts, text_model_id="ViT-B-32@other")
    with pytest.raises(FailedPrecondition, match="same model"):
        other.train(str(tmp_path / "train"), out=str(tmp_path / "x.json"))
    with pytest.raises(FailedPrecondition, match="no label column"):
        ClassifierHandler().train(str(tmp_path / "train"), out=str(tmp_path / "x.json"))


def test_unreachable_target_is_reported_with_the_best_reachable(tmp_path):
    write_labelled_set(tmp_path / "train", n=800, noise=1.5, seed=4)   # nearly indistinguishable domains
    r = ClassifierHandler().train(str(tmp_path / "train"), out=str(tmp_path / "m.json"), label_column="domain_group",
                                  default_precision=0.99, strict_precision=0.999)
    s = r.summary()
    ch = s["thresholds"]["strict"]["per_class"]["rendition"]
    assert not ch["reachable"] and ch["precision"] < 0.999
    assert any("unreachable" in w and "best reachable" in w for w in s["warnings"])


def test_a_set_named_like_a_domain_claims_it(separable, tmp_path):
    d, h, _ = separable
    write_test_sets(tmp_path / "test_painting", n=400, seed=5)
    rep = h.report(str(tmp_path / "test_painting"), str(d / "m.json"), columns=[])
    assert (rep["nominal_domain"], rep["nominal_source"]) == ("rendition", "set name")
    assert rep["overall"]["strict"]["contamination"]["n"] == 800 and rep["by"] == {}


def test_nominal_domain_from_split_names():
    cls = ["natural", "rendition"]
    assert nominal_domain_of("test_natural", cls) == "natural"
    assert nominal_domain_of("test_sketch", cls) == "rendition"
    assert nominal_domain_of("test_quickdraw", cls) == "rendition"
    assert nominal_domain_of("train", cls) is None


# -- bad input ---------------------------------------------------------------------------------

def test_bad_input_is_one_clear_error_and_counted(separable, tmp_path):
    d, _, _ = separable
    registry = CollectorRegistry()
    h = ClassifierHandler(metrics=ClassifierMetrics(registry))
    model = str(d / "m.json")
    write_labelled_set(tmp_path / "one", n=100, rendition_share=0.0, seed=9)
    with pytest.raises(InvalidInput, match="no example of class"):
        h.train(str(tmp_path / "one"), out=str(tmp_path / "o.json"), label_column="domain_group")
    with pytest.raises(InvalidInput, match="not among the classes"):
        h.train(str(d / "train"), out=str(tmp_path / "o.json"), label_column="domain", classes=["sketch", "painting"])
    with pytest.raises(InvalidInput, match="label column 'style'"):
        h.train(str(d / "train"), out=str(tmp_path / "o.json"), label_column="style")
    with pytest.raises(InvalidInput, match="in \\(0, 1\\)"):
        h.train(str(d / "train"), out=str(tmp_path / "o.json"), label_column="domain", default_precision=1.2)
    # another model's embeddings
    write_labelled_set(tmp_path / "other", n=100, seed=2, model_id="ViT-B-32@abc")
    with pytest.raises(FailedPrecondition, match="ViT-B-32@abc"):
        h.report(str(tmp_path / "other"), model)
    with pytest.raises(FailedPrecondition):
        h.classify(model, np.eye(DIM, dtype=np.float32)[:2], embedding_model_id="ViT-B-32@abc")
    # NaN vectors, wrong width, thresholds outside (0, 1), unknown names
    x = np.eye(DIM, dtype=np.float32)[:3].copy()
    x[1, 4] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        h.classify(model, x)
    with pytest.raises(InvalidInput, match="dimension"):
        h.classify(model, np.ones((2, DIM + 1), np.float32))
    for bad in ("1.5", 0.0, "-1", "loose"):
        with pytest.raises(InvalidInput):
            h.classify(model, np.eye(DIM, dtype=np.float32)[:2], threshold=bad)
    with pytest.raises(InvalidInput, match="unknown class"):
        h.filter(str(d / "test"), model, keep="cartoon", out=str(tmp_path / "f"))
    with pytest.raises(NotFound):
        h.classify(str(tmp_path / "missing.json"), np.eye(DIM, dtype=np.float32)[:1])
    with pytest.raises(NotFound):
        h.classify(str(tmp_path / "nodir" / "m.json"), np.eye(DIM, dtype=np.float32)[:1])
    assert not (tmp_path / "nodir").exists()   # reading creates nothing
    (tmp_path / "tampered.json").write_text((d / "m.json").read_text().replace('"classifier_id": "domains-', '"classifier_id": "domains-0'))
    with pytest.raises(InvalidInput, match="classifier_id"):
        h.classify(str(tmp_path / "tampered.json"), np.eye(DIM, dtype=np.float32)[:1])
    rejected = sum(s.value for mf in registry.collect() if mf.name == "clipaudit_classifier_rejected"
                   for s in mf.samples if s.name.endswith("_total"))
    assert rejected == 16
    # and the handler still works afterwards
    r = h.classify(model, np.eye(DIM, dtype=np.float32)[:2], threshold="0.5")
    assert r.labels() == ["natural", "rendition"]


# -- the bus worker (in-memory bus, local store; the Kafka/MinIO version is an integration test) --

def _embeddings_event(store, dataset, shard, vectors, keys, model_id):
    import hashlib
    import io

    from clipaudit.common.v1 import common_pb2
    from clipaudit.events.v1 import events_pb2

    buf = io.BytesIO()
    np.save(buf, vectors.astype(np.float16), allow_pickle=False)
    store.put_bytes(f"emb/{shard}.npy", buf.getvalue())
    mbuf = io.BytesIO()
    pd.DataFrame({"key": keys}).to_parquet(mbuf, index=False)
    store.put_bytes(f"emb/{shard}.parquet", mbuf.getvalue())
    return events_pb2.EmbeddingsWritten(
        dataset=dataset, shard_id=shard, model_id=model_id, dim=vectors.shape[1],
        embeddings=common_pb2.ObjectRef(uri=store.uri(f"emb/{shard}.npy"), sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
                                        rows=len(vectors)),
        metadata=common_pb2.ObjectRef(uri=store.uri(f"emb/{shard}.parquet"), rows=len(vectors)))


def test_worker_labels_a_shard_and_dead_letters_another_models_shard(separable, tmp_path):
    import io

    from clipaudit.bus import handle_one
    from clipaudit.events.v1 import events_pb2

    d, _, r = separable
    store, bus = open_store(tmp_path / "store"), MemoryBus()
    registry = CollectorRegistry()
    h = ClassifierHandler(store, bus, ClassifierMetrics(registry), worker_model=str(d / "m.json"))
    dom = np.array([0, 1, 1, 0, 1])
    x = domain_vectors(dom, np.random.default_rng(7))
    ev = _embeddings_event(store, "synth/test", "test-000000", x, [f"k{i}" for i in range(5)], MODEL_ID)
    assert handle_one(_msg(ev), events_pb2.EmbeddingsWritten.FromString, h.label_shard, bus, group="classifier")
    out = bus.messages(TOPIC_LABELS)
    assert len(out) == 1
    lw = events_pb2.LabelsWritten.FromString(out[0].value)
    key = f"labels/{r.model.classifier_id}/synth/test/test-000000.parquet"
    assert lw.labels.uri == store.uri(key) and lw.labels.rows == 5 and lw.classifier_id == r.model.classifier_id
    labels = pd.read_parquet(io.BytesIO(store.get_bytes(key)))
    assert labels["key"].tolist() == [f"k{i}" for i in range(5)]
    assert labels["decision_strict"].tolist() == ["natural", "rendition", "rendition", "natural", "rendition"]
    assert registry.get_sample_value("clipaudit_classifier_vectors_total", {"operation": "label_shard"}) == 5
    # embeddings of another model: dead-lettered, nothing written, nothing published
    bad = _embeddings_event(store, "synth/test", "test-000001", x, [f"j{i}" for i in range(5)], "ViT-B-32@other")
    assert not handle_one(_msg(bad), events_pb2.EmbeddingsWritten.FromString, h.label_shard, bus,
                          group="classifier", backoff_s=0)
    dlq = bus.messages(TOPIC_EMBEDDINGS_DLQ)
    assert len(dlq) == 1 and "ViT-B-32@other" in events_pb2.DeadLetter.FromString(dlq[0].value).error
    assert len(bus.messages(TOPIC_LABELS)) == 1
    assert not store.exists(f"labels/{r.model.classifier_id}/synth/test/test-000001.parquet")


TOPIC_EMBEDDINGS_DLQ = "embeddings.v1.dlq"


def _msg(ev):
    from clipaudit.bus import Message

    return Message("embeddings.v1", 0, 0, ev.shard_id.encode(), ev.SerializeToString())


def test_a_style_that_looks_natural_is_corrected_with_its_own_error_rates(tmp_path):
    """Paintings sit between the clusters, so the classifier calls many of them natural.
    The class-average false-positive rate (mostly sketches) under-corrects a painting
    test set; the painting rates kept from the held-out split recover the planted 5%."""
    from services.classifier import logic

    rng = np.random.default_rng(11)
    centres = {"natural": np.eye(DIM)[0], "sketch": np.eye(DIM)[1], "painting": 0.75 * np.eye(DIM)[0] + 0.66 * np.eye(DIM)[1]}

    def vectors(styles):
        x = np.stack([centres[s] for s in styles]) + rng.normal(0, 0.25, (len(styles), DIM))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    styles = rng.choice(["natural", "sketch", "painting"], 8000, p=[0.4, 0.3, 0.3])
    EmbeddingSetWriter(tmp_path / "train", model_id=MODEL_ID, dim=DIM).write_part(
        "0", vectors(styles), pd.DataFrame({"key": [f"t{i}" for i in range(len(styles))], "domain": styles}))
    test_styles = np.array(["painting"] * 3800 + ["natural"] * 200)
    EmbeddingSetWriter(tmp_path / "test_painting", model_id=MODEL_ID, dim=DIM).write_part(
        "0", vectors(test_styles), pd.DataFrame({"key": [f"p{i}" for i in range(4000)], "domain": test_styles}))
    h = ClassifierHandler()
    r = h.train(str(tmp_path / "train"), out=str(tmp_path / "m.json"), label_column="domain",
                classes=["natural", "rendition"])
    assert set(r.model.test["by_value"]["default"]) == {"natural", "sketch", "painting"}
    rep = h.report(str(tmp_path / "test_painting"), str(tmp_path / "m.json"), columns=[])
    o = rep["overall"]
    assert o["nominal_value"] == "painting" and o["ground_truth"]["contamination"] == pytest.approx(PLANTED)
    c = o["default"]["contamination"]
    assert c["ci95"][0] > PLANTED                                    # raw: paintings called natural on top
    assert c["corrected_ci95"][0] <= PLANTED <= c["corrected_ci95"][1], c
    average = logic.share_of(c["count"], c["n"], r.model.test["default"]["natural"])
    assert not (average.corrected_ci95[0] <= PLANTED <= average.corrected_ci95[1]), average
