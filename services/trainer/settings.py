"""Settings of the trainer service (environment prefix ``CLIPAUDIT_TRAINER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from clipaudit.config import SERVICE_PORTS, ServiceSettings


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPAUDIT_TRAINER_", extra="forbid")

    grpc_port: int = SERVICE_PORTS["trainer"][0]
    metrics_port: int = SERVICE_PORTS["trainer"][1]
    max_handler_s: float = 7 * 24 * 3600.0   # a Kafka-submitted job runs inside the handler: allow days

    consumer_group: str = "trainer"   # Kafka consumer group of train-jobs.v1
    out: str | None = None        # where jobs without spec.out write (default: <store>/trainer/<job id>)
    publish: bool = True          # publish CheckpointWritten even when not consuming
    jobs_topic: str = "train-jobs.v1"          # clipaudit.bus.TOPIC_TRAIN_JOBS
    checkpoints_topic: str = "checkpoints.v1"  # clipaudit.bus.TOPIC_CHECKPOINTS
