"""Exact bulk NN similarity: throughput vs the device's matrix-product ceiling for the
same shapes and vs faiss IndexFlatIP.search(k=1), and peak RSS as the reference grows.

    python benchmarks/indexer_nn_similarity.py                 # 20k x 1M x 512, RSS at 1M and 4M (CPU)
    python benchmarks/indexer_nn_similarity.py --quick         # 2k x 100k, RSS at 100k and 400k
    python benchmarks/indexer_nn_similarity.py --device cuda   # on the GPU (no faiss comparison there)

Prints one JSON object. Never fails on speed. Timings on a shared machine are noisy:
compare the ratios, which are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchjson import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def unit_rows(rng, n, d, dtype=np.float16, chunk=100_000):
    out = np.empty((n, d), dtype)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + len(x)] = x
    return out


def matmul_ceiling(torch, dev, qb, rb, d, seconds=3.0) -> dict:
    """GFLOP/s of the bare float32 product of one (qb x d) by (d x rb) block, repeated,
    for every matrix-product library at hand (CPU: torch's MKL and numpy's OpenBLAS;
    CUDA: torch). The ceiling is the best of them."""
    a = torch.randn(qb, d, device=dev)
    b = torch.randn(rb, d, device=dev)
    out = torch.empty(qb, rb, device=dev)
    products = {"torch.mm": lambda: torch.mm(a, b.T, out=out)}
    if dev.type == "cpu":
        an, bn, on = a.numpy(), b.numpy(), out.numpy()
        products["numpy.matmul"] = lambda: np.matmul(an, bn.T, out=on)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    rates = {}
    for name, product in products.items():
        for _ in range(2):
            product()
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            product()
            n += 1
            if dev.type == "cuda" and n % 20:
                continue
            sync()
        sync()
        rates[name] = 2.0 * qb * rb * d * n / (time.perf_counter() - t0) / 1e9
    return rates


def rss_child(refs: int, dim: int, queries: int, block: int) -> dict:
    """Peak RSS of a fresh process scanning an on-disk embedding set of ``refs`` vectors
    through the handler (parts -> validated blocks -> nn_similarity). The sets are
    written by another process first, so only the scan counts."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    d = tempfile.mkdtemp(prefix="idxbench-")
    try:
        subprocess.run([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
from benchmarks.indexer_nn_similarity import write_set_streaming
write_set_streaming({d!r} + '/ref', {refs}, {dim}, seed=1)
write_set_streaming({d!r} + '/q', {queries}, {dim}, seed=2)
"""], env=env, check=True)
        out = subprocess.run([sys.executable, "-c", f"""
import os, sys, threading, time
sys.path.insert(0, {str(ROOT)!r})
from services.indexer.handler import IndexerHandler
from clipaudit.store import open_store
page = os.sysconf('SC_PAGE_SIZE')
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * page // 1024
h = IndexerHandler(open_store({d!r} + '/store'), device='cpu', ref_block={block})
base, peak, done = rss(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.02)
th = threading.Thread(target=sample); th.start()
t0 = time.perf_counter()
h.similarity({d!r} + '/q', {d!r} + '/ref', {d!r} + '/out.parquet')
dt = time.perf_counter() - t0
done.set(); th.join()
print(max(peak[0], rss()), base, dt)
"""], capture_output=True, text=True, env=env, check=True)
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)
    peak_kb, base_kb, dt = out.stdout.split()
    return {"refs": refs, "peak_rss_mib": int(peak_kb) / 1024, "rss_before_scan_mib": int(base_kb) / 1024,
            "rss_growth_during_scan_mib": (int(peak_kb) - int(base_kb)) / 1024,
            "reference_bytes_mib": refs * dim * 2 / 2**20, "seconds": float(dt)}


def write_set_streaming(path: str, n: int, dim: int, seed: int, part_rows: int = 100_000) -> None:
    """An embedding set written part by part (never all in memory)."""
    import pandas as pd

    from clipaudit.embeddings import EmbeddingSetWriter

    rng = np.random.default_rng(seed)
    w = EmbeddingSetWriter(path, model_id="bench", dim=dim, dtype="float16")
    for p, s in enumerate(range(0, n, part_rows)):
        m = min(part_rows, n - s)
        w.write_part(str(p), unit_rows(rng, m, dim), pd.DataFrame({"key": [f"r{s + i}" for i in range(m)]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--refs", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--query-block", type=int, default=4096)
    ap.add_argument("--ref-block", type=int, default=4096)
    ap.add_argument("--rss-refs", default="1000000,4000000", help="reference sizes for the peak-RSS runs ('' to skip)")
    ap.add_argument("--rss-queries", type=int, default=1000)
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2k x 100k; RSS at 100k and 400k")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.quick:
        args.queries, args.refs, args.rss_refs = 2000, 100_000, "100000,400000"

    import torch

    from services.indexer import logic

    dev = logic.resolve_device(args.device)
    rng = np.random.default_rng(0)
    q = unit_rows(rng, args.queries, args.dim).astype(np.float32)
    r = unit_rows(rng, args.refs, args.dim)   # float16, as embedding sets store them
    flops = 2.0 * args.queries * args.refs * args.dim
    qb, rb = min(args.query_block, args.queries), min(args.ref_block, args.refs)
    result = {"benchmark": "indexer_nn_similarity", "device": str(dev), "queries": args.queries,
              "refs": args.refs, "dim": args.dim, "query_block": qb, "ref_block": rb,
              "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "loadavg_before": os.getloadavg()}
    if dev.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)

    def ref_blocks():
        for s in range(0, len(r), rb):
            yield r[s:s + rb]

    def run_ours():
        t0 = time.perf_counter()
        out = logic.nn_similarity(q, ref_blocks(), 1, device=dev, query_block=qb)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    index = None
    if not args.no_faiss and dev.type == "cpu":
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        index = faiss.IndexFlatIP(args.dim)
        for s in range(0, len(r), 100_000):
            index.add(np.ascontiguousarray(r[s:s + 100_000], dtype=np.float32))

    logic.nn_similarity(q[:qb], (r[:rb],), 1, device=dev, query_block=qb)  # warm-up
    # interleaved repeats, best of each: on a shared machine the minimum is the least-disturbed run
    ceilings, ours_t, faiss_t = [], [], []
    for _ in range(args.repeats):
        ceilings.append(matmul_ceiling(torch, dev, qb, rb, args.dim))
        t, (sims, pos) = run_ours()
        ours_t.append(t)
        if index is not None:
            t0 = time.perf_counter()
            fs, fi = index.search(q, 1)
            faiss_t.append(time.perf_counter() - t0)
    ours = min(ours_t)
    ceiling = max(max(c.values()) for c in ceilings)
    result.update({"repeats": args.repeats, "matmul_ceiling_gflops": ceiling,
                   "matmul_gflops_by_library": {name: max(c[name] for c in ceilings) for name in ceilings[0]},
                   "ours_seconds_all": ours_t,
                   "ours_seconds": ours, "ours_gflops": flops / ours / 1e9,
                   "ratio_to_matmul_ceiling": flops / ours / 1e9 / ceiling})
    if index is not None:
        ft = min(faiss_t)
        result.update({"faiss_flatip_seconds_all": faiss_t, "faiss_flatip_seconds": ft,
                       "speedup_vs_faiss_flatip": ft / ours,
                       "top1_agreement_with_faiss": float((fi[:, 0] == pos[:, 0]).mean()),
                       "max_abs_sim_diff_vs_faiss": float(np.abs(fs[:, 0] - sims[:, 0]).max())})
        del index
    del r
    if args.rss_refs:
        result["peak_rss"] = [rss_child(int(n), args.dim, args.rss_queries, args.ref_block)
                              for n in args.rss_refs.split(",") if n]
    result["loadavg_after"] = os.getloadavg()
    emit(result, args.out)


if __name__ == "__main__":
    main()
