"""A training job submitted through real Kafka, data and checkpoints in real MinIO:
the trainer service (its composition root, in a thread) consumes TrainJobRequested,
trains, writes the checkpoint to S3 and publishes CheckpointWritten."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from clipaudit.events.v1 import events_pb2

pytestmark = pytest.mark.integration


@pytest.fixture
def trainer_service(stack, kafka_bus, unique):
    from clipaudit.rpc.runtime import run_service
    from services.trainer.__main__ import build
    from services.trainer.settings import TrainerSettings

    jobs_topic, ckpt_topic = f"test-train-jobs-{unique}", f"test-checkpoints-{unique}"
    kafka_bus.ensure_topics([jobs_topic, jobs_topic + ".dlq", ckpt_topic], partitions=1)
    settings = TrainerSettings(bus=f"kafka://{stack.kafka_bootstrap}", store=f"s3://{stack.s3_bucket}/tests/{unique}",
                               grpc_port=0, metrics_port=0, register_prometheus=False, consumer_group=f"trainer-{unique}",
                               jobs_topic=jobs_topic, checkpoints_topic=ckpt_topic)
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=run_service, args=("trainer", settings, build),
                         kwargs={"stop": stop, "ready": lambda *_: ready.set()}, daemon=True)
    t.start()
    assert ready.wait(120), "trainer service did not start"
    yield settings
    stop.set()
    t.join(60)


def _wait_for(consumer, decode, predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for msg in consumer.poll(timeout_s=1.0):
            ev = decode(msg.value)
            consumer.commit(msg)
            if predicate(ev):
                return ev
    return None


def test_kafka_submitted_job_writes_a_checkpoint_to_minio(trainer_service, stack, kafka_bus, unique, s3_store):
    from clipaudit.manifests import write_manifest
    from clipaudit.models import load_clip
    from clipaudit.synth import generate

    data = f"s3://{stack.s3_bucket}/tests/{unique}/synth"
    generate("tiny", data, seed=0, progress=False)
    manifest = f"s3://{stack.s3_bucket}/tests/{unique}/manifests/first64"
    write_manifest(manifest, [f"train-{i:06d}" for i in range(64)] + ["not-in-data"], rule="test")
    spec = {"data": [data], "manifest": manifest, "batch_size": 16, "samples": 48, "warmup_steps": 1,
            "evaluations": {"test_sets": ["test_natural"]}}
    checkpoints = kafka_bus.consumer([trainer_service.checkpoints_topic], f"watch-{unique}")
    checkpoints.poll(timeout_s=1.0)
    kafka_bus.publish(trainer_service.jobs_topic, f"job-{unique}",
                      events_pb2.TrainJobRequested(job_id=f"job-{unique}", spec_json=json.dumps(spec)))
    kafka_bus.flush()
    ev = _wait_for(checkpoints, events_pb2.CheckpointWritten.FromString, lambda e: e.job_id == f"job-{unique}", 300)
    checkpoints.close()
    assert ev is not None, "no CheckpointWritten event"
    assert ev.final and ev.step == 3 and ev.checkpoint.uri.startswith(f"s3://{stack.s3_bucket}/tests/{unique}/trainer/")
    assert json.loads(ev.evaluations_json) == {"test_sets": ["test_natural"]}
    loaded = load_clip(f"clipaudit-tiny@{ev.checkpoint.uri}")
    from clipaudit.models import fetch_checkpoint

    ck = torch.load(fetch_checkpoint(ev.checkpoint.uri), weights_only=True)
    assert ck["subset"]["missing"] == 1 and ck["resolved_counts"] == {"first64": 65}
    assert torch.equal(loaded.model.state_dict()["logit_scale"], ck["model"]["logit_scale"])


def test_kafka_job_with_bad_spec_is_dead_lettered(trainer_service, kafka_bus, unique):
    dlq = kafka_bus.consumer([trainer_service.jobs_topic + ".dlq"], f"dlq-{unique}")
    dlq.poll(timeout_s=1.0)
    kafka_bus.publish(trainer_service.jobs_topic, "bad", events_pb2.TrainJobRequested(job_id="bad", spec_json="{oops"))
    kafka_bus.flush()
    dl = _wait_for(dlq, events_pb2.DeadLetter.FromString, lambda e: True, 60)
    dlq.close()
    assert dl is not None and "not valid JSON" in dl.error and dl.attempts == 1
