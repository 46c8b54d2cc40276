"""`clipaudit embed` against clip-retrieval's `clip-retrieval inference`, same run.

    python benchmarks/embedder_vs_clip_retrieval.py --model ViT-B-32 --images 2000
    python benchmarks/embedder_vs_clip_retrieval.py --model clipaudit-tiny --images 20000
    python benchmarks/embedder_vs_clip_retrieval.py --model clipaudit-tiny --images 2000 --no-ceilings   # smoke

Both tools embed the same JPEG shards (written once, here) with the same randomly
initialised weights (one state-dict file, saved here, that both load), the same batch
size and the same number of decode workers, one after the other, in this run:

Each tool's wall time and CPU time (user + system of its whole process tree) are
recorded: on a shared machine the wall-time ratio also measures how the others' load
moved between the two runs; the CPU-time ratio (images per CPU-second) hardly does.

* ``ours``: the whole ``clipaudit embed`` command in a subprocess (wall time, start-up
  included) and its steady-state loop (its summary: workers starting -> last part
  written);
* ``peer``: clip-retrieval 2.45 from its own virtualenv (benchmarks/peers/
  clip_retrieval_venv.sh builds it, cached), run through
  benchmarks/peers/clip_retrieval_inference.py, which calls the same entry point as the
  ``clip-retrieval inference`` command with ``open_clip:<arch>/<checkpoint>`` (and
  registers our tiny JSON config with open_clip first). Wall time of the subprocess, and
  its loop: reader iteration start -> last batch written (its stats-logger tear-down,
  which follows, is reported apart as ``after_loop_s``).

The two outputs are also compared row by row (cosine of the same key's vectors): it
shows both ran the same weights, and how far the two preprocessings differ.

Also, with ``--ceilings`` (default), the model-only and decode ceilings of
embedder_throughput.py, for context. Prints one JSON object (also ``--out``). Never
fails on speed; run it under the benchmark lock on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from benchjson import emit  # noqa: E402
from embedder_throughput import (CPUS, children_cpu_s, decode_ceiling, frozen_config, make_shards,  # noqa: E402
                                 model_ceiling, run_embed)

PEER_VENV_SCRIPT = HERE / "peers" / "clip_retrieval_venv.sh"
PEER_RUNNER = HERE / "peers" / "clip_retrieval_inference.py"


def peer_venv(path: str | None) -> Path:
    """The clip-retrieval virtualenv: the given one, else built/reused by the script."""
    if path:
        return Path(path)
    p = subprocess.run(["bash", str(PEER_VENV_SCRIPT)], capture_output=True, text=True, check=True)
    return Path(p.stdout.strip().splitlines()[-1])


def run_peer(venv: Path, data: Path, n_shards: int, model: str, ckpt: Path, out: Path, batch: int,
             workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", CUDA_VISIBLE_DEVICES="")
    timing = out.parent / "peer-timing.json"
    shards = f"{data}/bench-{{{0:06d}..{n_shards - 1:06d}}}.tar" if n_shards > 1 else f"{data}/bench-000000.tar"
    cmd = [str(venv / "bin" / "python"), str(PEER_RUNNER), "--model", model, "--checkpoint", str(ckpt),
           "--input-dataset", shards, "--output-folder", str(out), "--batch-size", str(batch),
           "--workers", str(workers), "--timing-out", str(timing)]
    if model.endswith(".json"):   # our JSON architecture: registered with open_clip by the runner
        cmd[cmd.index("--model") + 1] = Path(model).stem
        cmd += ["--model-config", model,
                # our timm image towers (the tiny config names one), loaded by path: torch + timm only
                "--timm-towers", str(Path(__file__).resolve().parents[1] / "clipaudit" / "convnet.py")]
    t0, c0 = time.perf_counter(), children_cpu_s()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu_s() - c0
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:400]}
    t = json.loads(timing.read_text())
    n = sum(int(np.load(f, mmap_mode="r").shape[0]) for f in (out / "img_emb").glob("*.npy"))
    return {"wall_s": wall, "images": n, "images_per_s_wall": n / wall, "cpu_s": cpu,
            "images_per_cpu_s": n / cpu if cpu else None,
            "images_per_s_loop": n / t["loop_s"] if t.get("loop_s") else None,
            "startup_s": t.get("before_loop_s"), "import_s": t.get("import_s"), "loop_s": t.get("loop_s"),
            "after_loop_s": t.get("after_loop_s"), "batches": t.get("batches"), "open_clip": t.get("open_clip")}


def agreement(ours: Path, peer: Path) -> dict:
    """Cosine of the two tools' vectors for the same keys."""
    import pandas as pd

    ok = {}
    for f in sorted((ours / "img_emb").glob("img_emb_*.npy")):
        part = f.stem.removeprefix("img_emb_")
        keys = pd.read_parquet(ours / "metadata" / f"metadata_{part}.parquet")["key"]
        ok.update(zip(keys, np.load(f).astype(np.float32)))
    pv = np.concatenate([np.load(f).astype(np.float32) for f in sorted((peer / "img_emb").glob("*.npy"))])
    meta = pd.concat([pd.read_parquet(f) for f in sorted((peer / "metadata").glob("*.parquet"))])
    col = "image_path" if "image_path" in meta.columns else meta.columns[0]
    keys = [str(k).rsplit("/", 1)[-1].split(".")[0] for k in meta[col]]
    cos = np.array([float(ok[k] @ v) for k, v in zip(keys, pv) if k in ok])
    if not len(cos):
        return {"matched": 0}
    return {"matched": int(len(cos)), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="clipaudit-tiny")
    ap.add_argument("--images", type=int, default=None, help="default: 20000 (tiny), 2000 (others)")
    ap.add_argument("--image-size", type=int, default=64, help="side of the JPEGs in the shards")
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=256, help="both tools (256 is both CPU defaults)")
    ap.add_argument("--workers", type=int, default=CPUS, help="decode workers, both tools (default: all cores)")
    ap.add_argument("--peer-venv", default=None, help="default: built/reused by benchmarks/peers/clip_retrieval_venv.sh")
    ap.add_argument("--peer-first", action="store_true", help="run clip-retrieval before clipaudit")
    ap.add_argument("--no-ceilings", dest="ceilings", action="store_false")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch

    from clipaudit.models import load_clip
    from services.embedder.logic import PixelSpec

    n = args.images or (20000 if args.model == "clipaudit-tiny" else 2000)
    venv = peer_venv(args.peer_venv)
    tmp = Path(tempfile.mkdtemp(prefix="clipaudit-vs-cr-"))
    result: dict = {"benchmark": "embedder_vs_clip_retrieval", "model": args.model, "device": "cpu", "images": n,
                    "image_size": args.image_size, "batch_size": args.batch_size, "workers": args.workers,
                    "cpus": CPUS, "torch": torch.__version__, "omp_wait_policy": "PASSIVE (both)",
                    "loadavg_start": os.getloadavg(), "order": "peer first" if args.peer_first else "ours first"}
    try:
        t0 = time.perf_counter()
        jpegs = make_shards(tmp / "data", n, args.image_size, args.per_shard)
        n_shards = (n + args.per_shard - 1) // args.per_shard
        result["shards"], result["make_data_s"] = n_shards, time.perf_counter() - t0
        arch = frozen_config(args.model, tmp, result)
        loaded = load_clip(arch, device="cpu", seed=0)
        ckpt = tmp / f"{args.model}-init0.pt"
        torch.save(loaded.model.state_dict(), ckpt)
        if args.ceilings:
            result["model_ceiling"] = model_ceiling(loaded, args.batch_size, "auto", min_seconds=5.0)
            result["decode_ceiling"] = decode_ceiling(jpegs, PixelSpec.of(loaded), CPUS)
            m, d = result["model_ceiling"]["images_per_s"], result["decode_ceiling"]["images_per_s"]
            result["lower_ceiling"] = min(m, d)
            result["shared_core_bound"] = 1.0 / (1.0 / m + 1.0 / d)
        del loaded, jpegs

        def ours():
            r = run_embed(tmp / "data", f"{arch}@{ckpt}", tmp / "ours", "cpu", args.batch_size, args.workers,
                          "passive")
            result["ours"] = r

        def peer():
            result["peer"] = run_peer(venv, tmp / "data", n_shards, arch, ckpt, tmp / "peer",
                                      args.batch_size, args.workers)

        for step in ((peer, ours) if args.peer_first else (ours, peer)):
            step()
        o, p = result["ours"], result["peer"]
        if "error" not in o and "error" not in p:
            result["ours_over_peer_wall"] = o["images_per_s_wall"] / p["images_per_s_wall"]
            if p.get("images_per_s_loop"):
                result["ours_over_peer_loop"] = o["images_per_s_loop"] / p["images_per_s_loop"]
            if o.get("images_per_cpu_s") and p.get("images_per_cpu_s"):
                result["ours_over_peer_per_cpu_s"] = o["images_per_cpu_s"] / p["images_per_cpu_s"]
            goal = 1.1 if args.model != "clipaudit-tiny" else 3.0
            result["goal_ours_over_peer_wall"] = goal
            result["goal_met"] = result["ours_over_peer_wall"] >= goal
            if args.ceilings:
                for r in (o, p):
                    r["wall_over_lower_ceiling"] = r["images_per_s_wall"] / result["lower_ceiling"]
            result["same_weights_check"] = agreement(tmp / "ours", tmp / "peer")
        result["loadavg_end"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(result, args.out, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
