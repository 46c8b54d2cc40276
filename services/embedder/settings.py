"""Settings of the embedder service (environment prefix ``CLIPAUDIT_EMBEDDER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from clipaudit.config import SERVICE_PORTS, ServiceSettings


class EmbedderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPAUDIT_EMBEDDER_", extra="forbid")

    grpc_port: int = SERVICE_PORTS["embedder"][0]
    metrics_port: int = SERVICE_PORTS["embedder"][1]
