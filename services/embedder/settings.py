"""Settings of the embedder service (environment prefix ``CLIPAUDIT_EMBEDDER_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clipaudit.config import SERVICE_PORTS, ServiceSettings


class EmbedderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPAUDIT_EMBEDDER_", extra="forbid")

    grpc_port: int = SERVICE_PORTS["embedder"][0]
    metrics_port: int = SERVICE_PORTS["embedder"][1]
    model: str = Field("clipaudit-tiny", description="open_clip name or JSON config, optionally @checkpoint (path or s3://)")
    device: str = Field("cpu", description="cpu | cuda | cuda:N")
    seed: int = Field(0, description="init seed of a model without a checkpoint")
    batch_size: int | None = Field(None, ge=1, description="None: 256 on CPU, the largest that fits on a GPU")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    dtype: Literal["float16", "float32"] = "float16"
    text: bool = Field(False, description="also embed captions (text_emb/) in the Kafka worker")
    reader_threads: int = Field(2, ge=1, description="decode threads per shard job of the Kafka worker")
    consumer_group: str = "embedder"
    shards_topic: str = Field("shards.v1", description="topic of ShardCreated events (input)")
    embeddings_topic: str = Field("embeddings.v1", description="topic of EmbeddingsWritten events (output)")
