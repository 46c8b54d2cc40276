"""Training throughput of the trainer against open_clip's own trainer and against a
model-only step ceiling, on the same model, data and device, in the same run.

Measured (samples/s, mean step time after warm-up steps):
* ``ceiling``: our optimizer step (same AdamW, loss, clipping, precision) on one
  pre-made batch already in memory: no data loading at all.
* ``ours_memory``: ``services.trainer.handler.train`` with the decoded subset cached in RAM.
* ``ours_stream``: the same with shards streamed every epoch (``--workers`` processes).
* ``open_clip_train``: ``open_clip_train.main`` on the same WebDataset shards, same
  batch size, workers, precision and device (skipped with ``--no-open-clip-train``).

Ratios: ``ours_*/open_clip_train`` (goal >= 1.0) and ``ours_*/ceiling`` (goal >= 0.9).
Prints one JSON object; never fails on speed.

    python benchmarks/trainer_throughput.py --quick
    python benchmarks/trainer_throughput.py --device cuda --model ViT-B-32 --batch-size 256 --precision amp_bf16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rate_after_warmup(times: list[float], batch: int, warmup: int) -> float:
    """samples/s from per-step wall times, the first ``warmup`` steps left out."""
    t = times[warmup:] if len(times) > warmup else times
    return batch / (sum(t) / len(t)) if t else 0.0


def bench_ceiling(args, device) -> float:
    import torch

    from clipaudit.models import load_clip
    from services.trainer import logic

    m = load_clip(args.model, device=str(device))
    model = m.model.train()
    opt = logic.make_adamw(model, 5e-4, 0.2, (0.9, 0.98), 1e-6)
    stepper = logic.Stepper(model, logic.ClipObjective(), opt, precision=args.precision, device=device,
                            grad_clip=1.0, mean=logic.OPENAI_MEAN, std=logic.OPENAI_STD)
    s = m.image_size
    g = torch.Generator().manual_seed(0)
    batch = logic.Batch(torch.randint(0, 256, (args.batch_size, s, s, 3), dtype=torch.uint8, generator=g),
                        m.tokenizer([f"a photo of thing {i}" for i in range(args.batch_size)]), None)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        stepper.step([batch], 5e-4)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return rate_after_warmup(times, args.batch_size, args.warmup)


def bench_ours(args, data: str, cache: str, out: str) -> dict:
    from services.trainer.handler import train
    from services.trainer.spec import JobSpec

    stamps: list[float] = []
    spec = JobSpec(data=[data], model=args.model, batch_size=args.batch_size, samples=args.steps * args.batch_size,
                   precision=args.precision, workers=args.workers if cache == "stream" else 0, cache=cache,
                   out=out, device=args.device, log_every=10_000, warmup_steps=min(10, args.steps))
    t0 = time.perf_counter()
    r = train(spec, job_id=f"bench-{cache}", on_progress=lambda p: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"samples_per_s": rate_after_warmup(times, args.batch_size, args.warmup), "steps": r.step,
            "wall_s_incl_setup": round(wall, 2), "loss_first": r.losses[0], "loss_last": r.losses[-1]}


def bench_open_clip_train(args, data: str, logs: str) -> dict:
    from clipaudit.models import CONFIG_DIR
    from clipaudit.synth import Collection

    coll = Collection.load(data)
    shards = [str(Path(data) / k) for k in coll.shard_keys("train")]
    first, last = shards[0].rsplit("-", 1)[1][:6], shards[-1].rsplit("-", 1)[1][:6]
    pattern = shards[0].rsplit("-", 1)[0] + "-{" + first + ".." + last + "}.tar"
    n = args.steps * args.batch_size
    argv = ["--train-data", pattern, "--train-num-samples", str(n), "--dataset-type", "webdataset",
            "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", str(args.workers),
            "--model", args.model, "--precision", {"amp_bf16": "amp_bf16", "amp_fp16": "amp"}.get(args.precision, "fp32"),
            "--lr", "5e-4", "--warmup", str(min(10, args.steps)), "--log-every-n-steps", "1",
            "--logs", logs, "--name", "bench", "--save-frequency", "0", "--report-to", "", "--seed", "0",
            "--dataset-resampled"]
    # webdataset 1.x yields an empty dict at the end of each shard, which open_clip_train
    # 3.3's group_by_keys_nothrow does not expect (KeyError 'fname'): drop those markers.
    code = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
            "import open_clip_train.data as d; _x = d.tar_file_expander; "
            "d.tar_file_expander = lambda *a, **k: (s for s in _x(*a, **k) if s); "
            "from open_clip_train.main import main; main(sys.argv[2:])")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, str(CONFIG_DIR), *argv], capture_output=True, text=True, env=env,
                       timeout=args.timeout)
    wall = time.perf_counter() - t0
    log_file = Path(logs) / "bench" / "out.log"   # the same lines also go to stdout: read one copy
    text = log_file.read_text() if log_file.is_file() else p.stdout + p.stderr
    times = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
    if p.returncode != 0 or not times:
        return {"error": f"rc={p.returncode}: {text.strip().splitlines()[-1] if text.strip() else ''}"[:300]}
    return {"samples_per_s": rate_after_warmup(times, args.batch_size, args.warmup), "steps": len(times),
            "wall_s_incl_setup": round(wall, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="clipaudit-tiny")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16", "amp_fp16"])
    ap.add_argument("--data", help="an existing synthetic collection (default: generate one)")
    ap.add_argument("--preset", default="small", help="preset to generate when --data is not given")
    ap.add_argument("--no-open-clip-train", action="store_true")
    ap.add_argument("--no-stream", action="store_true", help="skip the streaming source")
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny preset, 20 steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.preset, args.batch_size = 20, "tiny", min(args.batch_size, 32)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    work = Path(tempfile.mkdtemp(prefix="trainer-bench-"))
    data = args.data
    if not data:
        from clipaudit.synth import generate

        data = str(work / "synth")
        generate(args.preset, data, seed=0, progress=False)
    result = {
        "benchmark": "trainer_throughput", "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "model": args.model, "batch_size": args.batch_size, "steps": args.steps, "warmup_steps": args.warmup,
        "workers": args.workers, "precision": args.precision, "data": data,
        "loadavg_before": os.getloadavg(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    result["ceiling_samples_per_s"] = bench_ceiling(args, device)
    result["ours_memory"] = bench_ours(args, data, "memory", str(work / "ours-memory"))
    if not args.no_stream:
        result["ours_stream"] = bench_ours(args, data, "stream", str(work / "ours-stream"))
    if not args.no_open_clip_train:
        result["open_clip_train"] = bench_open_clip_train(args, data, str(work / "oct-logs"))
    ceiling = result["ceiling_samples_per_s"]
    oct_rate = result.get("open_clip_train", {}).get("samples_per_s")
    for k in [k for k in ("ours_memory", "ours_stream") if k in result]:
        r = result[k]["samples_per_s"]
        result[k]["vs_ceiling"] = round(r / ceiling, 3) if ceiling else None
        result[k]["vs_open_clip_train"] = round(r / oct_rate, 3) if oct_rate else None
    result["loadavg_after"] = os.getloadavg()
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
