"""Thin gRPC servicer: proto -> :class:`~services.trainer.handler.TrainerJobs` -> proto.
Errors are mapped to status codes by the shared interceptor (clipaudit.rpc)."""

from __future__ import annotations

import math

from clipaudit.common.v1 import common_pb2
from clipaudit.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from services.trainer.handler import JobStatus, TrainerJobs

STATES = {
    "queued": trainer_pb2.JOB_STATE_QUEUED,
    "running": trainer_pb2.JOB_STATE_RUNNING,
    "succeeded": trainer_pb2.JOB_STATE_SUCCEEDED,
    "failed": trainer_pb2.JOB_STATE_FAILED,
    "cancelled": trainer_pb2.JOB_STATE_CANCELLED,
}


def job_to_proto(s: JobStatus) -> trainer_pb2.Job:
    job = trainer_pb2.Job(job_id=s.job_id, state=STATES[s.state], step=s.step, total_steps=s.total_steps,
                          loss=0.0 if math.isnan(s.loss) else s.loss, error=s.error, error_type=s.error_type,
                          samples_per_s=s.samples_per_s, learning_rate=s.lr)
    if s.checkpoint is not None and s.checkpoint.uri:
        job.checkpoint.CopyFrom(common_pb2.ObjectRef(uri=s.checkpoint.uri, sha256=s.checkpoint.sha256,
                                                     size_bytes=s.checkpoint.size_bytes))
    if s.result is not None:
        job.model_id = s.result.model_id
        job.missing_keys = s.result.missing
        job.resolved_counts.update(s.result.resolved_counts)
    return job


def progress_to_proto(s: JobStatus) -> trainer_pb2.JobProgress:
    return trainer_pb2.JobProgress(job_id=s.job_id, state=STATES[s.state], step=s.step, total_steps=s.total_steps,
                                   loss=0.0 if math.isnan(s.loss) else s.loss, samples_per_s=s.samples_per_s,
                                   learning_rate=s.lr, error=s.error)


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, jobs: TrainerJobs):
        self.jobs = jobs

    def SubmitJob(self, request, context):
        return job_to_proto(self.jobs.submit(request.spec_json, request.job_id))

    def GetJob(self, request, context):
        return job_to_proto(self.jobs.get(request.job_id))

    def WatchJob(self, request, context):
        for status in self.jobs.watch(request.job_id, alive=context.is_active):
            yield progress_to_proto(status)

    def CancelJob(self, request, context):
        return job_to_proto(self.jobs.cancel(request.job_id))


def registrations(jobs: TrainerJobs) -> tuple[list, list[str]]:
    """``(registrations, service_names)`` for :func:`clipaudit.rpc.build_server`."""
    name = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
    return [(trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(jobs))], [name]
