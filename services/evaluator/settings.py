"""Settings of the evaluator service (environment prefix ``CLIPAUDIT_EVALUATOR_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from clipaudit.config import SERVICE_PORTS, ServiceSettings


class EvaluatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPAUDIT_EVALUATOR_", extra="forbid")

    grpc_port: int = SERVICE_PORTS["evaluator"][0]
    metrics_port: int = SERVICE_PORTS["evaluator"][1]
    device: str = "cpu"                    # default device of evaluations ("cuda" on a GPU node)
    consumer_group: str = "evaluator"      # Kafka group consuming checkpoints.v1
    checkpoints_topic: str = "checkpoints.v1"   # in: CheckpointWritten
    reports_topic: str = "reports.v1"           # out: ReportWritten
    reports_prefix: str = "reports"        # under `store`: reports/<job>/step-<n>/<name>/ when an event names no out
