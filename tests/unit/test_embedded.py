"""Embedded mode: the five services' own composition roots on one in-memory bus and a
local store. Events flow exactly as on Kafka: shards -> embeddings -> index; a train job
-> checkpoint -> evaluation report."""

from __future__ import annotations

import json
import time

import pytest

from clipaudit.bus import TOPIC_CHECKPOINTS, TOPIC_EMBEDDINGS, TOPIC_REPORTS, TOPIC_SHARDS, TOPIC_TRAIN_JOBS
from clipaudit.common.v1 import common_pb2
from clipaudit.embedded import EmbeddedSystem
from clipaudit.embeddings import EmbeddingSet
from clipaudit.events.v1 import events_pb2


def wait_for(bus, topic, n, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msgs = bus.messages(topic)
        if len(msgs) >= n:
            return msgs
        time.sleep(0.2)
    raise AssertionError(f"{topic}: {len(bus.messages(topic))} of {n} messages after {timeout_s} s")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from clipaudit.synth import generate

    out = tmp_path_factory.mktemp("coll")
    generate("tiny", out, seed=1, progress=False)
    return out


def test_events_flow_through_all_services(collection, tmp_path):
    from clipaudit.synth.collection import Collection

    coll = Collection.load(collection)
    with EmbeddedSystem(tmp_path / "store") as system:
        bus = system.bus
        shards = coll.shard_keys("test_natural") + coll.shard_keys("test_sketch")
        for key in shards:
            part = key.rsplit("/", 1)[-1].removesuffix(".tar")
            bus.publish(TOPIC_SHARDS, part, events_pb2.ShardCreated(
                dataset="tiny/tests", shard_id=part, shard=common_pb2.ObjectRef(uri=str(collection / key)),
                output_prefix=str(tmp_path / "emb")))
        written = [events_pb2.EmbeddingsWritten.FromString(m.value) for m in wait_for(bus, TOPIC_EMBEDDINGS, len(shards))]
        es = EmbeddingSet.open(tmp_path / "emb")
        assert len(es) == coll.splits["test_natural"].count + coll.splits["test_sketch"].count
        assert sum(e.embeddings.rows for e in written) == len(es)
        # the indexer's worker consumed the same events into its default index
        indexer = system.servicer("indexer").handler
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and indexer.index_info().count < len(es):
            time.sleep(0.2)
        assert indexer.index_info().count == len(es)

        spec = {"data": [str(collection)], "split": "train", "samples": 64, "batch_size": 16, "warmup_steps": 1,
                "device": "cpu", "out": str(tmp_path / "run"),
                "evaluations": [{"name": "zs", "test_sets": [str(collection / "test_natural")]}]}
        bus.publish(TOPIC_TRAIN_JOBS, "job-1", events_pb2.TrainJobRequested(job_id="job-1", spec_json=json.dumps(spec)))
        ck = events_pb2.CheckpointWritten.FromString(wait_for(bus, TOPIC_CHECKPOINTS, 1)[-1].value)
        assert ck.final and ck.checkpoint.uri
        rep = events_pb2.ReportWritten.FromString(wait_for(bus, TOPIC_REPORTS, 1)[-1].value)
        report = json.loads(open(rep.report.uri).read())
        assert report["test_sets"][0]["n"] == coll.splits["test_natural"].count
        assert not bus.messages(TOPIC_SHARDS + ".dlq") and not bus.messages(TOPIC_TRAIN_JOBS + ".dlq")
