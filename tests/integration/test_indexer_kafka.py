"""The indexer as its own process on the real stack: embeddings.v1 events on Kafka,
vectors in MinIO, the worker adds them to an index incrementally, gRPC Search sees
them, another model's shard is dead-lettered, /metrics counts the vectors."""

from __future__ import annotations

import io
import signal
import time
import urllib.request

import grpc
import numpy as np
import pandas as pd
import pytest

from clipaudit.bus import TOPIC_EMBEDDINGS
from clipaudit.common.v1 import common_pb2
from clipaudit.events.v1 import events_pb2
from clipaudit.indexer.v1 import indexer_pb2, indexer_pb2_grpc
from clipaudit.serve import spawn
from tests.conftest import free_port

pytestmark = pytest.mark.integration
D = 16


def unit(rng, n):
    x = rng.standard_normal((n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def put_shard(store, dataset, shard, vectors, model):
    buf = io.BytesIO()
    np.save(buf, vectors)
    store.put_bytes(f"{shard}.npy", buf.getvalue())
    meta = io.BytesIO()
    pd.DataFrame({"key": [f"{shard}-{i}" for i in range(len(vectors))]}).to_parquet(meta)
    store.put_bytes(f"{shard}.parquet", meta.getvalue())
    return events_pb2.EmbeddingsWritten(
        dataset=dataset, shard_id=shard, model_id=model, dim=D,
        embeddings=common_pb2.ObjectRef(uri=store.uri(f"{shard}.npy"), rows=len(vectors)),
        metadata=common_pb2.ObjectRef(uri=store.uri(f"{shard}.parquet"), rows=len(vectors)))


def test_worker_indexes_events_and_dead_letters_other_models(stack, s3_store, kafka_bus, unique, tmp_path):
    kafka_bus.ensure_topics([TOPIC_EMBEDDINGS, TOPIC_EMBEDDINGS + ".dlq"])
    dataset = f"it-{unique}/train"
    env = {
        "CLIPAUDIT_INDEXER_GRPC_PORT": str(free_port()), "CLIPAUDIT_INDEXER_METRICS_PORT": str(free_port()),
        "CLIPAUDIT_INDEXER_STORE": s3_store.uri("store"), "CLIPAUDIT_INDEXER_CONSUMER_GROUP": f"indexer-{unique}",
        "CLIPAUDIT_INDEXER_CONSUME_INDEX": "live", "CLIPAUDIT_INDEXER_CONSUME_MODEL": "tiny-m",
        "CLIPAUDIT_INDEXER_CONSUME_DATASET_PREFIX": f"it-{unique}/",
        "CLIPAUDIT_INDEXER_REGISTER_PROMETHEUS": "false", "CLIPAUDIT_INDEXER_DEVICE": "cpu",
    }
    proc, ports = spawn("indexer", env=env, log_path=tmp_path / "indexer.log", timeout_s=120)
    try:
        rng = np.random.default_rng(0)
        shards = {f"s{unique}-{i}": unit(rng, 40) for i in range(3)}
        for sid, v in shards.items():
            kafka_bus.publish(TOPIC_EMBEDDINGS, sid, put_shard(s3_store, dataset, sid, v, "tiny-m"))
        first = next(iter(shards))
        # redelivery of the same shard must not duplicate it
        kafka_bus.publish(TOPIC_EMBEDDINGS, first, put_shard(s3_store, dataset, first, shards[first], "tiny-m"))
        bad_sid = f"s{unique}-other"
        kafka_bus.publish(TOPIC_EMBEDDINGS, bad_sid, put_shard(s3_store, dataset, bad_sid, unit(rng, 5), "another-model"))
        kafka_bus.flush()

        stub = indexer_pb2_grpc.IndexerStub(grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}"))
        last = list(shards)[-1]
        q = shards[last][7].astype(np.float32)
        deadline, found = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            try:
                found = stub.Search(indexer_pb2.SearchRequest(index="live", k=1, dim=D, vectors=q), timeout=10)
                if found.results[0].keys[0] == f"{last}-7":
                    break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND   # index not created yet
            time.sleep(0.5)
        assert found is not None and found.results[0].keys[0] == f"{last}-7"

        # dead letter of the other model's shard, with the reason
        consumer = kafka_bus.consumer([TOPIC_EMBEDDINGS + ".dlq"], f"dlq-reader-{unique}")
        deadline, letter = time.monotonic() + 60, None
        while letter is None and time.monotonic() < deadline:
            for m in consumer.poll(1.0):
                dl = events_pb2.DeadLetter.FromString(m.value)
                if events_pb2.EmbeddingsWritten.FromString(dl.value).shard_id == bad_sid:
                    letter = dl
        consumer.close()
        assert letter is not None and "another-model" in letter.error and letter.consumer_group == f"indexer-{unique}"

        # every published message (3 shards, the redelivery, the other model's) has been consumed: shards
        # are keyed to different partitions, so "the last shard is searchable" does not imply the others are
        deadline, consumed = time.monotonic() + 60, 0.0
        while consumed < 5 and time.monotonic() < deadline:
            body = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).read().decode()
            consumed = sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                           if line.startswith("clipaudit_bus_messages_total{") and f'topic="{TOPIC_EMBEDDINGS}"' in line)
            time.sleep(0.5)
        assert consumed >= 5, f"the worker consumed {consumed} of 5 messages"

        # 120 vectors, not 160: the redelivered shard added nothing; search by key works
        r = stub.Search(indexer_pb2.SearchRequest(index="live", k=120, keys=[f"{first}-0"]), timeout=10)
        assert len(r.results[0].keys) == 120 and r.results[0].keys[0] == f"{first}-0"
        with pytest.raises(grpc.RpcError) as e:
            stub.Search(indexer_pb2.SearchRequest(index="live", k=121, keys=[f"{first}-0"]), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        body = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).read().decode()
        assert 'clipaudit_indexer_vectors_indexed_total{index="live"} 120.0' in body
        assert s3_store.exists("store/indexes/live/index.json")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except Exception:  # noqa: BLE001
            proc.kill()
