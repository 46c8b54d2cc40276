"""Training throughput of the trainer against open_clip's own trainer and against a
model-only step ceiling: same model config, same WebDataset shards, same batch size,
same number of samples, same device, in the same run.

Every contender runs in a fresh Python process started the same way (so each pays its
own imports, data setup and model build), and the contenders are interleaved over
``--repeats`` rounds (the order rotates every round) so that a change of load on a
shared machine hits them alike. Per contender and round:

* ``whole_job_samples_per_s``: samples / wall time of the process (imports, indexing,
  decoding, model build, every step, the final checkpoint write: open_clip_train writes
  ``epoch_1.pt`` with the optimizer too).
* ``steady_samples_per_s``: batch / mean step time after ``--warmup`` steps.

Contenders:

* ``ours_memory``: ``services.trainer.handler.train`` (cache=memory: the decoded
  subset in RAM), thread count chosen by the trainer (``spec.threads=0``).
* ``ours_stream``: the same with the shards streamed every epoch by ``--workers``
  DataLoader processes (the LAION-scale path).
* ``open_clip_train``: ``open_clip_train.main`` on the same shards (``--workers``
  processes, the same grad clipping, LR and warmup; per-step times from its log).
* ``ceiling``: our optimizer step (same AdamW, loss, clipping, precision) on one batch
  already in memory, with the thread count that ``ours_memory`` chose in that round.

Ratios per round: ``ours_*/open_clip_train`` (goal >= 1.0, whole job and steady state)
and ``ours_*/ceiling`` (steady state, goal >= 0.9); the summary gives their median,
min and max over the rounds. Prints one JSON object; never fails on speed.

    flock /tmp/clipaudit-bench.lock python benchmarks/trainer_throughput.py --data /tmp/trainer-synth
    python benchmarks/trainer_throughput.py --quick
    python benchmarks/trainer_throughput.py --device cuda --model ViT-B-32 --batch-size 256 --precision amp_bf16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# open_clip_train 3.3 + webdataset 1.x: tar_file_expander yields an empty dict at the end of
# every shard (eof_value={}), which open_clip_train's group_by_keys_nothrow does not expect
# (KeyError 'fname'). webdataset's own switch eof_value=None turns the marker off; nothing
# else changes (open_clip_train already starts a new sample whenever the key changes).
OPEN_CLIP_TRAIN = (
    "import functools, sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
    "import open_clip_train.data as d; "
    "d.tar_file_expander = functools.partial(d.tar_file_expander, eof_value=None); "
    "from open_clip_train.main import main; main(sys.argv[2:])"
)


def steady_rate(times: list[float], batch: int, warmup: int) -> float:
    """samples/s from per-step wall times, the first ``warmup`` steps left out."""
    t = times[warmup:] if len(times) > warmup else times
    return batch / (sum(t) / len(t)) if t else 0.0


# --------------------------------------------------------------------------- children (one contender each)


def child_ceiling(args) -> dict:
    import torch

    from services.trainer import logic
    from services.trainer.handler import _build_model
    from services.trainer.spec import JobSpec

    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    built = _build_model(JobSpec(data=["-"], model=args.model), None)
    model = built.module.to(device).train()
    opt = logic.make_adamw(model, 5e-4, 0.2, (0.9, 0.98), 1e-6)
    stepper = logic.Stepper(model, logic.ClipObjective(), opt, precision=args.precision, device=device,
                            grad_clip=1.0, mean=built.mean, std=built.std)
    s = built.image_size
    g = torch.Generator().manual_seed(0)
    batch = logic.Batch(torch.randint(0, 256, (args.batch_size, s, s, 3), dtype=torch.uint8, generator=g),
                        built.tokenizer([f"a photo of thing {i}" for i in range(args.batch_size)]), None)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        stepper.step([batch], 5e-4)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"step_times": times, "steps": len(times), "threads": torch.get_num_threads() if device.type == "cpu" else 0}


def child_ours(args, cache: str) -> dict:
    import torch

    from services.trainer.handler import train
    from services.trainer.spec import JobSpec

    stamps: list[float] = []
    spec = JobSpec(data=[args.data], model=args.model, batch_size=args.batch_size, samples=args.steps * args.batch_size,
                   precision=args.precision, workers=args.workers if cache == "stream" else 0, cache=cache,
                   out=args.out, device=args.device, log_every=10_000, warmup_steps=min(10, args.steps),
                   threads=args.threads)
    t0 = time.perf_counter()
    r = train(spec, job_id=f"bench-{cache}", on_progress=lambda p: stamps.append(time.perf_counter()))
    t1 = time.perf_counter()
    ckpt = torch.load(r.checkpoint.uri, weights_only=True, map_location="cpu")
    return {"step_times": [b - a for a, b in zip(stamps, stamps[1:])], "steps": r.step,
            "setup_s": round(stamps[0] - t0, 2), "threads": ckpt.get("cpu_threads", 0),
            "final_checkpoint_s": round(t1 - stamps[-1], 2), "loss_first": r.losses[0], "loss_last": r.losses[-1]}


# --------------------------------------------------------------------------- parent


def run_child(args, kind: str, work: Path, threads: int = 0) -> dict:
    out = work / f"{kind}-{time.monotonic_ns()}"
    n = args.steps * args.batch_size
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if kind == "open_clip_train":
        from clipaudit.models import CONFIG_DIR
        from clipaudit.synth import Collection

        shards = [str(Path(args.data) / k) for k in Collection.load(args.data).shard_keys("train")]
        first, last = shards[0].rsplit("-", 1)[1][:6], shards[-1].rsplit("-", 1)[1][:6]
        pattern = shards[0].rsplit("-", 1)[0] + "-{" + first + ".." + last + "}.tar"
        cmd = [sys.executable, "-c", OPEN_CLIP_TRAIN, str(CONFIG_DIR),
               "--train-data", pattern, "--train-num-samples", str(n), "--dataset-type", "webdataset",
               "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", str(args.workers),
               "--model", args.model,
               "--precision", {"amp_bf16": "amp_bf16", "amp_fp16": "amp"}.get(args.precision, "fp32"),
               "--lr", "5e-4", "--wd", "0.2", "--warmup", str(min(10, args.steps)), "--grad-clip-norm", "1.0",
               "--log-every-n-steps", "1", "--logs", str(out), "--name", "bench", "--save-frequency", "0",
               "--report-to", "", "--seed", "0", "--dataset-resampled"]
    else:
        cmd = [sys.executable, __file__, "--child", kind, "--out", str(out), "--threads", str(threads),
               *args.child_argv]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if kind == "open_clip_train":
        log_file = out / "bench" / "out.log"   # the same lines also go to stdout: read one copy
        text = log_file.read_text() if log_file.is_file() else p.stdout + p.stderr
        shutil.rmtree(out / "bench" / "checkpoints", ignore_errors=True)   # ViT-B-32: 1.8 GB each
        times = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
        res = {"step_times": times, "steps": len(times)} if p.returncode == 0 and times else None
    else:
        text = p.stdout + p.stderr
        line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("{")), None)
        res = json.loads(line) if p.returncode == 0 and line else None
        shutil.rmtree(out, ignore_errors=True)
    if res is None:
        return {"error": f"rc={p.returncode}: {text.strip().splitlines()[-1] if text.strip() else ''}"[:300]}
    times = res.pop("step_times")
    res.update({
        "steady_samples_per_s": round(steady_rate(times, args.batch_size, args.warmup), 1),
        "whole_job_samples_per_s": round(n / wall, 1) if kind != "ceiling" else None,
        "wall_s": round(wall, 2), "loadavg_1min_before": round(load_before, 2),
    })
    return res


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def spread(xs: list) -> dict | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": round(statistics.median(xs), 3), "min": min(xs), "max": max(xs), "n": len(xs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="clipaudit-tiny")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=80, help="steps per contender (samples = steps x batch)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2, help="loader processes of ours_stream and open_clip_train")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16", "amp_fp16"])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--data", help="an existing synthetic collection (default: generate one)")
    ap.add_argument("--preset", default="small", help="preset to generate when --data is not given")
    ap.add_argument("--no-open-clip-train", action="store_true")
    ap.add_argument("--no-stream", action="store_true", help="skip the streaming source")
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny preset, 20 steps, one round")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0,
                    help="pin ours (and so the ceiling) to this many intra-op threads; 0: the trainer's choice")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.preset, args.batch_size, args.repeats = 20, "tiny", min(args.batch_size, 32), 1
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.child:
        res = child_ceiling(args) if args.child == "ceiling" else child_ours(args, args.child.split("_", 1)[1])
        print(json.dumps(res))
        return 0

    import torch

    work = Path(tempfile.mkdtemp(prefix="trainer-bench-"))
    if not args.data:
        from clipaudit.synth import generate

        args.data = str(work / "synth")
        generate(args.preset, args.data, seed=0, progress=False)
    # what every child of ours gets (device, model, sizes, data)
    args.child_argv = ["--device", args.device, "--model", args.model, "--batch-size", str(args.batch_size),
                      "--steps", str(args.steps), "--warmup", str(args.warmup), "--workers", str(args.workers),
                      "--precision", args.precision, "--data", args.data]
    kinds = ["ours_memory"] + ([] if args.no_stream else ["ours_stream"]) + \
            ([] if args.no_open_clip_train else ["open_clip_train"])
    result = {
        "benchmark": "trainer_throughput", "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu x{os.cpu_count()}",
        "model": args.model, "batch_size": args.batch_size, "steps": args.steps, "samples": args.steps * args.batch_size,
        "warmup_steps": args.warmup, "workers": args.workers, "precision": args.precision, "data": args.data,
        "repeats": args.repeats, "ours_threads": args.threads or "auto", "torch": torch.__version__,
        "loadavg_before": os.getloadavg(), "rounds": [],
    }
    for r in range(args.repeats):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
        rnd: dict = {"order": order}
        for kind in order:
            rnd[kind] = run_child(args, kind, work, threads=args.threads)
            if kind == "ours_memory":   # the ceiling right after, with the thread count ours chose
                rnd["ceiling"] = run_child(args, "ceiling", work, threads=rnd[kind].get("threads") or 0)
        oct_ = rnd.get("open_clip_train", {})
        for k in [k for k in ("ours_memory", "ours_stream") if k in rnd]:
            o = rnd[k]
            o["vs_open_clip_train_whole_job"] = ratio(o.get("whole_job_samples_per_s"), oct_.get("whole_job_samples_per_s"))
            o["vs_open_clip_train_steady"] = ratio(o.get("steady_samples_per_s"), oct_.get("steady_samples_per_s"))
            o["vs_ceiling_steady"] = ratio(o.get("steady_samples_per_s"), rnd["ceiling"].get("steady_samples_per_s"))
        result["rounds"].append(rnd)
        print(json.dumps({"round": r, **{k: {kk: v for kk, v in rnd[k].items() if "samples" in kk or kk.startswith("vs")}
                                         for k in rnd if k != "order"}}), file=sys.stderr)
    result["summary"] = {
        f"{k}.{m}": spread([rnd[k].get(m) for rnd in result["rounds"] if k in rnd])
        for k in ("ours_memory", "ours_stream")
        for m in ("vs_open_clip_train_whole_job", "vs_open_clip_train_steady", "vs_ceiling_steady")
        if k in kinds
    }
    result["summary"].update({
        f"{k}.{m}": spread([rnd[k].get(m) for rnd in result["rounds"] if k in rnd])
        for k in [*kinds, "ceiling"] for m in ("whole_job_samples_per_s", "steady_samples_per_s")
        if not (k == "ceiling" and m.startswith("whole"))
    })
    result["loadavg_after"] = os.getloadavg()
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
