"""The classifier through a real gRPC channel (health, reflection, status codes,
metrics) and through the CLI as a function."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from clipaudit.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from clipaudit.cli import main
from clipaudit.common.v1 import common_pb2
from clipaudit.rpc import ServiceMetrics, build_server
from services.classifier.grpc_api import SERVICE_NAME, registration
from services.classifier.handler import ClassifierHandler
from services.classifier.metrics import ClassifierMetrics
from tests.unit.classifier_synthetic import DIM, MODEL_ID, domain_vectors, write_labelled_set, write_test_sets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpc")
    write_labelled_set(d / "train", n=1200, noise=0.15, seed=0)
    write_test_sets(d / "test", n=1000, contamination=0.05, noise=0.15, seed=1)
    return d


@pytest.fixture
def served():
    registry = CollectorRegistry()
    handler = ClassifierHandler(metrics=ClassifierMetrics(registry))
    srv = build_server([registration(handler)], [SERVICE_NAME], metrics=ServiceMetrics(registry, "classifier"))
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    yield classifier_pb2_grpc.ClassifierStub(channel), channel, registry
    channel.close()
    srv.stop(0)


def test_train_classify_report_filter_over_grpc(served, data, tmp_path):
    stub, channel, registry = served
    h = health_pb2_grpc.HealthStub(channel)
    assert h.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status == health_pb2.HealthCheckResponse.SERVING
    emb = common_pb2.EmbeddingSetRef(uri=str(data / "train"))
    tr = stub.Train(classifier_pb2.TrainRequest(embeddings=emb, label_column="domain", classes=["natural", "rendition"],
                                                out=str(tmp_path / "m.json"), seed=0))
    assert not tr.bootstrapped and tr.classifier_id.startswith("domains-")
    assert json.loads(tr.metrics_json)["thresholds"]["strict"]["target_precision"] == 0.98

    x = domain_vectors(np.array([0, 1, 1]), np.random.default_rng(3))
    resp = stub.Classify(classifier_pb2.ClassifyRequest(model=str(tmp_path / "m.json"), dim=DIM, vectors=x.ravel(),
                                                        threshold="strict", embedding_model_id=MODEL_ID))
    assert list(resp.classes) == ["natural", "rendition"] and list(resp.labels) == ["natural", "rendition", "rendition"]
    assert list(resp.decisions) == [0, 1, 1] and len(resp.probabilities) == 6 and resp.classifier_id == tr.classifier_id
    assert registry.get_sample_value("clipaudit_classifier_vectors_total", {"operation": "classify"}) == 3
    assert registry.get_sample_value("clipaudit_classifier_decisions_total",
                                     {"domain": "rendition", "threshold": "strict"}) == 2

    rep = json.loads(stub.Report(classifier_pb2.ReportRequest(
        embeddings=common_pb2.EmbeddingSetRef(uri=str(data / "test")), model=str(tmp_path / "m.json"))).report_json)
    c = rep["by"]["split"]["test_sketch"]["strict"]["contamination"]
    assert c["ci95"][0] <= 0.05 <= c["ci95"][1]

    f = stub.Filter(classifier_pb2.FilterRequest(embeddings=common_pb2.EmbeddingSetRef(uri=str(data / "test")),
                                                 model=str(tmp_path / "m.json"), keep="natural",
                                                 out=str(tmp_path / "natural")))
    assert f.manifest.rule == "domain_filter" and 900 < f.manifest.count < 1100


def test_bad_requests_get_the_right_status_codes(served, data, tmp_path):
    stub, _, registry = served
    emb = common_pb2.EmbeddingSetRef(uri=str(data / "train"))
    stub.Train(classifier_pb2.TrainRequest(embeddings=emb, label_column="domain_group", out=str(tmp_path / "m.json")))
    model = str(tmp_path / "m.json")
    cases = [
        (classifier_pb2.ClassifyRequest(model=model, dim=DIM, vectors=[float("nan")] * DIM), grpc.StatusCode.INVALID_ARGUMENT),
        (classifier_pb2.ClassifyRequest(model=model, dim=DIM, vectors=[0.1] * (DIM + 1)), grpc.StatusCode.INVALID_ARGUMENT),
        (classifier_pb2.ClassifyRequest(model=model, dim=DIM, vectors=[1.0] * DIM, threshold="1.5"), grpc.StatusCode.INVALID_ARGUMENT),
        (classifier_pb2.ClassifyRequest(model=model, dim=DIM, vectors=[1.0] * DIM, embedding_model_id="ViT-B-32@x"),
         grpc.StatusCode.FAILED_PRECONDITION),
        (classifier_pb2.ClassifyRequest(model=str(tmp_path / "none.json"), dim=DIM, vectors=[1.0] * DIM), grpc.StatusCode.NOT_FOUND),
    ]
    for req, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(req)
        assert e.value.code() == code, (req, e.value.details())
    with pytest.raises(grpc.RpcError) as e:
        stub.Train(classifier_pb2.TrainRequest(embeddings=emb, label_column="domain_group", out=str(tmp_path / "x.json"),
                                               classes=["natural", "rendition"], default_precision=1.5))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:   # no labels and no text model configured
        stub.Train(classifier_pb2.TrainRequest(embeddings=emb, out=str(tmp_path / "x.json")))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # the service still answers
    ok = stub.Classify(classifier_pb2.ClassifyRequest(model=model, dim=DIM, vectors=np.eye(DIM)[0].tolist()))
    assert list(ok.labels) == ["natural"]
    assert registry.get_sample_value("clipaudit_grpc_errors_total", {"service": "classifier", "method": "Classify",
                                                                      "code": "INVALID_ARGUMENT"}) == 3


def test_cli_train_report_filter(data, tmp_path, capsys):
    model = str(tmp_path / "m.json")
    assert main(["domains", "train", "--emb", str(data / "train"), "--label-column", "domain",
                 "--classes", "natural,rendition", "--out", model, "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["labels_source"] == "labels:domain" and out["bootstrapped"] is False
    assert main(["domains", "report", "--emb", str(data / "test"), "--model", model, "--quiet",
                 "--out", str(tmp_path / "report.json")]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "report.json").read_text())["n"] == rep["n"] == 2000
    assert main(["domains", "filter", "--emb", str(data / "test"), "--model", model, "--keep", "rendition",
                 "--threshold", "strict", "--out", str(tmp_path / "clean"), "--quiet"]) == 0
    f = json.loads(capsys.readouterr().out)
    assert f["lineage"]["rule"] == "domain_filter" and (tmp_path / "clean.parquet").exists()
    # bad input: one line on stderr and the InvalidInput exit code
    assert main(["domains", "filter", "--emb", str(data / "test"), "--model", model, "--keep", "rendition",
                 "--threshold", "2", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(0, 1)" in err[0]
    assert main(["domains", "train", "--emb", str(data / "train"), "--out", str(tmp_path / "y.json"), "--quiet"]) == 2


@pytest.mark.slow
def test_cli_zero_shot_with_the_tiny_model_refuses_another_models_set(data, tmp_path, capsys):
    """The CLI's text embedder is a real open_clip model; the synthetic set was made by
    another model id, so bootstrapping is refused rather than mixing embedding spaces."""
    rc = main(["domains", "train", "--emb", str(data / "train"), "--model-spec", "clipaudit-tiny",
               "--out", str(tmp_path / "z.json"), "--quiet"])
    assert rc == 5
    assert "clipaudit-tiny@init0" in capsys.readouterr().err


def test_composition_root_consumes_only_with_a_model(data, tmp_path):
    from clipaudit.bus import TOPIC_EMBEDDINGS
    from clipaudit.config import StackSettings
    from clipaudit.rpc.runtime import Runtime
    from services.classifier.__main__ import build
    from services.classifier.settings import ClassifierSettings

    def parts(**kw):
        s = ClassifierSettings(bus="memory", store=str(tmp_path / "store"), register_prometheus=False, **kw)
        return build(Runtime("classifier", s, CollectorRegistry(), StackSettings()))

    idle = parts()
    assert idle.workers == [] and idle.service_names == [SERVICE_NAME]
    busy = parts(model=str(tmp_path / "m.json"), consumer_group="g1", consume_dataset_prefix="synth/")
    (w,) = busy.workers
    assert w.topics == [TOPIC_EMBEDDINGS] and w.group == "g1"
    assert w.handler.__self__.worker_dataset_prefix == "synth/"
