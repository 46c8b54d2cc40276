"""Composition root of the classifier service: `python -m services.classifier`.

Serves gRPC (Train/Classify/Report/Filter + health + reflection), /metrics, and —
when a model is configured (CLIPAUDIT_CLASSIFIER_MODEL) — a bus worker that labels
every shard announced on embeddings.v1 and announces the labels on labels.v1."""

from __future__ import annotations

import logging

from clipaudit.rpc.runtime import Runtime, ServiceParts, WorkerSpec, run_service
from services.classifier.settings import ClassifierSettings

log = logging.getLogger(__name__)


def build(rt: Runtime) -> ServiceParts:
    from clipaudit.bus import TOPIC_EMBEDDINGS
    from clipaudit.events.v1 import events_pb2
    from services.classifier.grpc_api import SERVICE_NAME, registration
    from services.classifier.handler import ClassifierHandler
    from services.classifier.metrics import ClassifierMetrics

    s: ClassifierSettings = rt.settings  # type: ignore[assignment]
    text = {}
    if s.text_model_spec:
        from services.classifier.cli import text_embedder

        text = text_embedder(s.text_model_spec, seed=s.text_model_seed)
    handler = ClassifierHandler(rt.store, rt.bus, ClassifierMetrics(rt.registry), worker_model=s.model or None,
                                worker_dataset_prefix=s.consume_dataset_prefix, **text)
    workers = []
    if s.model:
        workers.append(WorkerSpec([TOPIC_EMBEDDINGS], s.consumer_group, events_pb2.EmbeddingsWritten.FromString,
                                  handler.label_shard))
    else:
        log.info("no classifier model configured (CLIPAUDIT_CLASSIFIER_MODEL): not consuming %s", TOPIC_EMBEDDINGS)
    return ServiceParts([registration(handler)], [SERVICE_NAME], workers)


def main() -> None:
    run_service("classifier", ClassifierSettings(), build)


if __name__ == "__main__":
    main()
