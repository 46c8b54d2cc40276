"""Thin gRPC servicer: proto -> handler -> proto. No try/except: the server's
interceptor maps clipaudit errors to status codes."""

from __future__ import annotations

import json

import numpy as np

from clipaudit.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from clipaudit.common.v1 import common_pb2
from clipaudit.errors import InvalidInput
from services.classifier.handler import ClassifierHandler

HEADS = {classifier_pb2.HEAD_KIND_UNSPECIFIED: "linear", classifier_pb2.HEAD_KIND_LINEAR: "linear",
         classifier_pb2.HEAD_KIND_MLP: "mlp"}
SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name


def request_vectors(request: classifier_pb2.ClassifyRequest) -> np.ndarray:
    v = np.asarray(request.vectors, dtype=np.float32)
    if request.dim <= 0 or v.size % request.dim:
        raise InvalidInput(f"{v.size} floats do not form rows of dim {request.dim}")
    return v.reshape(-1, request.dim)


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, handler: ClassifierHandler):
        self.handler = handler

    def Train(self, request, context):
        r = self.handler.train(request.embeddings.uri, out=request.out, label_column=request.label_column or None,
                               classes=list(request.classes) or ["natural", "rendition"], seed=request.seed,
                               head=HEADS.get(request.head, "linear"),
                               default_precision=request.default_precision or 0.95,
                               strict_precision=request.strict_precision or 0.98)
        s = r.summary()
        return classifier_pb2.TrainResponse(model=common_pb2.ObjectRef(uri=r.uri), metrics_json=json.dumps(s),
                                            bootstrapped=s["bootstrapped"], classifier_id=s["classifier_id"],
                                            warnings=s["warnings"])

    def Classify(self, request, context):
        r = self.handler.classify(request.model, request_vectors(request), threshold=request.threshold or "default",
                                  embedding_model_id=request.embedding_model_id)
        return classifier_pb2.ClassifyResponse(
            classes=r.classes, probabilities=r.scores.ravel(), decisions=r.decisions, labels=r.labels(),
            thresholds=r.thresholds, classifier_id=self.handler.load_model(request.model).classifier_id)

    def Report(self, request, context):
        report = self.handler.report(request.embeddings.uri, request.model, nominal=request.nominal or None,
                                     columns=list(request.columns) or None, out=request.out or None)
        return classifier_pb2.ReportResponse(report_json=json.dumps(report, sort_keys=True))

    def Filter(self, request, context):
        m = self.handler.filter(request.embeddings.uri, request.model, keep=request.keep,
                                threshold=request.threshold or "strict", out=request.out)
        return classifier_pb2.FilterResponse(manifest=common_pb2.ManifestRef(
            uri=m.uri, keys_sha256=m.lineage.keys_sha256, count=len(m), rule=m.lineage.rule))


def registration(handler: ClassifierHandler):
    return (classifier_pb2_grpc.add_ClassifierServicer_to_server, ClassifierServicer(handler))
