"""Thin gRPC servicer: proto -> handler -> proto. No try/except: the server's
interceptor maps clipaudit errors to status codes."""

from __future__ import annotations

import json
import queue
import threading

from clipaudit.common.v1 import common_pb2
from clipaudit.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc

SERVICE_NAME = evaluator_pb2.DESCRIPTOR.services_by_name["Evaluator"].full_name
_SPACES = {evaluator_pb2.FIT_SPACE_UNSPECIFIED: "logit", evaluator_pb2.FIT_SPACE_LOGIT: "logit",
           evaluator_pb2.FIT_SPACE_LINEAR: "linear"}


def _ref(r) -> common_pb2.ObjectRef:
    return common_pb2.ObjectRef(uri=r.uri, sha256=r.sha256, rows=r.rows, size_bytes=r.size_bytes)


class EvaluatorServicer(evaluator_pb2_grpc.EvaluatorServicer):
    def __init__(self, handler):
        self.handler = handler

    def Evaluate(self, request, context):
        req = {"checkpoint": request.checkpoint, "test_sets": list(request.test_sets), "out": request.out,
               "spec": request.spec_json or None}
        events: queue.Queue = queue.Queue()

        def progress(stage, done, total, message):
            events.put(evaluator_pb2.EvaluateProgress(progress=common_pb2.Progress(
                stage=stage, done=done, total=total, message=message)))

        outcome: dict = {}

        def run():
            try:
                outcome["ref"] = self.handler.evaluate(req, progress=progress, cancelled=lambda: not context.is_active())
            except BaseException as e:  # noqa: BLE001 - re-raised below in the RPC thread
                outcome["error"] = e
            events.put(None)

        threading.Thread(target=run, name="evaluate", daemon=True).start()
        while (event := events.get()) is not None:
            yield event
        if "error" in outcome:
            raise outcome["error"]
        ref = outcome["ref"]
        yield evaluator_pb2.EvaluateProgress(progress=common_pb2.Progress(stage="done", done=1, total=1),
                                             report=_ref(ref), html_uri=ref.html_uri, top1_json=json.dumps(ref.summary))

    def Compare(self, request, context):
        ref, comparison = self.handler.compare(list(request.reports), request.out, space=_SPACES[request.space])
        return evaluator_pb2.CompareResponse(report=_ref(ref), table_json=json.dumps(comparison["rows"]),
                                             html_uri=ref.html_uri)


def registration(handler) -> tuple:
    """The ``(add_to_server, servicer)`` pair for :func:`clipaudit.rpc.build_server`."""
    return evaluator_pb2_grpc.add_EvaluatorServicer_to_server, EvaluatorServicer(handler)
