"""Detached server processes: pid files, port checks, readiness polling, start/stop.

Each server lives in ``<state_dir>/<name>/`` with ``pid``, ``server.log`` and ``data/``.
A pid counts as *ours* only when the process is alive (not a zombie) and its command
line mentions that server's directory, so a recycled pid is never mistaken for it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from clipaudit.errors import Unavailable

# Popen objects of servers this interpreter started, kept so they are reaped (no zombies,
# no "subprocess still running" ResourceWarning) when stopped from the same process.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a text file ("" if it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is our child and has exited."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, given ``marker``, its cmdline contains it."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _is_zombie(pid):
        return False
    if marker is None:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


def read_pid(pid_file: Path, marker: str | None = None) -> int | None:
    """The pid recorded in ``pid_file`` if that process is still ours, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid, marker) else None


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on ``host:port`` or the port cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_detached(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_file: Path,
    pid_file: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start ``argv`` in its own session, output appended to ``log_file``; write the pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with log_file.open("ab") as log:
        header = f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(map(str, argv))}\n"
        log.write(header.encode())
        log.flush()
        child = subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[child.pid] = child
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(f"{child.pid}\n")
    os.replace(tmp, pid_file)
    return child.pid


def wait_ready(
    name: str,
    pid: int,
    check: Callable[[], bool],
    *,
    log_file: Path,
    timeout: float,
    interval: float = 0.25,
) -> float:
    """Poll ``check`` until it returns True; return the seconds waited.

    Raises ``Unavailable`` with the tail of the log if the process exits first or the
    timeout passes.
    """
    start = time.monotonic()
    child = _CHILDREN.get(pid)
    while True:
        if not pid_alive(pid):
            code = "unknown" if child is None else child.poll()
            raise Unavailable(
                f"{name} exited during startup (exit code {code}); last lines of {log_file}:\n"
                f"{tail(log_file)}"
            )
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            pass
        if time.monotonic() - start > timeout:
            raise Unavailable(
                f"{name} (pid {pid}) not ready after {timeout:.0f}s; last lines of {log_file}:\n"
                f"{tail(log_file)}"
            )
        time.sleep(interval)


def stop_pid(pid: int, timeout: float = 30.0) -> str:
    """SIGTERM the process group of ``pid``, SIGKILL after ``timeout`` s.

    Returns "stopped" or "killed".
    """
    def _signal(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    _signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _CHILDREN.pop(pid, None)
            return "stopped"
        time.sleep(0.1)
    _signal(signal.SIGKILL)
    for _ in range(50):
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    _CHILDREN.pop(pid, None)
    return "killed"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) held for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
