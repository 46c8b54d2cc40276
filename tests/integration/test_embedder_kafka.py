"""The embedder service end to end on the real stack: two service processes' worth of
``run_service`` (gRPC + /metrics + Kafka worker, the real composition root) in one
consumer group; shards in MinIO -> ShardCreated events -> embedding parts in MinIO ->
EmbeddingsWritten events whose references check out; a poison event is dead-lettered."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from clipaudit.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from clipaudit.events.v1 import events_pb2
from tests.unit.test_embedder_logic import good_samples, write_shard

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
               or line.startswith(name + " "))


def _stable_members(bootstrap: str, group: str) -> int:
    """Members of a consumer group once it is Stable (rebalance done), else 0."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        desc = admin.describe_groups([group]).get(group) or {}
        return len(desc.get("members") or []) if desc.get("group_state") == "Stable" else 0
    finally:
        admin.close()


def test_workers_in_one_group_embed_shards_from_minio_and_publish_references(stack, kafka_bus, unique, tmp_path):
    from clipaudit.rpc.runtime import run_service
    from clipaudit.store import open_store
    from services.embedder.__main__ import build
    from services.embedder.settings import EmbedderSettings

    bucket = stack.s3_bucket
    data = open_store(f"s3://{bucket}/tests/{unique}/data", settings=stack)
    infos = []
    for i in range(8):
        p = tmp_path / f"train-{i:06d}.tar"
        write_shard(p, good_samples(10 * i, 3))
        raw = p.read_bytes()
        data.put_bytes(f"train/train-{i:06d}.tar", raw)
        infos.append((f"train-{i:06d}", data.uri(f"train/train-{i:06d}.tar"), hashlib.sha256(raw).hexdigest()))

    t_in, t_out, group = f"shards-{unique}", f"embeddings-{unique}", f"embedder-{unique}"
    kafka_bus.ensure_topics([t_in, t_in + ".dlq", t_out], partitions=4)
    stop = threading.Event()
    ports: list[tuple[int, int]] = []
    threads = []
    for _ in range(2):
        settings = EmbedderSettings(grpc_port=0, metrics_port=0, bus=f"kafka://{stack.kafka_bootstrap}",
                                    store=f"s3://{bucket}/tests/{unique}/store", register_prometheus=False,
                                    shards_topic=t_in, embeddings_topic=t_out, consumer_group=group)
        t = threading.Thread(target=run_service, args=("embedder", settings, build),
                             kwargs={"stop": stop, "ready": lambda g, m: ports.append((g, m))}, daemon=True)
        t.start()
        threads.append(t)
    try:
        deadline = time.monotonic() + 90
        while (len(ports) < 2 or _stable_members(stack.kafka_bootstrap, group) < 2) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(ports) == 2, "services did not start"
        assert _stable_members(stack.kafka_bootstrap, group) == 2, "the two workers did not split partitions"

        for part, uri, sha in infos:
            ev = events_pb2.ShardCreated(dataset="synth/train", shard_id=part)
            ev.shard.uri, ev.shard.sha256, ev.shard.rows = uri, sha, 3
            kafka_bus.publish(t_in, part, ev)
        poison = events_pb2.ShardCreated(dataset="synth/train", shard_id="gone")
        poison.shard.uri = data.uri("train/gone-000000.tar")
        kafka_bus.publish(t_in, "gone", poison)
        kafka_bus.flush()

        consumer = kafka_bus.consumer([t_out, t_in + ".dlq"], f"reader-{unique}")
        written: dict[str, events_pb2.EmbeddingsWritten] = {}
        dead = []
        deadline = time.monotonic() + 180
        while (len(written) < 8 or not dead) and time.monotonic() < deadline:
            for m in consumer.poll(0.5):
                if m.topic == t_out:
                    ev = events_pb2.EmbeddingsWritten.FromString(m.value)
                    written[ev.shard_id] = ev
                else:
                    dead.append(events_pb2.DeadLetter.FromString(m.value))
        consumer.close()
        assert sorted(written) == [p for p, _, _ in infos]
        assert dead and "gone-000000.tar" in dead[0].error and dead[0].consumer_group == group

        from clipaudit.embeddings import EmbeddingSet

        first = written["train-000000"]
        assert first.model_id == "clipaudit-tiny@init0" and first.dim == 64 and first.skipped == 0
        location = first.embeddings.uri.rsplit("/img_emb/", 1)[0]
        assert location == f"s3://{bucket}/tests/{unique}/store/embeddings/clipaudit-tiny_init0/synth/train"
        es = EmbeddingSet.open(open_store(location, settings=stack))
        assert len(es.parts) == 8 and len(es) == 24
        for ev in written.values():   # every reference names real bytes with the right hash and rows
            parent, _, key = ev.embeddings.uri.rpartition("/img_emb/")
            raw = open_store(parent, settings=stack).get_bytes("img_emb/" + key)
            assert hashlib.sha256(raw).hexdigest() == ev.embeddings.sha256 and ev.embeddings.rows == 3
            v = np.load(io.BytesIO(raw))
            np.testing.assert_allclose(np.linalg.norm(v.astype(np.float32), axis=1), 1.0, atol=2e-3)
        meta = es.metadata()
        assert set(meta["shard"]) == {f"train-{i:06d}.tar" for i in range(8)} and "class" in meta.columns

        # both members did work, seen through their own /metrics endpoints
        per_worker = [_metric(m, "clipaudit_embedder_images_total") for _, m in ports]
        assert sum(per_worker) == 24 and all(n > 0 for n in per_worker), per_worker

        # and the gRPC side of the same process answers
        with grpc.insecure_channel(f"127.0.0.1:{ports[0][0]}") as ch:
            info = embedder_pb2_grpc.EmbedderStub(ch).GetModelInfo(embedder_pb2.GetModelInfoRequest(), timeout=10)
        assert info.model_id == "clipaudit-tiny@init0"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
