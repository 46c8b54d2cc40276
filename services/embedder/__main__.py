"""Composition root of the embedder service: `python -m services.embedder`.

Loads the model once, then serves gRPC (EmbedImages, EmbedTexts, GetModelInfo) and,
with ``consume``, runs the Kafka worker: ``shards.v1`` -> embedding parts in the
store -> ``embeddings.v1``. Several processes in one consumer group split the
topic's partitions (one shard per message).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see services/embedder/cli.py

from clipaudit.rpc.runtime import Runtime, ServiceParts, WorkerSpec, run_service  # noqa: E402
from services.embedder.settings import EmbedderSettings  # noqa: E402


def build(rt: Runtime) -> ServiceParts:
    from clipaudit.events.v1 import events_pb2
    from clipaudit.models import load_clip
    from clipaudit.store import open_store
    from services.embedder.grpc_api import SERVICE_NAME, registration
    from services.embedder.handler import EmbedderHandler
    from services.embedder.metrics import EmbedderMetrics

    s: EmbedderSettings = rt.settings  # type: ignore[assignment]

    metrics = EmbedderMetrics(rt.registry)   # one registry entry, shared by every loaded model

    def make_handler(spec: str) -> EmbedderHandler:
        return EmbedderHandler(
            load_clip(spec, device=s.device, seed=s.seed),
            open_store=lambda loc: open_store(loc, settings=rt.stack),
            metrics=metrics,
            publisher=rt.bus if s.consume else None,
            default_out=rt.store.uri(),
            batch_size=s.batch_size,
            workers=s.reader_threads,
            worker_kind="thread",       # this process runs gRPC and Kafka threads: never fork it
            dtype=s.dtype,
            precision=s.precision,
            text=s.text,
            embeddings_topic=s.embeddings_topic,
        )

    handler = make_handler(s.model)
    by_model = ModelRouter(handler, s.model, make_handler)
    workers = [WorkerSpec([s.shards_topic], s.consumer_group, events_pb2.ShardCreated.FromString,
                          by_model.on_shard_created)] if s.consume else []
    return ServiceParts(registrations=[registration(handler)], service_names=[SERVICE_NAME], workers=workers)


class ModelRouter:
    """Routes a ShardCreated event to the handler of the model it names (a study embeds
    with checkpoints it has just trained); keeps the configured model plus the last
    ``keep`` others loaded."""

    def __init__(self, default, default_spec: str, make, keep: int = 2):
        self.default, self.default_spec, self.make, self.keep = default, default_spec, make, keep
        self.loaded: dict[str, object] = {}

    def handler_for(self, spec: str):
        if not spec or spec == self.default_spec:
            return self.default
        if spec not in self.loaded:
            if len(self.loaded) >= self.keep:
                self.loaded.pop(next(iter(self.loaded)))
            self.loaded[spec] = self.make(spec)
        return self.loaded[spec]

    def on_shard_created(self, event):
        return self.handler_for(event.model).on_shard_created(event)


def main() -> None:
    run_service("embedder", EmbedderSettings(), build)


if __name__ == "__main__":
    main()
