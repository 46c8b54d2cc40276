"""``clipaudit serve``: each service as its own process (its composition root,
``python -m services.<name>``), against the local stack by default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from clipaudit.config import SERVICES, StackSettings
from clipaudit.errors import InvalidInput, Unavailable


def _pid_file(settings: StackSettings, name: str) -> Path:
    return settings.state_dir / "services" / f"{name}.pid"


def spawn(name: str, *, bus: str | None = None, store: str | None = None, env: dict | None = None,
          log_path: Path | None = None, timeout_s: float = 60.0) -> tuple[subprocess.Popen, dict]:
    """Start one service process and wait for its READY line. Returns (process, ports)."""
    settings = StackSettings()
    e = dict(os.environ, **(env or {}))
    prefix = f"CLIPAUDIT_{name.upper()}_"
    e.setdefault(prefix + "BUS", bus or f"kafka://{settings.kafka_bootstrap}")
    e.setdefault(prefix + "STORE", store or f"s3://{settings.s3_bucket}")
    e.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log_path = log_path or settings.state_dir / "services" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-u", "-m", f"services.{name}"], env=e, stdout=subprocess.PIPE,
                            stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-5:]
                raise Unavailable(f"service {name} exited with {proc.returncode}: " + " | ".join(tail))
            continue
        text = line.decode(errors="replace").strip()
        log.write(line)
        log.flush()
        if text.startswith("READY "):
            ports = dict(kv.split("=") for kv in text.split()[2:])
            return proc, {k: int(v) for k, v in ports.items()}
    proc.kill()
    raise Unavailable(f"service {name} did not become ready within {timeout_s:.0f} s (log: {log_path})")


def serve(which: str, *, bus: str | None = None, store: str | None = None, detach: bool = False,
          stop: bool = False) -> int:
    names = list(SERVICES) if which == "all" else [which]
    for n in names:
        if n not in SERVICES:
            raise InvalidInput(f"unknown service {n!r}; choose one of {', '.join(SERVICES)} or all")
    settings = StackSettings()
    if stop:
        for n in names:
            pf = _pid_file(settings, n)
            if pf.exists():
                try:
                    os.kill(int(pf.read_text()), signal.SIGTERM)
                    print(f"stopped {n}")
                except ProcessLookupError:
                    pass
                pf.unlink(missing_ok=True)
        return 0
    procs = []
    try:
        for n in names:
            p, ports = spawn(n, bus=bus, store=store)
            procs.append((n, p))
            _pid_file(settings, n).write_text(str(p.pid))
            print(f"{n}: pid {p.pid}, gRPC 127.0.0.1:{ports['grpc']}, metrics 127.0.0.1:{ports['metrics']}/metrics")
        if detach:
            return 0
        print("serving; Ctrl-C stops")
        while all(p.poll() is None for _, p in procs):
            time.sleep(0.5)
        dead = [n for n, p in procs if p.poll() is not None]
        print(f"service(s) exited: {', '.join(dead)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if not detach:
            for n, p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for n, p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                _pid_file(settings, n).unlink(missing_ok=True)
