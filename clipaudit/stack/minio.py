"""A single-drive MinIO server on loopback, console off, with the clipaudit bucket."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from clipaudit.stack.server import Server

if TYPE_CHECKING:
    from minio import Minio


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True if GET ``url`` answers 200."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return resp.status == 200


class MinioServer(Server):
    """``minio server <data>`` built from the pinned Go module."""

    name = "minio"
    startup_timeout = 60.0
    stop_timeout = 15.0

    def ports(self) -> dict[str, int]:
        return {"minio_port": self.settings.minio_port}

    @property
    def console_port(self) -> int:
        """MinIO insists on a console address; the browser is off, but keep it beside ours."""
        return self.settings.minio_port + 1

    def endpoint(self) -> str:
        return f"http://{self.settings.host}:{self.settings.minio_port}"

    def command(self, tools: dict[str, Path]) -> list[str]:
        host = self.settings.host
        return [
            str(tools["minio"]), "server", str(self.data_dir),
            "--address", f"{host}:{self.settings.minio_port}",
            "--console-address", f"{host}:{self.console_port}",
            "--quiet",
        ]

    def env(self) -> dict[str, str]:
        return {
            "MINIO_ROOT_USER": self.settings.s3_access_key,
            "MINIO_ROOT_PASSWORD": self.settings.s3_secret_key.get_secret_value(),
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CALLHOME_ENABLE": "off",
        }

    def is_ready(self) -> bool:
        return http_ok(f"{self.endpoint()}/minio/health/ready")

    def client(self) -> Minio:
        """A MinIO SDK client for this server."""
        from minio import Minio

        return Minio(
            f"{self.settings.host}:{self.settings.minio_port}",
            access_key=self.settings.s3_access_key,
            secret_key=self.settings.s3_secret_key.get_secret_value(),
            secure=False,
        )

    def after_ready(self) -> None:
        client = self.client()
        if not client.bucket_exists(self.settings.s3_bucket):
            client.make_bucket(self.settings.s3_bucket)
