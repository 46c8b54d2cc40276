"""Typed settings shared by the CLI, the services and the local stack.

Every setting can come from the environment (prefix ``CLIPAUDIT_``) and unknown keys
are refused (``extra="forbid"``), so a typo fails loudly instead of being ignored.
Service-specific settings live in ``services/<name>/settings.py`` with the prefix
``CLIPAUDIT_<SERVICE>_``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_dir() -> Path:
    return Path(os.environ.get("CLIPAUDIT_STATE_DIR", Path.cwd() / ".state")).resolve()


def default_cache_dir() -> Path:
    """Where built tools (Kafka jars, the MinIO binary) are cached across clones."""
    base = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(base) / "clipaudit"


class StackSettings(BaseSettings):
    """The real local servers: every port is non-default and bound to 127.0.0.1."""

    model_config = SettingsConfigDict(env_prefix="CLIPAUDIT_", extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    host: str = "127.0.0.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    minio_port: int = 19000
    prometheus_port: int = 19090
    s3_access_key: str = "clipaudit"
    s3_secret_key: SecretStr = SecretStr("clipaudit-secret")
    s3_bucket: str = "clipaudit"
    s3_endpoint: str = Field("", description="host:port of the S3 endpoint; default: the local stack's MinIO")
    s3_secure: bool = Field(False, description="TLS to the S3 endpoint")

    @model_validator(mode="after")
    def _default_s3_endpoint(self) -> "StackSettings":
        if not self.s3_endpoint:
            self.s3_endpoint = f"{self.host}:{self.minio_port}"
        return self

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"

    @property
    def targets_dir(self) -> Path:
        """File-based service discovery: one JSON file per running clipaudit process."""
        return self.state_dir / "prometheus" / "targets"


class ServiceSettings(BaseSettings):
    """What every service process needs; each service subclasses this with its own
    env prefix ``CLIPAUDIT_<SERVICE>_`` and its own fields."""

    model_config = SettingsConfigDict(env_prefix="CLIPAUDIT_SERVICE_", extra="forbid")

    host: str = "127.0.0.1"
    grpc_port: int = 0            # 0: pick a free port (the chosen one is logged and registered)
    metrics_port: int = 0
    bus: str = "kafka://127.0.0.1:19092"   # or "memory" for a standalone process
    store: str = "s3://clipaudit"           # or a local directory
    consume: bool = True          # run the Kafka worker beside the gRPC server
    max_attempts: int = 3         # handler attempts before a message is dead-lettered
    max_handler_s: float = 600.0  # longest handler run between polls before Kafka rebalances
    register_prometheus: bool = True
    grpc_workers: int = 8


# Default ports of the services on one machine (non-default, loopback).
SERVICE_PORTS = {
    "embedder": (19051, 19151),
    "indexer": (19052, 19152),
    "classifier": (19053, 19153),
    "trainer": (19054, 19154),
    "evaluator": (19055, 19155),
}
SERVICES = tuple(SERVICE_PORTS)
