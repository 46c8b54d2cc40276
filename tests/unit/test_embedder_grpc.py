"""The embedder's gRPC API through a real channel: streaming images (bad ones answered
with an error, not a failed call), texts, model info, health, status codes, metrics."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from clipaudit.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from tests.unit.test_embedder_logic import image_bytes

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def served():
    from clipaudit.models import load_clip
    from clipaudit.rpc import ServiceMetrics, build_server
    from services.embedder.grpc_api import SERVICE_NAME, registration
    from services.embedder.handler import EmbedderHandler
    from services.embedder.metrics import EmbedderMetrics

    registry = CollectorRegistry()
    handler = EmbedderHandler(load_clip("clipaudit-tiny"), metrics=EmbedderMetrics(registry), batch_size=4,
                              workers=1, worker_kind="thread")
    server = build_server([registration(handler)], [SERVICE_NAME], port=0,
                          metrics=ServiceMetrics(registry, "embedder"))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield embedder_pb2_grpc.EmbedderStub(channel), channel, handler, registry
    channel.close()
    server.stop(0)


def test_model_info(served):
    stub, _, handler, _ = served
    info = stub.GetModelInfo(embedder_pb2.GetModelInfoRequest())
    assert info.model_id == handler.loaded.model_id == "clipaudit-tiny@init0"
    assert (info.architecture, info.dim, info.image_size, info.device) == ("clipaudit-tiny", 64, 32, "cpu")
    assert info.batch_size == 4 and info.dtype == "float16"


def test_embed_images_streams_one_answer_per_image_in_order(served):
    from services.embedder.logic import embed_images

    stub, _, handler, registry = served
    imgs = [image_bytes(i) for i in range(9)]
    imgs[4] = b"garbage"
    reqs = [embedder_pb2.EmbedImageRequest(key=f"k{i}", image=b) for i, b in enumerate(imgs)]
    before = registry.get_sample_value("clipaudit_embedder_decode_errors_total", {"kind": "corrupt"}) or 0
    out = list(stub.EmbedImages(iter(reqs), timeout=60))
    assert [r.key for r in out] == [f"k{i}" for i in range(9)]
    assert out[4].error and not out[4].embedding
    good = [i for i in range(9) if i != 4]
    got = np.array([out[i].embedding for i in good], dtype=np.float32)
    ref = embed_images(handler.loaded, [imgs[i] for i in good]).vectors
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert registry.get_sample_value("clipaudit_embedder_decode_errors_total", {"kind": "corrupt"}) == before + 1
    assert registry.get_sample_value("clipaudit_grpc_requests_total",
                                     {"service": "embedder", "method": "EmbedImages", "code": "OK"}) >= 1


def test_embed_images_answers_a_client_that_waits_for_each_answer(served):
    """Micro-batching must not wait for a full batch: send one, read one, repeat."""
    stub, _, _, _ = served
    outbox: list = []
    ready = threading.Condition()

    def requests():
        for i in range(3):
            yield embedder_pb2.EmbedImageRequest(key=f"w{i}", image=image_bytes(i))
            with ready:   # wait for the answer to this image before sending the next
                assert ready.wait_for(lambda: len(outbox) > i, timeout=30), "server waited for a full batch"

    for r in stub.EmbedImages(requests(), timeout=60):
        with ready:
            outbox.append(r.key)
            ready.notify_all()
    assert outbox == ["w0", "w1", "w2"]


def test_embed_texts_and_empty_request_is_invalid_argument(served):
    from services.embedder.logic import embed_texts

    stub, _, handler, _ = served
    r = stub.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=["a photo of a star", "a sketch of a cat"]))
    z = np.array(r.embeddings, dtype=np.float32).reshape(-1, r.dim)
    assert z.shape == (2, 64) and r.model_id == handler.loaded.model_id
    np.testing.assert_allclose(z, embed_texts(handler.loaded, ["a photo of a star", "a sketch of a cat"]), atol=1e-5)
    with pytest.raises(grpc.RpcError) as e:
        stub.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=[]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no texts" in e.value.details()


def test_health_reports_the_embedder_serving(served):
    _, channel, _, _ = served
    h = health_pb2_grpc.HealthStub(channel)
    r = h.Check(health_pb2.HealthCheckRequest(service="clipaudit.embedder.v1.Embedder"))
    assert r.status == health_pb2.HealthCheckResponse.SERVING
