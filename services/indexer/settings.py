"""Settings of the indexer service (environment prefix ``CLIPAUDIT_INDEXER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from clipaudit.config import SERVICE_PORTS, ServiceSettings


class IndexerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPAUDIT_INDEXER_", extra="forbid")

    grpc_port: int = SERVICE_PORTS["indexer"][0]
    metrics_port: int = SERVICE_PORTS["indexer"][1]
    device: str = "auto"                      # auto | cpu | cuda: where bulk matrix products run
    query_block: int = 4096                   # query rows per matrix product
    ref_block: int = 4096                     # reference rows per block (GPU: try 16384+)
    memory_budget_bytes: int = 8 << 30        # for choosing the FAISS index type
    default_index: str = "default"            # index used when a request names none
    consume_index: str = ""                   # index the Kafka worker adds to ("" = default_index)
    consume_dataset_prefix: str = ""          # only index events whose dataset starts with this ("" = all)
    consume_model: str = ""                   # the model id that index takes; others are dead-lettered
                                              # ("" = whichever model's event creates the index first)
    consumer_group: str = "indexer"
    embedder_address: str = ""                # host:port of the embedder, for search by text
    search_threads: int = 1                   # faiss OpenMP threads per search call (requests run in parallel)
    spill_dir: str = ""                       # local scratch for dedup's cluster buckets ("" = system temp)
