"""Start, stop and inspect a real local Kafka, MinIO and Prometheus on 127.0.0.1.

Each server is a detached process with its state in ``<state_dir>/<name>/``
(``pid``, ``server.log``, ``data/``), so ``up`` survives the CLI that started it and
``down`` works from any later process. Everything is idempotent.

Public API (used by ``clipaudit stack up|down|status`` and the integration tests)::

    ensure_tools(settings, console=None) -> dict[str, Path]
    up(settings, console=None) -> dict[str, dict]
    down(settings) -> dict[str, dict]
    status(settings) -> dict[str, dict]
    register_target(settings, name, port, labels=None) -> Path
    unregister_target(settings, name) -> bool
    format_status(status_dict) -> str        status_table(status_dict) -> rich Table
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipaudit.config import StackSettings
from clipaudit.errors import InvalidInput
from clipaudit.stack import process
from clipaudit.stack.kafka import KafkaServer
from clipaudit.stack.minio import MinioServer
from clipaudit.stack.prometheus import PrometheusServer
from clipaudit.stack.server import Server
from clipaudit.stack.tools import KAFKA_VERSION, MINIO_VERSION, ensure_tools

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "KAFKA_VERSION", "MINIO_VERSION", "SERVER_NAMES", "down", "ensure_tools", "format_status",
    "register_target", "servers", "status", "status_table", "unregister_target", "up",
]

SERVER_NAMES = ("kafka", "minio", "prometheus")


def servers(settings: StackSettings) -> list[Server]:
    """The three servers, in start order."""
    return [KafkaServer(settings), MinioServer(settings), PrometheusServer(settings)]


def _lock(settings: StackSettings) -> contextlib.AbstractContextManager[None]:
    return process.file_lock(settings.state_dir / "stack.lock")


def _say(console: Any, message: str) -> None:
    if console is not None:
        console.print(message)


def up(settings: StackSettings, console: Any = None) -> dict[str, dict[str, Any]]:
    """Start whichever servers are not running and wait until all are ready.

    Ports are checked before anything starts, so a port taken by another process fails
    with one ``Unavailable`` line and nothing half-started; if a server dies or is not
    ready in time, the servers this call started are stopped again and ``Unavailable``
    carries the last lines of its log. Returns per server its
    ``status`` plus ``action`` ("started" | "already running") and ``seconds``.
    """
    t0 = time.monotonic()
    with _lock(settings):
        all_servers = servers(settings)
        running = {srv.name: srv.pid() for srv in all_servers}
        to_start = [srv for srv in all_servers if running[srv.name] is None]
        for srv in to_start:
            srv.check_ports_free()
        tools = ensure_tools(settings, console) if to_start else {}
        pids = {}
        for srv in to_start:
            _say(console, f"starting {srv.name} on {srv.endpoint()} ...")
            pids[srv.name] = srv.launch(tools)
        result: dict[str, dict[str, Any]] = {}
        try:
            for srv in all_servers:
                if srv.name in pids:
                    waited = srv.wait(pids[srv.name])
                    result[srv.name] = {"action": "started", "seconds": round(waited, 2)}
                else:
                    result[srv.name] = {"action": "already running", "seconds": 0.0}
        except BaseException:
            # all or nothing: stop what this call started, leave what already ran
            for srv in to_start:
                srv.stop()
            raise
        for srv in all_servers:
            result[srv.name].update(srv.status())
    _say(console, f"stack ready in {time.monotonic() - t0:.1f}s")
    return result


def down(settings: StackSettings) -> dict[str, dict[str, Any]]:
    """Stop every running server (SIGTERM, then SIGKILL after a timeout); idempotent.

    Data stays in ``state_dir``; ``up`` afterwards restarts on it.
    """
    with _lock(settings):
        return {srv.name: srv.stop() for srv in reversed(servers(settings))}


def status(settings: StackSettings) -> dict[str, dict[str, Any]]:
    """Per server: ``running``, ``pid``, ``port``, ``ready``, ``endpoint``, ``log``, ``data``."""
    return {srv.name: srv.status() for srv in servers(settings)}


# -- Prometheus file-based service discovery ----------------------------------------
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def register_target(
    settings: StackSettings, name: str, port: int, labels: dict[str, str] | None = None
) -> Path:
    """Announce a ``/metrics`` endpoint on ``host:port`` to Prometheus.

    Writes ``<targets_dir>/<name>.json`` atomically in file_sd format with labels
    ``job="clipaudit"``, ``service=<name>`` plus ``labels``. Prometheus picks it up within
    its refresh interval (2 s). Returns the file path.
    """
    if not _NAME_RE.match(name):
        raise InvalidInput(f"target name {name!r} must match {_NAME_RE.pattern}")
    if not 0 < int(port) < 65536:
        raise InvalidInput(f"target port {port} is not a TCP port")
    all_labels = {"job": "clipaudit", "service": name}
    for key, value in (labels or {}).items():
        if not _LABEL_RE.match(key) or key.startswith("__"):
            raise InvalidInput(f"label name {key!r} is not a valid Prometheus label name")
        all_labels[key] = str(value)
    doc = [{"targets": [f"{settings.host}:{int(port)}"], "labels": all_labels}]
    target_dir = settings.targets_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def unregister_target(settings: StackSettings, name: str) -> bool:
    """Remove ``<targets_dir>/<name>.json``; True if it existed."""
    if not _NAME_RE.match(name):
        raise InvalidInput(f"target name {name!r} must match {_NAME_RE.pattern}")
    path = settings.targets_dir / f"{name}.json"
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


# -- presentation -------------------------------------------------------------------
_COLUMNS = ("server", "running", "ready", "pid", "endpoint", "log")


def _rows(status_dict: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, st in status_dict.items():
        rows.append([
            name,
            "yes" if st.get("running") else "no",
            "yes" if st.get("ready") else "no",
            str(st.get("pid") or "-"),
            str(st.get("endpoint", "")),
            str(st.get("log", "")),
        ])
    return rows


def format_status(status_dict: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of ``status()`` (or ``up()``) output."""
    rows = [list(_COLUMNS), *_rows(status_dict)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def status_table(status_dict: dict[str, dict[str, Any]]) -> Table:
    """The same table as a ``rich.table.Table`` for the CLI."""
    from rich.table import Table

    table = Table(title="clipaudit stack")
    for col in _COLUMNS:
        table.add_column(col)
    for row in _rows(status_dict):
        style = "green" if row[2] == "yes" else ("yellow" if row[1] == "yes" else "red")
        table.add_row(*row, style=style)
    return table
