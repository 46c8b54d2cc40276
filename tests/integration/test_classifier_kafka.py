"""The classifier as its own process on the real stack: a classifier file and
embedding shards in MinIO, embeddings.v1 events on Kafka, labels parquet back in
MinIO with a labels.v1 event; another model's shard is dead-lettered; gRPC Classify,
health and /metrics on the same process."""

from __future__ import annotations

import io
import signal
import time
import urllib.request

import grpc
import numpy as np
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipaudit.bus import TOPIC_EMBEDDINGS, TOPIC_LABELS
from clipaudit.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from clipaudit.common.v1 import common_pb2
from clipaudit.events.v1 import events_pb2
from clipaudit.serve import spawn
from services.classifier.handler import ClassifierHandler
from tests.conftest import free_port
from tests.unit.classifier_synthetic import DIM, MODEL_ID, domain_vectors, write_labelled_set

pytestmark = pytest.mark.integration


def put_shard(store, dataset, shard, vectors, model):
    import hashlib

    buf = io.BytesIO()
    np.save(buf, vectors.astype(np.float16), allow_pickle=False)
    store.put_bytes(f"emb/{shard}.npy", buf.getvalue())
    meta = io.BytesIO()
    pd.DataFrame({"key": [f"{shard}-{i}" for i in range(len(vectors))]}).to_parquet(meta)
    store.put_bytes(f"emb/{shard}.parquet", meta.getvalue())
    return events_pb2.EmbeddingsWritten(
        dataset=dataset, shard_id=shard, model_id=model, dim=DIM,
        embeddings=common_pb2.ObjectRef(uri=store.uri(f"emb/{shard}.npy"), rows=len(vectors),
                                        sha256=hashlib.sha256(buf.getvalue()).hexdigest()),
        metadata=common_pb2.ObjectRef(uri=store.uri(f"emb/{shard}.parquet"), rows=len(vectors)))


def test_worker_labels_shards_on_the_real_stack(stack, s3_store, kafka_bus, unique, tmp_path):
    # a classifier trained here, written straight to MinIO (the handler writes s3:// locations)
    write_labelled_set(tmp_path / "train", n=1200, noise=0.15, seed=0)
    model_uri = s3_store.uri("models/domains.json")
    trained = ClassifierHandler().train(str(tmp_path / "train"), out=model_uri, label_column="domain_group")
    cid = trained.model.classifier_id

    kafka_bus.ensure_topics([TOPIC_EMBEDDINGS, TOPIC_EMBEDDINGS + ".dlq", TOPIC_LABELS])
    dataset = f"it-{unique}/test"
    env = {
        "CLIPAUDIT_CLASSIFIER_GRPC_PORT": str(free_port()), "CLIPAUDIT_CLASSIFIER_METRICS_PORT": str(free_port()),
        "CLIPAUDIT_CLASSIFIER_STORE": s3_store.uri("store"), "CLIPAUDIT_CLASSIFIER_MODEL": model_uri,
        "CLIPAUDIT_CLASSIFIER_CONSUMER_GROUP": f"classifier-{unique}",
        "CLIPAUDIT_CLASSIFIER_CONSUME_DATASET_PREFIX": f"it-{unique}/",
        "CLIPAUDIT_CLASSIFIER_REGISTER_PROMETHEUS": "false",
    }
    labels_reader = kafka_bus.consumer([TOPIC_LABELS], f"labels-reader-{unique}")
    proc, ports = spawn("classifier", env=env, log_path=tmp_path / "classifier.log", timeout_s=120)
    try:
        rng = np.random.default_rng(0)
        truth = {}
        for i in range(2):
            dom = rng.integers(0, 2, 30)
            sid = f"s{unique}-{i}"
            truth[sid] = np.where(dom == 0, "natural", "rendition")
            kafka_bus.publish(TOPIC_EMBEDDINGS, sid, put_shard(s3_store, dataset, sid, domain_vectors(dom, rng), MODEL_ID))
        bad_sid = f"s{unique}-other"
        kafka_bus.publish(TOPIC_EMBEDDINGS, bad_sid,
                          put_shard(s3_store, dataset, bad_sid, domain_vectors(np.zeros(5, int), rng), "another-model"))
        kafka_bus.flush()

        # labels.v1 events for both good shards, pointing at parquet in MinIO
        got = {}
        deadline = time.monotonic() + 90
        while len(got) < 2 and time.monotonic() < deadline:
            for m in labels_reader.poll(1.0):
                ev = events_pb2.LabelsWritten.FromString(m.value)
                if ev.dataset == dataset:
                    got[ev.shard_id] = ev
        assert set(got) == set(truth), (got, (tmp_path / "classifier.log").read_text()[-2000:])
        for sid, ev in got.items():
            assert ev.classifier_id == cid and ev.labels.rows == 30
            key = f"store/labels/{cid}/{dataset}/{sid}.parquet"
            assert ev.labels.uri == s3_store.uri(key)
            labels = pd.read_parquet(io.BytesIO(s3_store.get_bytes(key)))
            assert labels["decision_strict"].tolist() == truth[sid].tolist()
            assert np.allclose(labels["p_natural"] > 0.5, truth[sid] == "natural")

        # the other model's shard: dead-lettered with the reason, no labels written
        dlq = kafka_bus.consumer([TOPIC_EMBEDDINGS + ".dlq"], f"dlq-reader-{unique}")
        deadline, letter = time.monotonic() + 60, None
        while letter is None and time.monotonic() < deadline:
            for m in dlq.poll(1.0):
                dl = events_pb2.DeadLetter.FromString(m.value)
                if events_pb2.EmbeddingsWritten.FromString(dl.value).shard_id == bad_sid:
                    letter = dl
        dlq.close()
        assert letter is not None and "another-model" in letter.error
        assert letter.consumer_group == f"classifier-{unique}"
        assert not s3_store.exists(f"store/labels/{cid}/{dataset}/{bad_sid}.parquet")

        # the same process serves gRPC (health + Classify on the model in MinIO) and /metrics
        channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}")
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        r = stub.Classify(classifier_pb2.ClassifyRequest(model=model_uri, dim=DIM, embedding_model_id=MODEL_ID,
                                                         vectors=np.eye(DIM, dtype=np.float32)[:2].ravel()), timeout=10)
        assert list(r.labels) == ["natural", "rendition"]
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(classifier_pb2.ClassifyRequest(model=model_uri, dim=DIM, vectors=[float("nan")] * DIM), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        channel.close()
        body = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).read().decode()
        assert 'clipaudit_classifier_shards_labelled_total 2.0' in body
        assert 'clipaudit_classifier_decisions_total{domain="natural",threshold="strict"}' in body
        assert 'clipaudit_classifier_vectors_total{operation="label_shard"} 60.0' in body   # 2 shards x 30
        assert 'clipaudit_classifier_rejected_total{error="FailedPrecondition",operation="label_shard"}' in body
        assert 'clipaudit_classifier_rejected_total{error="InvalidInput",operation="classify"} 1.0' in body
    finally:
        labels_reader.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except Exception:  # noqa: BLE001
            proc.kill()
