"""`clipaudit embed` throughput against its two ceilings, same run.

    python benchmarks/embedder_throughput.py --model clipaudit-tiny --images 20000    # decode-bound
    python benchmarks/embedder_throughput.py --model ViT-B-32 --images 2000           # compute-bound on CPU
    python benchmarks/embedder_throughput.py --model ViT-B-32 --device cuda --images 100000
    python benchmarks/embedder_throughput.py --quick                                 # smoke run

What is measured, on the same JPEG shards and the same randomly initialised model:

* ``embed``: the whole ``clipaudit embed`` command in a subprocess — wall time with
  start-up (imports, model build, workers) — and its steady-state loop rate (the
  summary's ``images_per_s``), once with ``OMP_WAIT_POLICY=PASSIVE`` (our default)
  and once with OpenMP's default spin-waiting (``--omp both``); with ``--busy`` each
  of the two is also run beside a second busy process (``busy_process``: a torch
  matmul loop on every core, what another job on the machine looks like).
* ``model_ceiling``: the same model's ``encode_image`` on random tensors, same
  batch size and dtype/autocast, in this process (no decoding at all).
* ``decode_ceiling``: JPEG decode + our preprocessing alone, on every core (a
  process pool over the same images' bytes, no model).
* on CPU, the ``shared_core_bound`` ``1/(1/model + 1/decode)``: decoding and the model
  share the same cores, so neither ceiling can be reached while the other runs.

clip-retrieval on the same shards and weights: benchmarks/embedder_vs_clip_retrieval.py.

Prints one JSON object (also written to ``--out``). Never fails on speed. This
machine may be shared: compare the ratios, which are measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchjson import emit

ROOT = Path(__file__).resolve().parents[1]
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# --------------------------------------------------------------------------- data


def make_jpeg(seed: int, size: int) -> bytes:
    """A smooth gradient with noise and a blob: photo-like JPEG statistics."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c = rng.random((3, 3)).astype(np.float32)
    img = (c[:, 0, None, None] * xx + c[:, 1, None, None] * yy + c[:, 2, None, None]) * 160
    cx, cy, r = rng.random(3)
    blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.1 + 0.2 * r) ** 2) * rng.integers(40, 120)
    img = np.clip(img + blob + rng.normal(0, 12, (3, size, size)), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _make_range(args):
    start, stop, size = args
    return [make_jpeg(i, size) for i in range(start, stop)]


def make_shards(root: Path, n: int, size: int, per_shard: int) -> list[bytes]:
    """Write ``n`` images into WebDataset shards (jpg + txt + json); returns the jpeg bytes."""
    from multiprocessing import get_context

    from clipaudit.shards import ShardWriter

    chunks = [(s, min(n, s + 2000), size) for s in range(0, n, 2000)]
    with get_context("fork").Pool(CPUS) as pool:
        jpegs = [b for part in pool.map(_make_range, chunks) for b in part]
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, per_shard):
        with ShardWriter(root / f"bench-{s // per_shard:06d}.tar") as w:
            for i in range(s, min(n, s + per_shard)):
                w.write(f"{i:09d}", {"jpg": jpegs[i], "txt": f"a photo of object {i % 10}",
                                     "json": {"class": f"c{i % 10}", "class_id": i % 10, "domain": "natural"}})
    return jpegs


# --------------------------------------------------------------------------- ceilings


def model_ceiling(loaded, batch: int, precision: str, min_seconds: float, min_batches: int = 3) -> dict:
    """``encode_image`` on random pixels, same batch/precision, no decoding."""
    import torch

    from services.embedder.logic import BatchEncoder

    enc = BatchEncoder(loaded, precision=precision)
    s = loaded.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, s, s, 3), dtype=torch.uint8, generator=g)
    x = x.pin_memory() if enc.device.type == "cuda" else x
    with torch.inference_mode():
        pix = enc.pixels(x)
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)

    def forward():
        with torch.inference_mode():
            if enc.amp is not None:
                with torch.autocast(enc.device.type, dtype=enc.amp):
                    return loaded.model.encode_image(pix)
            return loaded.model.encode_image(pix)

    for _ in range(2):
        forward()
    sync()
    n, t0 = 0, time.perf_counter()
    while n < min_batches or time.perf_counter() - t0 < min_seconds:
        forward()
        n += 1
        if enc.device.type == "cuda" and n % 10:
            continue
        sync()
    sync()
    dt = time.perf_counter() - t0
    return {"images_per_s": n * batch / dt, "batches": n, "batch_size": batch, "seconds": dt,
            "autocast": str(enc.amp).replace("torch.", "") if enc.amp else "fp32"}


_JPEGS: list[bytes] = []
_SPEC = None


_ON_DEVICE = False


def _decode_range(bounds):
    from services.embedder.logic import decode_to_uint8

    a, b = bounds
    for i in range(a, b):
        decode_to_uint8(_JPEGS[i], _SPEC, resize_on_device=_ON_DEVICE)
    return b - a


def decode_ceiling(jpegs: list[bytes], spec, workers: int, resize_on_device: bool = False) -> dict:
    """Decode + the workers' share of preprocessing on every core, bytes already in
    memory (fork-shared). With ``resize_on_device`` (the GPU path) the workers only
    decode and cut the centre square; the resize then runs on the GPU."""
    from multiprocessing import get_context

    global _JPEGS, _SPEC, _ON_DEVICE
    _JPEGS, _SPEC, _ON_DEVICE = jpegs, spec, resize_on_device
    step = max(64, len(jpegs) // (workers * 8))
    bounds = [(s, min(len(jpegs), s + step)) for s in range(0, len(jpegs), step)]
    with get_context("fork").Pool(workers) as pool:
        pool.map(_decode_range, bounds[:workers])  # warm the workers
        t0 = time.perf_counter()
        n = sum(pool.map(_decode_range, bounds))
        dt = time.perf_counter() - t0
    return {"images_per_s": n / dt, "workers": workers, "seconds": dt,
            "preprocess": "decode + centre square (GPU resizes)" if resize_on_device else "decode + PIL resize/crop"}


# --------------------------------------------------------------------------- runs


BUSY_CODE = """
import torch
torch.set_num_threads({threads})
a = torch.randn(384, 384)
while True:
    a = torch.tanh(a @ a)
"""


def busy_process(threads: int) -> subprocess.Popen:
    """A second busy process: a torch matmul loop on ``threads`` threads (OpenMP's default wait policy)."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    p = subprocess.Popen([sys.executable, "-c", BUSY_CODE.format(threads=threads)], env=env)
    time.sleep(3.0)   # let it import torch and start spinning
    return p


def frozen_config(model: str, tmp: Path, result: dict) -> str:
    """Our JSON architectures (clipaudit/model_configs) are copied once, at the start, and
    every run of this benchmark loads that copy: an edit of the config during the run
    cannot make the saved checkpoint and the model disagree. Returns the model spec."""
    config = ROOT / "clipaudit" / "model_configs" / f"{model}.json"
    if not config.is_file():
        return model
    frozen = tmp / "config" / config.name
    frozen.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, frozen)
    result["model_config"] = json.loads(frozen.read_text())
    return str(frozen)


def children_cpu_s() -> float:
    """User + system CPU seconds of every finished child process (and theirs, once waited for).

    On a shared machine wall time measures the share of the cores a run got; CPU time
    measures the work it did, nearly independent of what else runs."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_embed(data: Path, model: str, out: Path, device: str, batch: int | None, workers: int | None,
              omp: str) -> dict:
    env = dict(os.environ)
    if omp == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env.pop("OMP_WAIT_POLICY", None)   # OpenMP's default: spin, then sleep
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "clipaudit.cli", "embed", "--data", str(data), "--model", model, "--out", str(out),
           "--device", device, "--quiet", "--json"]
    if batch:
        cmd += ["--batch-size", str(batch)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    t0, c0 = time.perf_counter(), children_cpu_s()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu_s() - c0
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    s = json.loads(p.stdout)
    return {"wall_s": wall, "images": s["images"], "images_per_s_wall": s["images"] / wall,
            "cpu_s": cpu, "images_per_cpu_s": s["images"] / cpu if cpu else None,
            "images_per_s_loop": s["images_per_s"], "startup_s": wall - s["seconds"],
            "batch_size": s["batch_size"], "workers": s["workers"], "omp_wait_policy": omp}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="clipaudit-tiny")
    ap.add_argument("--images", type=int, default=None, help="default: 20000 (tiny), 2000 (others); quick: 2000/200")
    ap.add_argument("--image-size", type=int, default=64, help="side of the JPEGs in the shards")
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="decode workers of `clipaudit embed` (default: all cores)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--busy", action="store_true",
                    help="also run each embed beside a second busy process (a torch matmul loop on every core)")
    ap.add_argument("--omp", choices=["passive", "both"], default="both",
                    help="also run embed with OpenMP's default spin-waiting (both)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary shards")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch

    from clipaudit.models import load_clip
    from services.embedder.logic import PixelSpec, choose_batch_size

    tiny = args.model == "clipaudit-tiny"
    n = args.images or ((2000 if tiny else 200) if args.quick else (20000 if tiny else 2000))
    tmp = Path(tempfile.mkdtemp(prefix="clipaudit-embed-bench-"))
    result: dict = {"benchmark": "embedder_throughput", "model": args.model, "device": args.device, "images": n,
                    "image_size": args.image_size, "cpus": CPUS, "torch_threads": torch.get_num_threads(),
                    "loadavg_start": os.getloadavg(), "torch": torch.__version__}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name()
    try:
        t0 = time.perf_counter()
        jpegs = make_shards(tmp / "data", n, args.image_size, args.per_shard)
        n_shards = (n + args.per_shard - 1) // args.per_shard
        result["shards"] = n_shards
        result["make_data_s"] = time.perf_counter() - t0

        arch = frozen_config(args.model, tmp, result)
        loaded = load_clip(arch, device=args.device, seed=0)
        batch = choose_batch_size(loaded, requested=args.batch_size, precision=args.precision)
        result["batch_size"] = batch
        ckpt = tmp / f"{args.model}-init0.pt"
        torch.save(loaded.model.state_dict(), ckpt)
        result["model_ceiling"] = model_ceiling(loaded, batch, args.precision,
                                                min_seconds=3.0 if args.quick else 10.0)
        spec = PixelSpec.of(loaded)
        del loaded
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        on_gpu = args.device.startswith("cuda")
        result["decode_ceiling"] = decode_ceiling(jpegs, spec, CPUS, resize_on_device=on_gpu)
        if on_gpu:   # for reference: what the CPU path's preprocessing would cost
            result["decode_ceiling_pil_resize"] = decode_ceiling(jpegs, spec, CPUS)
        lower = min(result["model_ceiling"]["images_per_s"], result["decode_ceiling"]["images_per_s"])
        result["lower_ceiling"] = {"images_per_s": lower, "bound": "model" if lower == result["model_ceiling"][
            "images_per_s"] else "decode"}
        if not args.device.startswith("cuda"):
            # on CPU decoding and the model share the same cores: neither ceiling can be
            # reached while the other runs; the pair's combined bound is harmonic
            m, d = result["model_ceiling"]["images_per_s"], result["decode_ceiling"]["images_per_s"]
            result["shared_core_bound"] = {"images_per_s": 1.0 / (1.0 / m + 1.0 / d)}

        model_spec = f"{arch}@{ckpt}"
        runs = {"passive": run_embed(tmp / "data", model_spec, tmp / "out", args.device, batch, args.workers,
                                     "passive")}
        if args.omp == "both":
            runs["spin"] = run_embed(tmp / "data", model_spec, tmp / "out", args.device, batch, args.workers, "spin")
        if args.busy:
            for omp in list(runs):
                hog = busy_process(CPUS)
                try:
                    runs[f"{omp}_beside_busy_process"] = run_embed(tmp / "data", model_spec, tmp / "out", args.device,
                                                                   batch, args.workers, omp)
                finally:
                    hog.kill()
                    hog.wait()
        result["embed"] = runs
        for r in runs.values():
            if "error" not in r:
                r["ratio_wall_to_lower_ceiling"] = r["images_per_s_wall"] / lower
                r["ratio_loop_to_lower_ceiling"] = r["images_per_s_loop"] / lower
                if "shared_core_bound" in result:
                    r["ratio_loop_to_shared_core_bound"] = r["images_per_s_loop"] / result["shared_core_bound"][
                        "images_per_s"]

        result["loadavg_end"] = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    emit(result, args.out, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
