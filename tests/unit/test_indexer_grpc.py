"""The Indexer gRPC API through a real channel: Search (vector, key, text through a
fake Embedder served over gRPC), NearestSimilarity streaming, Prune, BuildIndex,
status codes for bad input, health, and the metrics recorded."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from clipaudit.common.v1 import common_pb2
from clipaudit.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from clipaudit.indexer.v1 import indexer_pb2, indexer_pb2_grpc
from clipaudit.manifests import read_manifest
from clipaudit.rpc import ServiceMetrics, build_server
from clipaudit.store import open_store
from services.indexer.embedder_client import EmbedderTextClient
from services.indexer.grpc_api import SERVICE_NAME, IndexerServicer
from services.indexer.handler import IndexerHandler
from services.indexer.metrics import IndexerMetrics
from tests.unit.test_indexer_handler import D, write_set
from tests.unit.test_indexer_logic import clustered, matched_oracle, oracle_topk


class FakeEmbedder(embedder_pb2_grpc.EmbedderServicer):
    """Embeds a caption as a fixed vector per text (enough to check the plumbing)."""

    def __init__(self, table, model_id="tiny-m"):
        self.table, self.model_id = table, model_id

    def GetModelInfo(self, request, context):
        return embedder_pb2.ModelInfo(model_id=self.model_id, dim=D)

    def EmbedTexts(self, request, context):
        return embedder_pb2.EmbedTextsResponse(dim=D, embeddings=np.concatenate([self.table[t] for t in request.texts]))


@pytest.fixture
def served(tmp_path):
    rng = np.random.default_rng(1)
    vec = {"train": clustered(rng, 500, D, 6), "ref": clustered(rng, 200, D, 6), "test": clustered(rng, 25, D, 6)}
    sets = {k: write_set(tmp_path / k, v, k + "-") for k, v in vec.items()}
    vec = {k: v.astype(np.float16).astype(np.float32) for k, v in vec.items()}
    emb = build_server([(embedder_pb2_grpc.add_EmbedderServicer_to_server,
                         FakeEmbedder({"a dog": vec["test"][3]}))], ["clipaudit.embedder.v1.Embedder"])
    registry = CollectorRegistry()
    handler = IndexerHandler(open_store(tmp_path / "store"), metrics=IndexerMetrics(registry),
                             embed_texts=EmbedderTextClient(f"127.0.0.1:{emb.port}"))
    srv = build_server([(indexer_pb2_grpc.add_IndexerServicer_to_server, IndexerServicer(handler))], [SERVICE_NAME],
                       metrics=ServiceMetrics(registry, "indexer"))
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    yield indexer_pb2_grpc.IndexerStub(channel), channel, registry, sets, vec, tmp_path
    channel.close()
    srv.stop(0)
    emb.stop(0)


def ref(uri):
    return common_pb2.EmbeddingSetRef(uri=uri)


def test_build_and_search_through_channel(served):
    stub, channel, registry, sets, vec, tmp = served
    assert health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status == health_pb2.HealthCheckResponse.SERVING
    r = stub.BuildIndex(indexer_pb2.BuildIndexRequest(vectors=ref(sets["train"][0]), name="t", shards=2))
    assert (r.index_type, r.count, r.shards, r.model_id) == ("Flat", 500, 2, "tiny-m")
    q = vec["test"][:4] / np.linalg.norm(vec["test"][:4], axis=1, keepdims=True)
    resp = stub.Search(indexer_pb2.SearchRequest(index="t", k=3, dim=D, vectors=q.ravel()))
    osims, opos = oracle_topk(q, vec["train"], 3)
    assert [list(n.keys) for n in resp.results] == [list(sets["train"][1][p]) for p in opos]
    np.testing.assert_allclose([list(n.similarities) for n in resp.results], osims, atol=1e-5)
    by_key = stub.Search(indexer_pb2.SearchRequest(index="t", k=1, keys=[sets["train"][1][42]]))
    assert by_key.results[0].keys == [sets["train"][1][42]]
    by_text = stub.Search(indexer_pb2.SearchRequest(index="t", k=1, text="a dog"))
    assert by_text.results[0].keys[0] == sets["train"][1][oracle_topk(vec["test"][3:4], vec["train"], 1)[1][0, 0]]
    assert registry.get_sample_value("clipaudit_indexer_queries_total", {"kind": "text"}) == 1
    assert registry.get_sample_value("clipaudit_grpc_requests_total",
                                     {"service": "indexer", "method": "Search", "code": "OK"}) == 3


@pytest.mark.parametrize("request_kwargs,code", [
    (dict(index="t", k=1, dim=D, vectors=[float("nan")] * D), grpc.StatusCode.INVALID_ARGUMENT),
    (dict(index="t", k=1, dim=D + 1, vectors=[0.1] * (D + 1)), grpc.StatusCode.INVALID_ARGUMENT),
    (dict(index="t", k=1, dim=D, vectors=[0.1] * (D + 3)), grpc.StatusCode.INVALID_ARGUMENT),
    (dict(index="t", k=1, keys=["no-such-key"]), grpc.StatusCode.NOT_FOUND),
    (dict(index="t", k=10_000, dim=D, vectors=[0.1] * D), grpc.StatusCode.INVALID_ARGUMENT),
    (dict(index="absent", k=1, dim=D, vectors=[0.1] * D), grpc.StatusCode.NOT_FOUND),
    (dict(index="t", k=1), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_search_bad_input_status_codes(served, request_kwargs, code):
    stub, channel, registry, sets, vec, tmp = served
    stub.BuildIndex(indexer_pb2.BuildIndexRequest(vectors=ref(sets["train"][0]), name="t"))
    with pytest.raises(grpc.RpcError) as e:
        stub.Search(indexer_pb2.SearchRequest(**request_kwargs))
    assert e.value.code() == code
    # the server is still serving
    assert stub.Search(indexer_pb2.SearchRequest(index="t", k=1, dim=D, vectors=[0.1] * D)).results


def test_nearest_similarity_streams_every_query(served):
    stub, channel, registry, sets, vec, tmp = served
    results = list(stub.NearestSimilarity(indexer_pb2.NearestSimilarityRequest(
        query=ref(sets["test"][0]), reference=ref(sets["train"][0]), k=2)))
    osims, opos = oracle_topk(vec["test"], vec["train"], 2)
    assert [r.query_key for r in results] == list(sets["test"][1])
    assert [list(r.neighbours.keys) for r in results] == [list(sets["train"][1][p]) for p in opos]
    np.testing.assert_allclose([list(r.neighbours.similarities) for r in results], osims, atol=1e-6)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.NearestSimilarity(indexer_pb2.NearestSimilarityRequest(
            query=ref(str(tmp / "missing")), reference=ref(sets["train"][0]))))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_prune_rpc_matched_and_random(served):
    stub, channel, registry, sets, vec, tmp = served
    r = stub.Prune(indexer_pb2.PruneRequest(rule=indexer_pb2.PRUNE_RULE_MATCHED, train=ref(sets["train"][0]),
                                            tests=[ref(sets["test"][0])], reference=ref(sets["ref"][0]),
                                            out=str(tmp / "matched")))
    _, removed = matched_oracle(vec["train"], [vec["test"]], vec["ref"])
    assert [m.uri.rsplit("/", 1)[-1] for m in r.manifests] == ["test.parquet", "combined.parquet"]
    assert list(r.removed) == [removed.sum(), removed.sum()]
    assert read_manifest(r.manifests[1].uri).keys == sorted(sets["train"][1][~removed[:, 0]])
    r = stub.Prune(indexer_pb2.PruneRequest(rule=indexer_pb2.PRUNE_RULE_RANDOM, train=ref(sets["train"][0]),
                                            keep=10, seed=1, out=str(tmp / "rand")))
    assert r.manifests[0].count == 10
    with pytest.raises(grpc.RpcError) as e:
        stub.Prune(indexer_pb2.PruneRequest(train=ref(sets["train"][0]), out=str(tmp / "x")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
