"""Settings of the classifier service (environment prefix ``CLIPAUDIT_CLASSIFIER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from clipaudit.config import SERVICE_PORTS, ServiceSettings


class ClassifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPAUDIT_CLASSIFIER_", extra="forbid")

    grpc_port: int = SERVICE_PORTS["classifier"][0]
    metrics_port: int = SERVICE_PORTS["classifier"][1]
