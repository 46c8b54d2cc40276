"""The text-embedding port of the indexer, served by the embedder over gRPC.

``EmbedderTextClient(address)`` is a callable ``texts -> (n, dim) float32`` for
:class:`services.indexer.handler.IndexerHandler` (search by text). In embedded mode
any callable with that signature is injected instead.
"""

from __future__ import annotations

import grpc
import numpy as np

from clipaudit.errors import Unavailable


class EmbedderTextClient:
    def __init__(self, address: str, timeout_s: float = 30.0):
        from clipaudit.embedder.v1 import embedder_pb2, embedder_pb2_grpc

        self._pb2 = embedder_pb2
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(address)
        self.stub = embedder_pb2_grpc.EmbedderStub(self.channel)

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(f"embedder at {self.address}: {e.details()}") from e
            raise

    def model_id(self) -> str:
        return self._call(self.stub.GetModelInfo, self._pb2.GetModelInfoRequest()).model_id

    def __call__(self, texts: list[str]) -> np.ndarray:
        resp = self._call(self.stub.EmbedTexts, self._pb2.EmbedTextsRequest(texts=texts))
        return np.asarray(resp.embeddings, dtype=np.float32).reshape(len(texts), resp.dim)

    def close(self) -> None:
        self.channel.close()
