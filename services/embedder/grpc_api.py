"""Thin gRPC servicer: proto -> handler -> proto. No try/except: the server's
interceptor maps clipaudit errors to status codes."""

from __future__ import annotations

from clipaudit.embedder.v1 import embedder_pb2, embedder_pb2_grpc

SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    def __init__(self, handler):
        self.handler = handler

    def EmbedImages(self, request_iterator, context):
        pairs = ((r.key, r.image) for r in request_iterator)
        for key, vector, error in self.handler.embed_image_stream(pairs):
            if vector is None:
                yield embedder_pb2.EmbedImageResponse(key=key, error=error)
            else:
                yield embedder_pb2.EmbedImageResponse(key=key, embedding=vector.tolist())

    def EmbedTexts(self, request, context):
        z = self.handler.embed_texts(list(request.texts))
        return embedder_pb2.EmbedTextsResponse(dim=z.shape[1], embeddings=z.ravel().tolist(),
                                               model_id=self.handler.loaded.model_id)

    def GetModelInfo(self, request, context):
        return embedder_pb2.ModelInfo(**self.handler.model_info())


def registration(handler) -> tuple:
    """The ``(add_to_server, servicer)`` pair for :func:`clipaudit.rpc.build_server`."""
    return embedder_pb2_grpc.add_EmbedderServicer_to_server, EmbedderServicer(handler)
