"""The trainer's job lifecycle through a real gRPC channel (server on a free port)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from clipaudit.bus import TOPIC_CHECKPOINTS
from clipaudit.bus.memory import MemoryBus
from clipaudit.events.v1 import events_pb2
from clipaudit.manifests import write_manifest
from clipaudit.rpc import ServiceMetrics, build_server
from clipaudit.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from services.trainer.grpc_api import registrations
from services.trainer.handler import TrainerJobs
from services.trainer.metrics import TrainerMetrics


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from clipaudit.synth import generate

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate("tiny", out, seed=0, progress=False)
    return out


@pytest.fixture
def served(tmp_path):
    registry = CollectorRegistry()
    bus = MemoryBus()
    metrics = TrainerMetrics(registry)
    jobs = TrainerJobs(publisher=bus, metrics=metrics, default_out=str(tmp_path / "store")).start()
    regs, names = registrations(jobs)
    server = build_server(regs, names, port=0, metrics=ServiceMetrics(registry, "trainer"))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield trainer_pb2_grpc.TrainerStub(channel), bus, registry, tmp_path
    channel.close()
    jobs.stop()
    server.stop(0)


def job_spec(synth, **kw) -> str:
    base = dict(data=[str(synth)], batch_size=8, samples=4 * 8, warmup_steps=1, log_every=1)
    base.update(kw)
    return json.dumps(base)


def test_submit_watch_get_through_a_real_channel(served, synth, tmp_path):
    stub, bus, registry, _ = served
    keys = [f"train-{i:06d}" for i in range(40)]
    write_manifest(tmp_path / "m" / "first40", keys, rule="test")
    job = stub.SubmitJob(trainer_pb2.SubmitJobRequest(
        spec_json=job_spec(synth, manifest=str(tmp_path / "m" / "first40")), job_id="grpc-1"))
    assert job.job_id == "grpc-1" and job.state in (trainer_pb2.JOB_STATE_QUEUED, trainer_pb2.JOB_STATE_RUNNING)
    updates = list(stub.WatchJob(trainer_pb2.GetJobRequest(job_id="grpc-1"), timeout=300))
    steps = [u.step for u in updates if u.state == trainer_pb2.JOB_STATE_RUNNING and u.step]
    assert steps == sorted(steps) and steps[-1] == 4
    assert updates[-1].state == trainer_pb2.JOB_STATE_SUCCEEDED
    assert all(u.loss > 0 for u in updates if u.step)
    done = stub.GetJob(trainer_pb2.GetJobRequest(job_id="grpc-1"))
    assert done.state == trainer_pb2.JOB_STATE_SUCCEEDED and done.step == done.total_steps == 4
    assert dict(done.resolved_counts) == {"first40": 40} and done.missing_keys == 0
    assert Path(done.checkpoint.uri).is_file() and len(done.checkpoint.sha256) == 64
    assert done.checkpoint.uri.startswith(str(tmp_path / "store" / "trainer" / "grpc-1"))
    (msg,) = bus.messages(TOPIC_CHECKPOINTS)
    ev = events_pb2.CheckpointWritten.FromString(msg.value)
    assert ev.job_id == "grpc-1" and ev.final and ev.checkpoint.uri == done.checkpoint.uri and ev.step == 4
    assert registry.get_sample_value("clipaudit_trainer_jobs_finished_total", {"state": "succeeded"}) == 1
    assert registry.get_sample_value("clipaudit_trainer_steps_total") == 4
    # resubmitting the same id and spec is idempotent; another spec under that id is refused
    again = stub.SubmitJob(trainer_pb2.SubmitJobRequest(
        spec_json=job_spec(synth, manifest=str(tmp_path / "m" / "first40")), job_id="grpc-1"))
    assert again.state == trainer_pb2.JOB_STATE_SUCCEEDED
    with pytest.raises(grpc.RpcError) as e:
        stub.SubmitJob(trainer_pb2.SubmitJobRequest(spec_json=job_spec(synth, seed=9), job_id="grpc-1"))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_bad_requests_get_clear_status_codes(served, synth, tmp_path):
    stub, _, registry, _ = served
    cases = [
        ("{not json", grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
        (job_spec(synth, batch_sise=3), grpc.StatusCode.INVALID_ARGUMENT, "batch_sise"),
        (job_spec(synth, manifest=str(tmp_path / "nope")), grpc.StatusCode.NOT_FOUND, "no manifest"),
        (job_spec(synth, model="no-such-model"), grpc.StatusCode.NOT_FOUND, "unknown model"),
    ]
    for spec_json, code, text in cases:
        with pytest.raises(grpc.RpcError) as e:
            stub.SubmitJob(trainer_pb2.SubmitJobRequest(spec_json=spec_json))
        assert e.value.code() == code and text in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.GetJob(trainer_pb2.GetJobRequest(job_id="missing"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert registry.get_sample_value("clipaudit_trainer_rejected_total", {"reason": "InvalidInput"}) == 2


def test_a_job_that_fails_while_running_reports_why(served, synth, tmp_path):
    stub, _, _, _ = served
    write_manifest(tmp_path / "ghosts", ["ghost-1", "ghost-2"], rule="test")
    stub.SubmitJob(trainer_pb2.SubmitJobRequest(spec_json=job_spec(synth, manifest=str(tmp_path / "ghosts")),
                                                job_id="ghosts"))
    last = list(stub.WatchJob(trainer_pb2.GetJobRequest(job_id="ghosts"), timeout=120))[-1]
    assert last.state == trainer_pb2.JOB_STATE_FAILED and "none of the 2 manifest keys" in last.error
    assert stub.GetJob(trainer_pb2.GetJobRequest(job_id="ghosts")).error_type == "InvalidInput"


def test_queue_runs_one_job_at_a_time_and_cancels(served, synth):
    stub, _, _, root = served
    long_spec = job_spec(synth, samples=100_000 * 8)
    stub.SubmitJob(trainer_pb2.SubmitJobRequest(spec_json=long_spec, job_id="long"))
    queued = stub.SubmitJob(trainer_pb2.SubmitJobRequest(spec_json=job_spec(synth), job_id="next"))
    assert queued.state == trainer_pb2.JOB_STATE_QUEUED
    watch = stub.WatchJob(trainer_pb2.GetJobRequest(job_id="long"), timeout=300)
    for u in watch:
        if u.step >= 2:
            break
    assert stub.GetJob(trainer_pb2.GetJobRequest(job_id="next")).state == trainer_pb2.JOB_STATE_QUEUED
    cancelled = stub.CancelJob(trainer_pb2.GetJobRequest(job_id="next"))
    assert cancelled.state == trainer_pb2.JOB_STATE_CANCELLED
    stub.CancelJob(trainer_pb2.GetJobRequest(job_id="long"))
    last = list(stub.WatchJob(trainer_pb2.GetJobRequest(job_id="long"), timeout=120))[-1]
    assert last.state == trainer_pb2.JOB_STATE_CANCELLED and "cancelled at step" in last.error
    # the cancelled run left a checkpoint to resume from
    assert (root / "store" / "trainer" / "long" / "latest.json").is_file()
