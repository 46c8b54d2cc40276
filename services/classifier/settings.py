"""Settings of the classifier service (environment prefix ``CLIPAUDIT_CLASSIFIER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from clipaudit.config import SERVICE_PORTS, ServiceSettings


class ClassifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPAUDIT_CLASSIFIER_", extra="forbid")

    grpc_port: int = SERVICE_PORTS["classifier"][0]
    metrics_port: int = SERVICE_PORTS["classifier"][1]
    # Classifier file (path or s3://...) the bus worker labels shards with; empty: no worker.
    model: str = ""
    # CLIP model spec for zero-shot bootstrapping in Train (empty: Train needs labels).
    text_model_spec: str = ""
    text_model_seed: int = 0
    consumer_group: str = "classifier"
    # Label only shards whose dataset starts with this (empty: every dataset).
    consume_dataset_prefix: str = ""
