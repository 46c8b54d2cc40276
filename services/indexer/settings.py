"""Settings of the indexer service (environment prefix ``CLIPAUDIT_INDEXER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from clipaudit.config import SERVICE_PORTS, ServiceSettings


class IndexerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPAUDIT_INDEXER_", extra="forbid")

    grpc_port: int = SERVICE_PORTS["indexer"][0]
    metrics_port: int = SERVICE_PORTS["indexer"][1]
