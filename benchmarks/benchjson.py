"""How every benchmark hands over its figures: one JSON document on stdout and, with
``--out``, the same text in a file (the scripts run as ``python benchmarks/<name>.py``,
so this module is importable as ``benchjson``)."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: str | None = None, *, sort_keys: bool = False) -> str:
    text = json.dumps(result, indent=2, sort_keys=sort_keys)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return text
