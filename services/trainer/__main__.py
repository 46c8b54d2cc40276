"""Composition root of the trainer service: `python -m services.trainer`.

Serves gRPC (SubmitJob/GetJob/WatchJob/CancelJob), consumes ``train-jobs.v1``
(each event runs to its end before its offset is committed) and publishes
``checkpoints.v1`` when a job wrote its final checkpoint (topics configurable in
:class:`TrainerSettings`). One job at a time.
"""

from __future__ import annotations

from clipaudit.rpc.runtime import Runtime, ServiceParts, WorkerSpec, run_service
from services.trainer.settings import TrainerSettings


def build(rt: Runtime) -> ServiceParts:
    from clipaudit.events.v1 import events_pb2
    from clipaudit.store import open_store
    from services.trainer.grpc_api import registrations
    from services.trainer.handler import TrainerJobs
    from services.trainer.metrics import TrainerMetrics

    settings: TrainerSettings = rt.settings  # type: ignore[assignment]
    jobs = TrainerJobs(
        open_store=lambda loc: open_store(loc, settings=rt.stack),
        publisher=rt.bus if settings.consume or settings.publish else None,
        metrics=TrainerMetrics(rt.registry),
        default_out=settings.out or settings.store,
        checkpoint_topic=settings.checkpoints_topic,
    ).start()
    regs, names = registrations(jobs)
    workers = [WorkerSpec([settings.jobs_topic], settings.consumer_group, events_pb2.TrainJobRequested.FromString,
                          jobs.on_train_job_requested)]
    return ServiceParts(registrations=regs, service_names=names, workers=workers, on_stop=[jobs.stop])


def main() -> None:
    run_service("trainer", TrainerSettings(), build)


if __name__ == "__main__":
    main()
