"""Where `clipaudit embed`'s start-up goes: imports, model build, workers, first batch.

    python benchmarks/embedder_startup.py --model clipaudit-tiny --repeat 3

Each step runs in a fresh interpreter (as `clipaudit embed` does), ``--repeat`` times,
and the median is reported; the steps are cumulative, so the differences are the cost
of each piece:

* ``python``: the interpreter alone (``python -c pass``);
* ``import_torch``: + ``import torch``;
* ``import_open_clip``: + ``import open_clip`` (it imports torchvision, which imports
  torch._dynamo, and timm);
* ``import_embedder``: + the embedder's own modules (handler, reader, store, shards);
* ``build_model``: + ``load_clip`` (the model built, random init);
* ``embed_one_shard``: the whole ``clipaudit embed`` command on a shard of 8 images
  (workers forked, the batch embedded, the part written) — its time is the fixed cost
  every run pays before its throughput matters.

Prints one JSON object (also ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchjson import emit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

STEPS = {
    "python": "pass",
    "import_torch": "import torch",
    "import_open_clip": "import torch, open_clip",
    "import_embedder": "import torch, open_clip, services.embedder.handler, clipaudit.store, clipaudit.embeddings",
    "build_model": ("import services.embedder.handler, clipaudit.store, clipaudit.embeddings\n"
                    "from clipaudit.models import load_clip\nload_clip({model!r}, seed=0)"),
}


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="clipaudit-tiny")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from embedder_throughput import frozen_config, make_shards

    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    tmp = Path(tempfile.mkdtemp(prefix="clipaudit-startup-"))
    result: dict = {"benchmark": "embedder_startup", "model": args.model, "repeat": args.repeat,
                    "cpus": len(os.sched_getaffinity(0)), "loadavg_start": os.getloadavg()}
    try:
        model = frozen_config(args.model, tmp, result)
        make_shards(tmp / "data", 8, 64, 8)
        runs: dict[str, list[float]] = {k: [] for k in [*STEPS, "embed_one_shard"]}
        for _ in range(args.repeat):   # interleaved, so a burst of load hits every step alike
            for name, code in STEPS.items():
                runs[name].append(timed([sys.executable, "-c", code.format(model=model)], env))
            shutil.rmtree(tmp / "out", ignore_errors=True)
            runs["embed_one_shard"].append(timed(
                [sys.executable, "-m", "clipaudit.cli", "embed", "--data", str(tmp / "data"), "--model", model,
                 "--out", str(tmp / "out"), "--quiet"], env))
        med = {k: statistics.median(v) for k, v in runs.items()}
        result["median_s"] = med
        result["runs_s"] = runs
        order = list(STEPS) + ["embed_one_shard"]
        result["increment_s"] = {k: med[k] - (med[order[i - 1]] if i else 0.0) for i, k in enumerate(order)}
        result["loadavg_end"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(result, args.out, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
