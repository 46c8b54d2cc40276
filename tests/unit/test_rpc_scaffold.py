"""The gRPC scaffold through a real channel: health, reflection, error mapping,
metrics recorded after the handler with the status it ended with, /metrics HTTP."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from clipaudit.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from clipaudit.errors import InvalidInput, NotFound
from clipaudit.rpc import ServiceMetrics, build_server, start_metrics_http


class FakeEmbedder(embedder_pb2_grpc.EmbedderServicer):
    def GetModelInfo(self, request, context):
        return embedder_pb2.ModelInfo(model_id="m", dim=4)

    def EmbedTexts(self, request, context):
        if not request.texts:
            raise InvalidInput("no texts given")
        if request.texts[0] == "missing":
            raise NotFound("checkpoint /x.pt does not exist")
        raise ZeroDivisionError("boom")

    def EmbedImages(self, request_iterator, context):
        for i, req in enumerate(request_iterator):
            if req.key == "bad":
                raise InvalidInput(f"image {req.key}: cannot decode")
            yield embedder_pb2.EmbedImageResponse(key=req.key, embedding=[1.0])


@pytest.fixture
def served():
    registry = CollectorRegistry()
    name = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
    srv = build_server([(embedder_pb2_grpc.add_EmbedderServicer_to_server, FakeEmbedder())], [name],
                       metrics=ServiceMetrics(registry, "embedder"))
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    yield channel, registry, name
    channel.close()
    srv.stop(0)


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def test_health_and_reflection(served):
    channel, _, name = served
    h = health_pb2_grpc.HealthStub(channel)
    assert h.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
    r = reflection_pb2_grpc.ServerReflectionStub(channel)
    resp = next(r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert name in names and "grpc.health.v1.Health" in names


def test_error_mapping_and_metrics(served):
    channel, registry, _ = served
    stub = embedder_pb2_grpc.EmbedderStub(channel)
    assert stub.GetModelInfo(embedder_pb2.GetModelInfoRequest()).dim == 4
    cases = [([], grpc.StatusCode.INVALID_ARGUMENT, "no texts"), (["missing"], grpc.StatusCode.NOT_FOUND, "/x.pt"),
             (["x"], grpc.StatusCode.INTERNAL, "ZeroDivisionError")]
    for texts, code, text in cases:
        with pytest.raises(grpc.RpcError) as e:
            stub.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=texts))
        assert e.value.code() == code and text in e.value.details()
    assert sample(registry, "clipaudit_grpc_requests_total", service="embedder", method="GetModelInfo", code="OK") == 1
    assert sample(registry, "clipaudit_grpc_errors_total", service="embedder", method="EmbedTexts", code="NOT_FOUND") == 1
    assert sample(registry, "clipaudit_grpc_request_seconds_count", service="embedder", method="EmbedTexts") == 3


def test_streaming_error_after_partial_results(served):
    channel, registry, _ = served
    stub = embedder_pb2_grpc.EmbedderStub(channel)
    reqs = [embedder_pb2.EmbedImageRequest(key=k) for k in ("a", "b", "bad", "c")]
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for r in stub.EmbedImages(iter(reqs)):
            got.append(r.key)
    assert got == ["a", "b"] and e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sample(registry, "clipaudit_grpc_errors_total", service="embedder", method="EmbedImages",
                  code="INVALID_ARGUMENT") == 1


def test_metrics_endpoint(served):
    _, registry, _ = served
    port = start_metrics_http(registry)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "clipaudit_grpc_requests_total" in body
