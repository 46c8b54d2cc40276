"""Composition root of the evaluator service: `python -m services.evaluator`.

Serves gRPC (Evaluate, Compare + health/reflection), /metrics, and a Kafka worker that
turns CheckpointWritten events on checkpoints.v1 into reports (ReportWritten on reports.v1).
"""

from __future__ import annotations

from clipaudit.rpc.runtime import Runtime, ServiceParts, WorkerSpec, run_service
from services.evaluator.settings import EvaluatorSettings


def build(rt: Runtime) -> ServiceParts:
    from clipaudit.events.v1 import events_pb2
    from services.evaluator.grpc_api import SERVICE_NAME, registration
    from services.evaluator.handler import Evaluator
    from services.evaluator.metrics import EvaluatorMetrics

    settings: EvaluatorSettings = rt.settings  # type: ignore[assignment]
    metrics = EvaluatorMetrics(rt.registry)
    handler = Evaluator(publisher=rt.bus if settings.consume else None, metrics=metrics,
                        reports_prefix=settings.reports_prefix, device=settings.device, out_store=rt.store,
                        reports_topic=settings.reports_topic)
    workers = [WorkerSpec([settings.checkpoints_topic], settings.consumer_group, events_pb2.CheckpointWritten.FromString,
                          handler.on_checkpoint)]
    return ServiceParts(registrations=[registration(handler)], service_names=[SERVICE_NAME], workers=workers)


def main() -> None:
    run_service("evaluator", EvaluatorSettings(), build)


if __name__ == "__main__":
    main()
