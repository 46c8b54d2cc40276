"""One exception tree for the whole project.

Pure logic and handlers raise these; the edges translate them: the gRPC error
interceptor maps them to status codes, the CLI to an exit code and one clear line,
the bus consumer to a dead-letter message.
"""

from __future__ import annotations


class ClipauditError(Exception):
    """Base of every error clipaudit raises on purpose."""

    exit_code = 1
    grpc_code_name = "INTERNAL"


class InvalidInput(ClipauditError):
    """The caller sent something malformed: bad vectors, bad config, bad image."""

    exit_code = 2
    grpc_code_name = "INVALID_ARGUMENT"


class NotFound(ClipauditError):
    """A named object (key, file, manifest, checkpoint, bucket) does not exist."""

    exit_code = 3
    grpc_code_name = "NOT_FOUND"


class AlreadyExists(ClipauditError):
    exit_code = 4
    grpc_code_name = "ALREADY_EXISTS"


class FailedPrecondition(ClipauditError):
    """The request is valid but the system is not in a state to serve it
    (e.g. mixing embeddings of two models, resuming another architecture)."""

    exit_code = 5
    grpc_code_name = "FAILED_PRECONDITION"


class Unavailable(ClipauditError):
    """A server we depend on (Kafka, MinIO, a service) cannot be reached."""

    exit_code = 6
    grpc_code_name = "UNAVAILABLE"


class ResourceExhausted(ClipauditError):
    """Out of disk, bucket quota, memory budget."""

    exit_code = 7
    grpc_code_name = "RESOURCE_EXHAUSTED"


class Cancelled(ClipauditError):
    exit_code = 8
    grpc_code_name = "CANCELLED"
