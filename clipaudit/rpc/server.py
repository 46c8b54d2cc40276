"""Server scaffold: one place translates the exception tree to gRPC status codes and
records request metrics *after* the handler ran (with the status it ended with)."""

from __future__ import annotations

import logging
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from clipaudit.errors import ClipauditError

log = logging.getLogger(__name__)


def status_code_for(e: BaseException) -> grpc.StatusCode:
    if isinstance(e, ClipauditError):
        return getattr(grpc.StatusCode, e.grpc_code_name)
    return grpc.StatusCode.INTERNAL


class ServiceMetrics:
    """Request metrics of one gRPC service, in an injected registry (never at import)."""

    def __init__(self, registry: CollectorRegistry, service: str):
        self.requests = Counter("clipaudit_grpc_requests_total", "gRPC requests handled",
                                ["service", "method", "code"], registry=registry)
        self.errors = Counter("clipaudit_grpc_errors_total", "gRPC requests that ended in an error status",
                              ["service", "method", "code"], registry=registry)
        self.latency = Histogram("clipaudit_grpc_request_seconds", "gRPC request latency (handler wall time)",
                                 ["service", "method"], registry=registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120))
        self.service = service

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.requests.labels(self.service, method, code.name).inc()
        self.latency.labels(self.service, method).observe(seconds)
        if code != grpc.StatusCode.OK:
            self.errors.labels(self.service, method, code.name).inc()


class _Outcome:
    """What a wrapped call ended with, filled in by the error layer, read by metrics."""

    __slots__ = ("code",)

    def __init__(self):
        self.code = grpc.StatusCode.OK


def _abort(context: grpc.ServicerContext, e: BaseException, outcome: _Outcome, method: str) -> None:
    code = status_code_for(e)
    outcome.code = code
    if code == grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in %s", method)
        message = f"internal error in {method}: {type(e).__name__}: {e}"
    else:
        message = str(e)
    context.abort(code, message.splitlines()[0] if message else code.name)


class ErrorAndMetricsInterceptor(grpc.ServerInterceptor):
    """Maps clipaudit errors to status codes (NOT_FOUND stays NOT_FOUND) and records
    requests/latency/errors once the handler has finished, streaming ones included."""

    def __init__(self, metrics: ServiceMetrics | None):
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        metrics = self.metrics

        def finish(outcome: _Outcome, t0: float, context) -> None:
            if metrics is not None:
                code = outcome.code
                if code == grpc.StatusCode.OK and not context.is_active():
                    code = grpc.StatusCode.CANCELLED
                metrics.observe(method, code, time.perf_counter() - t0)

        def wrap_unary(fn):
            def inner(request_or_iterator, context):
                outcome, t0 = _Outcome(), time.perf_counter()
                try:
                    return fn(request_or_iterator, context)
                except grpc.RpcError:
                    outcome.code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except Exception as e:  # noqa: BLE001 - translated at the edge
                    _abort(context, e, outcome, method)
                finally:
                    finish(outcome, t0, context)
            return inner

        def wrap_stream(fn):
            def inner(request_or_iterator, context):
                outcome, t0 = _Outcome(), time.perf_counter()
                try:
                    yield from fn(request_or_iterator, context)
                except grpc.RpcError:
                    outcome.code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except Exception as e:  # noqa: BLE001
                    _abort(context, e, outcome, method)
                finally:
                    finish(outcome, t0, context)
            return inner

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary),
                                                       handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary),
                                                        handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream),
                                                        handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream),
                                                     handler.request_deserializer, handler.response_serializer)


@dataclass
class GrpcServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def build_server(
    registrations: Iterable[tuple[Callable, object]],
    service_names: Iterable[str],
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    metrics: ServiceMetrics | None = None,
    max_workers: int = 8,
    max_message_mb: int = 64,
) -> GrpcServer:
    """A started server with our servicers, standard health and reflection.

    ``registrations`` are ``(add_XServicer_to_server, servicer)`` pairs, ``service_names``
    their full names (``clipaudit.indexer.v1.Indexer``). Port 0 picks a free port.
    """
    opts = [("grpc.max_receive_message_length", max_message_mb << 20),
            ("grpc.max_send_message_length", max_message_mb << 20),
            ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         interceptors=[ErrorAndMetricsInterceptor(metrics)], options=opts)
    for add, servicer in registrations:
        add(servicer, server)
    names = list(service_names)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    for n in names:
        hs.set(n, health_pb2.HealthCheckResponse.SERVING)
    hs.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(names + [health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        from clipaudit.errors import Unavailable

        raise Unavailable(f"cannot bind gRPC port {host}:{port} (in use?)")
    server.start()
    return GrpcServer(server, bound, hs)


def start_metrics_http(registry: CollectorRegistry, port: int = 0, host: str = "127.0.0.1") -> int:
    """Serve /metrics for ``registry``; returns the bound port."""
    try:
        httpd, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        from clipaudit.errors import Unavailable

        raise Unavailable(f"cannot bind metrics port {host}:{port}: {e.strerror}") from e
    return httpd.server_address[1]
