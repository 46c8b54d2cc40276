"""Composition root of the indexer service: `python -m services.indexer`.

Serves the Indexer gRPC API (+ health, reflection, /metrics) and, unless
``CLIPAUDIT_INDEXER_CONSUME=false``, consumes ``embeddings.v1`` and adds every
written shard's vectors to the index ``consume_index`` (created as Flat if absent).
"""

from __future__ import annotations

from clipaudit.bus import TOPIC_EMBEDDINGS
from clipaudit.rpc.runtime import Runtime, ServiceParts, WorkerSpec, run_service
from services.indexer.settings import IndexerSettings


def build(rt: Runtime) -> ServiceParts:
    import faiss

    from clipaudit.events.v1 import events_pb2
    from clipaudit.indexer.v1 import indexer_pb2_grpc
    from services.indexer.grpc_api import SERVICE_NAME, IndexerServicer
    from services.indexer.handler import IndexerHandler, use_fixed_mmap_threshold
    from services.indexer.metrics import IndexerMetrics

    s: IndexerSettings = rt.settings
    use_fixed_mmap_threshold()
    faiss.omp_set_num_threads(max(1, s.search_threads))
    embed, on_stop, embedder_model = None, [], None
    if s.embedder_address:
        from services.indexer.embedder_client import EmbedderTextClient

        client = EmbedderTextClient(s.embedder_address)
        embed, on_stop = client, [client.close]
    handler = IndexerHandler(rt.store, metrics=IndexerMetrics(rt.registry), embed_texts=embed,
                             embedder_model_id=embedder_model, device=s.device, query_block=s.query_block,
                             ref_block=s.ref_block, memory_budget_bytes=s.memory_budget_bytes,
                             default_index=s.default_index, spill_dir=s.spill_dir or None)
    index = s.consume_index or s.default_index

    def on_event(event) -> None:
        if event.dataset.startswith(s.consume_dataset_prefix):
            handler.on_embeddings_written(event, index=index, model_id=s.consume_model)

    worker = WorkerSpec([TOPIC_EMBEDDINGS], s.consumer_group, events_pb2.EmbeddingsWritten.FromString, on_event)
    return ServiceParts(registrations=[(indexer_pb2_grpc.add_IndexerServicer_to_server, IndexerServicer(handler))],
                        service_names=[SERVICE_NAME], workers=[worker], on_stop=on_stop)


def main() -> None:
    run_service("indexer", IndexerSettings(), build)


if __name__ == "__main__":
    main()
