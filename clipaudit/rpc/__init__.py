"""gRPC scaffold every service uses: health, reflection, error + metrics interceptors,
and a /metrics HTTP endpoint. Servicers stay thin: proto -> handler -> proto."""

from clipaudit.rpc.server import GrpcServer, ServiceMetrics, build_server, start_metrics_http, status_code_for

__all__ = ["GrpcServer", "ServiceMetrics", "build_server", "start_metrics_http", "status_code_for"]
