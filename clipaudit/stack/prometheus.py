"""Prometheus on loopback, discovering clipaudit processes from JSON target files."""

from __future__ import annotations

import json
from pathlib import Path

from clipaudit.stack.minio import http_ok
from clipaudit.stack.server import Server


class PrometheusServer(Server):
    """The Debian ``prometheus`` binary with a file_sd job over ``targets_dir``."""

    name = "prometheus"
    startup_timeout = 60.0
    stop_timeout = 20.0

    def ports(self) -> dict[str, int]:
        return {"prometheus_port": self.settings.prometheus_port}

    def endpoint(self) -> str:
        return self.settings.prometheus_url

    @property
    def config_file(self) -> Path:
        return self.dir / "prometheus.yml"

    def config(self) -> str:
        """The config as YAML (written as JSON, which is valid YAML)."""
        s = self.settings
        cfg = {
            "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
            "scrape_configs": [
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"{s.host}:{s.prometheus_port}"]}],
                },
                {
                    "job_name": "clipaudit",
                    "file_sd_configs": [
                        {"files": [str(s.targets_dir / "*.json")], "refresh_interval": "2s"}
                    ],
                },
            ],
        }
        return json.dumps(cfg, indent=2) + "\n"

    def prepare(self, tools: dict[str, Path]) -> None:
        super().prepare(tools)
        self.settings.targets_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config())

    def command(self, tools: dict[str, Path]) -> list[str]:
        return [
            str(tools["prometheus"]),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.data_dir}",
            "--storage.tsdb.retention.time=7d",
            f"--web.listen-address={self.settings.host}:{self.settings.prometheus_port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]

    def is_ready(self) -> bool:
        return http_ok(f"{self.endpoint()}/-/ready")
