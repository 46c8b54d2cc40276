"""What every local server has in common: its directory layout, ports and lifecycle.

A concrete server (Kafka, MinIO, Prometheus) says how to prepare its config, which
command starts it and how to tell it is ready; ``start``/``stop``/``status`` here do
the rest (pid file, port check, log file, readiness polling).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from clipaudit.config import StackSettings
from clipaudit.errors import Unavailable
from clipaudit.stack import process


class Server(ABC):
    """One local server process under ``<state_dir>/<name>/``."""

    name: str = ""
    startup_timeout: float = 60.0
    stop_timeout: float = 30.0

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings

    # -- layout ---------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.settings.state_dir / self.name

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    # -- what a concrete server provides ------------------------------------------
    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Ports it binds, keyed by the settings field name (e.g. ``kafka_port``)."""

    @abstractmethod
    def endpoint(self) -> str:
        """How clients reach it (``host:port`` or a URL)."""

    @abstractmethod
    def command(self, tools: dict[str, Path]) -> list[str]:
        """The argv that starts it in the foreground."""

    def env(self) -> dict[str, str]:
        """Extra environment variables for the process."""
        return {}

    def prepare(self, tools: dict[str, Path]) -> None:
        """Write config files, format storage; runs before every start."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def is_ready(self) -> bool:
        """One quick readiness probe (may raise; any exception means "not ready")."""

    def after_ready(self) -> None:
        """One-off setup once the server answers (e.g. create a bucket)."""

    # -- lifecycle ----------------------------------------------------------------
    @property
    def main_port(self) -> int:
        return next(iter(self.ports().values()))

    def pid(self) -> int | None:
        """Pid of our running server, or None (stale pid files do not count)."""
        return process.read_pid(self.pid_file, marker=str(self.dir))

    def check_ports_free(self) -> None:
        """Raise ``Unavailable`` (one line) if one of our ports is taken by another process."""
        host = self.settings.host
        for field, port in self.ports().items():
            if process.port_in_use(host, port):
                raise Unavailable(
                    f"port {port} on {host} is in use by another process; "
                    f"set CLIPAUDIT_{field.upper()} to a free port (needed by {self.name})"
                )

    def launch(self, tools: dict[str, Path]) -> int:
        """Prepare and start the process detached; return its pid (not yet ready)."""
        self.prepare(tools)
        self.pid_file.unlink(missing_ok=True)
        return process.start_detached(
            self.command(tools), log_file=self.log_file, pid_file=self.pid_file,
            cwd=self.dir, env=self.env(),
        )

    def wait(self, pid: int) -> float:
        """Block until ready (then run ``after_ready``); return the seconds waited."""
        try:
            waited = process.wait_ready(
                self.name, pid, self.is_ready, log_file=self.log_file, timeout=self.startup_timeout
            )
        except Unavailable:
            if process.pid_alive(pid):
                process.stop_pid(pid, timeout=5)
            self.pid_file.unlink(missing_ok=True)
            raise
        self.after_ready()
        return waited

    def stop(self) -> dict[str, Any]:
        """Stop the server if it runs; idempotent."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return {"action": "not running", "pid": None}
        t0 = time.monotonic()
        how = process.stop_pid(pid, timeout=self.stop_timeout)
        self.pid_file.unlink(missing_ok=True)
        return {"action": how, "pid": pid, "seconds": round(time.monotonic() - t0, 2)}

    def status(self) -> dict[str, Any]:
        """``running``, ``pid``, ``port``, ``ready``, ``endpoint``, ``log``, ``data``."""
        pid = self.pid()
        ready = False
        if pid is not None:
            try:
                ready = bool(self.is_ready())
            except Exception:  # noqa: BLE001 - a failed probe means "not ready"
                ready = False
        return {
            "running": pid is not None,
            "pid": pid,
            "port": self.main_port,
            "ready": ready,
            "endpoint": self.endpoint(),
            "log": str(self.log_file),
            "data": str(self.data_dir),
        }
