"""A study's working directory: steps whose outputs exist are skipped (resume).

Every step stores its JSON result under ``steps/<name>.json`` together with the hash
of the inputs it was run with; a re-run with the same inputs reuses it, a changed
input re-runs the step. Progress is one line per step with its wall time.

A step also records the fingerprint of the code that computed it (:func:`code_fingerprint`).
The inputs, not the code, decide reuse: a result computed by other code is still reused, but
it is flagged on the progress line and in the report (``reused_from_other_code``), so that an
upgrade never passes old numbers off as new ones; a fresh ``--out`` recomputes everything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the Python and JSON files of the ``clipaudit`` and ``services`` packages (paths
    and contents): what a step's result depends on besides its inputs."""
    import clipaudit
    import services

    h = hashlib.sha256()
    for pkg in (clipaudit, services):
        root = Path(pkg.__file__).parent
        for f in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".json") and p.is_file()
                        and "__pycache__" not in p.parts):
            h.update(f"{pkg.__name__}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class StepRecord:
    name: str
    seconds: float
    cached: bool
    study: str
    other_code: bool = False     # reused, but computed by other code (see the module docstring)


@dataclass
class Workspace:
    root: Path
    console: Console = field(default_factory=lambda: Console(stderr=True))
    records: list[StepRecord] = field(default_factory=list)
    study: str = "setup"

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        (self.root / "steps").mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _record_path(self, name: str) -> Path:
        return self.root / "steps" / (name.replace("/", "__") + ".json")

    def is_cached(self, name: str, inputs: Any = None) -> bool:
        p = self._record_path(name)
        return p.exists() and json.loads(p.read_text()).get("inputs_hash") == stable_hash(inputs)

    def step(self, name: str, fn: Callable[[], Any], *, inputs: Any = None) -> Any:
        """Run ``fn`` unless a result for ``name`` with the same ``inputs`` exists."""
        rec_path = self._record_path(name)
        key = stable_hash(inputs)
        if rec_path.exists():
            saved = json.loads(rec_path.read_text())
            if saved.get("inputs_hash") == key:
                other = saved.get("code") != code_fingerprint()
                self.records.append(StepRecord(name, 0.0, True, self.study, other))
                self.console.print(f"[dim]  {self.study:11s} {name} (done before, skipped)[/dim]" if not other else
                                   f"[yellow]  {self.study:11s} {name} (done before by other code, reused)[/yellow]")
                return saved["result"]
        t0 = time.perf_counter()
        self.console.print(f"  {self.study:11s} {name} ...")
        result = fn()
        dt = time.perf_counter() - t0
        tmp = rec_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"inputs_hash": key, "code": code_fingerprint(), "seconds": dt, "result": result},
                                  indent=1, default=str))
        tmp.replace(rec_path)
        self.records.append(StepRecord(name, dt, False, self.study))
        self.console.print(f"  {self.study:11s} {name} [green]done[/green] in {dt:.1f} s")
        return result

    def reused_from_other_code(self) -> list[str]:
        return [r.name for r in self.records if r.other_code]

    def timings(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.records:
            out[r.study] = out.get(r.study, 0.0) + r.seconds
        return out
