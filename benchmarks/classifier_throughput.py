"""Classification throughput (vectors/s) against a plain matrix-product ceiling, same run.

    python benchmarks/classifier_throughput.py                  # 1M x 512 float16 vectors
    python benchmarks/classifier_throughput.py --quick          # 100k vectors, smoke run
    python benchmarks/classifier_throughput.py --device cuda    # the same on a GPU (torch)

What is measured on the same float16 matrix and the same linear 2-class head:

* ``matmul_ceiling``: ``x @ W`` on the vectors already in float32 — the least work any
  linear classifier must do (no conversion, no sigmoid, no decision, no checks).
* ``matmul_from_float16``: the float16 -> float32 conversion + ``x @ W``, block by
  block: the ceiling for vectors stored as our embedding sets store them.
* ``scores``: ``DomainHeads.scores`` (conversion, matmul, bias, sigmoid) in blocks.
* ``classify``: ``ClassifierHandler.classify`` — the whole use case the CLI, gRPC and
  the worker call: input checks (finite, norms), scores, decisions, metrics.

Each is timed ``--repeats`` times; the best is reported with the ratio to the ceiling.
Prints one JSON object. Never fails on speed. The machine may be shared: compare the
ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchjson import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def make_model(dim: int, seed: int):
    from services.classifier.logic import DomainHeads
    from services.classifier.model_file import DomainClassifier

    rng = np.random.default_rng(seed)
    heads = DomainHeads("linear", {"W": rng.standard_normal((dim, 2)).astype(np.float32) * 5,
                                   "b": np.zeros(2, np.float32)})
    per = {c: {"threshold": 0.8} for c in ("natural", "rendition")}
    return DomainClassifier("bench@model", ["natural", "rendition"], heads,
                            {"default": {"per_class": per}, "strict": {"per_class": per}})


def run_cpu(x16: np.ndarray, model, repeats: int, block: int) -> dict:
    from prometheus_client import CollectorRegistry

    from services.classifier.handler import ClassifierHandler
    from services.classifier.metrics import ClassifierMetrics

    W = model.heads.weights["W"]
    x32 = x16.astype(np.float32)
    n = len(x16)

    def from16():
        for s in range(0, n, block):
            np.asarray(x16[s:s + block], dtype=np.float32) @ W

    handler = ClassifierHandler(metrics=ClassifierMetrics(CollectorRegistry()))
    timings = {
        "matmul_ceiling": best_of(lambda: x32 @ W, repeats),
        "matmul_from_float16": best_of(from16, repeats),
        "scores": best_of(lambda: model.heads.scores(x16, block_rows=block), repeats),
        "classify": best_of(lambda: handler.classify(model, x16, threshold="strict"), repeats),
    }
    del x32
    return timings


def run_cuda(x16: np.ndarray, model, repeats: int) -> dict:
    import torch

    dev = "cuda"
    xg = torch.from_numpy(x16).to(dev)
    W = torch.from_numpy(model.heads.weights["W"]).to(dev)
    b = torch.from_numpy(model.heads.weights["b"]).to(dev)
    thr = torch.full((2,), 0.8, device=dev)
    xg32 = xg.float()

    def sync(fn):
        def inner():
            fn()
            torch.cuda.synchronize()
        return inner

    def classify():
        s = torch.sigmoid(xg.float() @ W + b)
        passed = s >= thr
        d = torch.where(passed.any(1), torch.where(passed, s, -1.0).argmax(1), -1)
        return s.cpu(), d.cpu()

    for f in (lambda: xg32 @ W, classify):
        sync(f)()
    return {
        "matmul_ceiling": best_of(sync(lambda: xg32 @ W), repeats),
        "matmul_from_float16": best_of(sync(lambda: xg.float() @ W), repeats),
        "classify_torch_with_transfer_back": best_of(sync(classify), repeats),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block", type=int, default=1 << 16)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="100k vectors, 2 repeats")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats = min(args.n, 100_000), 2

    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x16 = x.astype(np.float16)
    del x
    model = make_model(args.dim, 1)
    timings = run_cuda(x16, model, args.repeats) if args.device == "cuda" else run_cpu(x16, model, args.repeats,
                                                                                        args.block)
    ceiling = timings["matmul_ceiling"]
    result = {
        "benchmark": "classifier_throughput",
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "n": args.n, "dim": args.dim, "dtype": "float16", "repeats": args.repeats, "block_rows": args.block,
        "loadavg": os.getloadavg(), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "vectors_per_s": {k: args.n / v for k, v in timings.items()},
        "seconds": timings,
        "fraction_of_matmul_ceiling": {k: ceiling / v for k, v in timings.items()},
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
