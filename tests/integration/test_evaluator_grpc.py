"""The evaluator's gRPC API through a real channel, writing reports to the real MinIO."""

from __future__ import annotations

import json

import grpc
import pytest
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from clipaudit.synth import generate

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate("tiny", str(out), seed=0, progress=False)
    return out


@pytest.fixture
def server(stack):
    from clipaudit.rpc import ServiceMetrics, build_server
    from services.evaluator.grpc_api import SERVICE_NAME, registration
    from services.evaluator.handler import Evaluator
    from services.evaluator.metrics import EvaluatorMetrics

    reg = CollectorRegistry()
    srv = build_server([registration(Evaluator(metrics=EvaluatorMetrics(reg)))], [SERVICE_NAME], port=0,
                       metrics=ServiceMetrics(reg, "evaluator"))
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    yield channel, reg
    channel.close()
    srv.stop()


def test_evaluate_streams_progress_and_writes_report_to_s3(server, collection, stack, unique):
    from clipaudit.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
    from clipaudit.store import open_store
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel, reg = server
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="clipaudit.evaluator.v1.Evaluator"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = evaluator_pb2_grpc.EvaluatorStub(channel)
    out = f"s3://{stack.s3_bucket}/tests/{unique}/report"
    spec = {"templates": ["a photo of a {c}."], "batch_size": 16}
    msgs = list(stub.Evaluate(evaluator_pb2.EvaluateRequest(
        checkpoint="clipaudit-tiny", test_sets=[str(collection / "test_natural"), str(collection / "test_counter")],
        spec_json=json.dumps(spec), out=out), timeout=600))
    assert len(msgs) > 3
    stages = [m.progress.stage for m in msgs]
    assert "encode" in stages and stages[-1] == "done"
    last = msgs[-1]
    assert last.report.uri == out + "/report.json" and last.report.rows == 80
    store = open_store(out, settings=stack)
    rep = json.loads(store.get_bytes("report.json"))
    assert {s["name"]: s["overall"]["top1"] for s in rep["test_sets"]} == json.loads(last.top1_json)
    assert store.exists("report.html") and store.exists("predictions.parquet")
    import hashlib

    assert hashlib.sha256(store.get_bytes("report.json")).hexdigest() == last.report.sha256

    resp = stub.Compare(evaluator_pb2.CompareRequest(reports=[last.report.uri, last.report.uri], out=out + "/cmp",
                                                     space=evaluator_pb2.FIT_SPACE_LINEAR))
    rows = json.loads(resp.table_json)
    assert len([r for r in rows if r["test_set"] == "test_natural"]) == 2
    assert store.exists("cmp/comparison.html")
    assert reg.get_sample_value("clipaudit_grpc_requests_total",
                                {"service": "evaluator", "method": "Evaluate", "code": "OK"}) == 1


def test_bad_requests_map_to_status_codes(server, collection, tmp_path):
    from clipaudit.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc

    channel, reg = server
    stub = evaluator_pb2_grpc.EvaluatorStub(channel)
    cases = [
        (dict(checkpoint="clipaudit-tiny", test_sets=[str(tmp_path / "missing")], out=str(tmp_path / "o")),
         grpc.StatusCode.NOT_FOUND),
        (dict(checkpoint="clipaudit-tiny", test_sets=[str(collection / "test_natural")], out=str(tmp_path / "o"),
              spec_json=json.dumps({"templates": ["no placeholder here"]})), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(checkpoint="no-such-arch", test_sets=[str(collection / "test_natural")], out=str(tmp_path / "o")),
         grpc.StatusCode.NOT_FOUND),
        (dict(checkpoint="clipaudit-tiny", test_sets=[str(collection / "test_natural")], out=""),
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(checkpoint="clipaudit-tiny", test_sets=[str(collection / "test_natural")], out=str(tmp_path / "o"),
              spec_json="{not json"), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for req, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Evaluate(evaluator_pb2.EvaluateRequest(**req), timeout=300))
        assert e.value.code() == code, (req, e.value.details())
        assert "\n" not in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.Compare(evaluator_pb2.CompareRequest(reports=[str(tmp_path / "nope.json")], out=str(tmp_path / "c")))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert reg.get_sample_value("clipaudit_evaluator_rejected_total", {"error": "InvalidInput"}) == 3
