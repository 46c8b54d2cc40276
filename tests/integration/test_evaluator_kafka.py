"""The evaluator service on the real stack: a CheckpointWritten event on Kafka (checkpoint
and test set in MinIO) becomes a report in MinIO and a ReportWritten event; a hopeless
event goes to the dead-letter topic and does not block the next one."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

pytestmark = pytest.mark.integration


def _wait_for(consumer, predicate, timeout_s=420):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for m in consumer.poll(timeout_s=1.0):
            hit = predicate(m)
            if hit is not None:
                return hit
    raise AssertionError("no matching message in time")


def test_checkpoint_event_produces_report(stack, kafka_bus, unique, tmp_path):
    import torch

    from clipaudit.common.v1 import common_pb2
    from clipaudit.events.v1 import events_pb2
    from clipaudit.models import load_clip
    from clipaudit.rpc.runtime import run_service
    from clipaudit.store import open_store
    from clipaudit.synth import generate
    from services.evaluator.__main__ import build
    from services.evaluator.settings import EvaluatorSettings

    prefix = f"s3://{stack.s3_bucket}/tests/{unique}"
    generate("tiny", f"{prefix}/synth", seed=0, progress=False)
    buf = io.BytesIO()
    torch.save({"model": load_clip("clipaudit-tiny", seed=5).model.state_dict(), "arch": "clipaudit-tiny"}, buf)
    open_store(prefix, settings=stack).put_bytes("ckpt/final.pt", buf.getvalue())

    topic_in, topic_out = f"checkpoints.v1.t{unique}", f"reports.v1.t{unique}"
    kafka_bus.ensure_topics([topic_in, topic_out, topic_in + ".dlq"], partitions=1)
    settings = EvaluatorSettings(grpc_port=0, metrics_port=0, bus=f"kafka://{stack.kafka_bootstrap}",
                                 store=prefix, consumer_group=f"evaluator-{unique}", checkpoints_topic=topic_in,
                                 reports_topic=topic_out, register_prometheus=False, max_attempts=1)
    stop = threading.Event()
    ready = threading.Event()
    t = threading.Thread(target=run_service, args=("evaluator", settings, build),
                         kwargs={"stop": stop, "ready": lambda *_: ready.set()}, daemon=True)
    t.start()
    try:
        assert ready.wait(300), "service did not start"
        ckpt = common_pb2.ObjectRef(uri=f"{prefix}/ckpt/final.pt")
        bad = events_pb2.CheckpointWritten(job_id=f"bad-{unique}", checkpoint=ckpt, step=1, final=False,
                                           evaluations_json=json.dumps([{"test_sets": [f"{prefix}/nowhere"]}]))
        good = events_pb2.CheckpointWritten(
            job_id=f"job-{unique}", checkpoint=ckpt, step=2, final=True, model_id="x",
            evaluations_json=json.dumps([{"name": "zs", "test_sets": [f"{prefix}/synth/test_sketch"],
                                          "spec": {"templates": ["a sketch of a {c}."]}}]))
        kafka_bus.publish(topic_in, bad.job_id, bad)
        kafka_bus.publish(topic_in, good.job_id, good)
        kafka_bus.flush()

        reports = kafka_bus.consumer([topic_out], f"t-{unique}")
        msg = _wait_for(reports, lambda m: events_pb2.ReportWritten.FromString(m.value)
                        if events_pb2.ReportWritten.FromString(m.value).job_id == good.job_id else None)
        assert msg.report.uri == f"{prefix}/reports/{good.job_id}/step-2/zs/report.json"
        assert msg.report.rows == 40
        rep = json.loads(open_store(f"{prefix}/reports/{good.job_id}/step-2/zs", settings=stack).get_bytes("report.json"))
        assert rep["model"]["model_id"].startswith("clipaudit-tiny@") and rep["test_sets"][0]["n"] == 40
        assert rep["test_sets"][0]["n_templates"] == 1

        reports.close()
        dlq = kafka_bus.consumer([topic_in + ".dlq"], f"d-{unique}")
        dead = _wait_for(dlq, lambda m: events_pb2.DeadLetter.FromString(m.value), timeout_s=60)
        assert events_pb2.CheckpointWritten.FromString(dead.value).job_id == bad.job_id
        assert "does not exist" in dead.error or "empty" in dead.error
        dlq.close()
    finally:
        stop.set()
        t.join(timeout=30)
