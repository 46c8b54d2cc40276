"""gRPC kNN query service: QPS and p50/p99 latency of Search (k=10, one vector per call)
on an index of N x 512 vectors, with the load generated from a second process.

    python benchmarks/indexer_grpc_qps.py            # 1M x 512 (index type chosen by the handler)
    python benchmarks/indexer_grpc_qps.py --quick    # 100k x 512
    python benchmarks/indexer_grpc_qps.py --nprobe 16,32,64 --concurrency 2,4

The embedding set, the built index and the exact top-k of the recall queries are
cached under ~/.cache/clipaudit/bench/indexer_grpc_qps/<size>-<type>/ (building the 1M
index takes minutes on 2 cores); delete that folder to rebuild. ``--nprobe`` sweeps
the IVF probe count on the served index (recall and speed per value).

The index is built by the handler exactly as `clipaudit index build` would (type from
size and memory budget, announced first); recall@10 against exact search is reported
next to the speed so the two are read together. Closed-loop load: C client threads,
each sending its next request when the last returned. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import os
import sys
import threading
import time
from pathlib import Path

from benchjson import emit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def clustered_set(path: str, n: int, dim: int, centers: np.ndarray, seed: int, part_rows: int = 100_000) -> None:
    """Embedding-like data: unit vectors around 2,000 cluster centres, stored as float16."""
    import pandas as pd

    from benchmarks.indexer_matched_prune import clustered
    from clipaudit.embeddings import EmbeddingSetWriter

    rng = np.random.default_rng(seed)
    w = EmbeddingSetWriter(path, model_id="bench", dim=dim, dtype="float16")
    for p, s in enumerate(range(0, n, part_rows)):
        m = min(part_rows, n - s)
        w.write_part(str(p), clustered(rng, m, dim, centers), pd.DataFrame({"key": [f"r{s + i}" for i in range(m)]}))


def load_generator(port: int, queries_path: str, k: int, concurrency: int, seconds: float) -> dict:
    import grpc

    from clipaudit.indexer.v1 import indexer_pb2, indexer_pb2_grpc

    queries = np.load(queries_path)
    dim = queries.shape[1]
    requests = [indexer_pb2.SearchRequest(index="bench", k=k, dim=dim, vectors=q) for q in queries]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = indexer_pb2_grpc.IndexerStub(channel)
    for r in requests[:20]:
        stub.Search(r)  # warm-up
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        j = i
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                stub.Search(requests[j % len(requests)], timeout=5)
                lat[i].append(time.perf_counter() - t0)
            except grpc.RpcError:
                errors[i] += 1
            j += concurrency

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_lat = np.array([x for l in lat for x in l])
    channel.close()
    return ({"concurrency": concurrency, "seconds": wall, "requests": int(len(all_lat)), "errors": int(sum(errors)),
               "qps": len(all_lat) / wall, "p50_ms": float(np.percentile(all_lat, 50) * 1e3),
               "p90_ms": float(np.percentile(all_lat, 90) * 1e3), "p99_ms": float(np.percentile(all_lat, 99) * 1e3)})


def build_or_load(cache: Path, args) -> dict:
    """The embedding set, the index (built by the handler as `clipaudit index build` would)
    and the exact top-k of the recall queries, cached between runs."""
    from benchmarks.indexer_matched_prune import clustered
    from clipaudit.embeddings import EmbeddingSet
    from clipaudit.store import open_store
    from services.indexer import logic
    from services.indexer.handler import IndexerHandler

    done = cache / "built.json"
    if done.exists():
        return json.loads(done.read_text())
    cache.mkdir(parents=True, exist_ok=True)
    crng = np.random.default_rng(0)
    centers = crng.standard_normal((2000, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    clustered_set(str(cache / "set"), args.vectors, args.dim, centers, seed=3)
    queries = clustered(np.random.default_rng(4), 1024, args.dim, centers).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    np.save(cache / "queries.npy", queries)
    handler = IndexerHandler(open_store(str(cache / "store")), memory_budget_bytes=int(args.memory_budget_gib * 2**30))
    announced: list[str] = []
    t0 = time.perf_counter()
    info = handler.build_index(str(cache / "set"), "bench", index_type=args.index_type, announce=announced.append)
    build_s = time.perf_counter() - t0
    es = EmbeddingSet.open(str(cache / "set"))
    _, exact_pos = logic.nn_similarity(queries[:RECALL_QUERIES], (b for b, _ in es.iter_blocks(65536)), args.k)
    keys = es.metadata(["key"])["key"].astype(str).to_numpy()
    np.save(cache / "exact_keys.npy", keys[exact_pos].astype("U"))
    built = {"index_type": info.index_type, "announced": announced, "build_seconds": build_s,
             "build_loadavg": os.getloadavg()}
    done.write_text(json.dumps(built))
    return built


RECALL_QUERIES = 500


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", default="2,4,8")
    ap.add_argument("--index-type", default=None, help="faiss factory string; default: chosen by the handler")
    ap.add_argument("--nprobe", default="", help="IVF probe counts to sweep (default: the index's own)")
    ap.add_argument("--server-threads", type=int, default=8, help="gRPC server thread pool")
    ap.add_argument("--faiss-threads", type=int, default=1, help="faiss OpenMP threads per search call")
    ap.add_argument("--memory-budget-gib", type=float, default=8.0)
    ap.add_argument("--cache", default=str(Path.home() / ".cache/clipaudit/bench/indexer_grpc_qps"))
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--load-generator-port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--queries-file", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_generator_port:   # the second process: generate load, print JSON
        print(json.dumps(load_generator(args.load_generator_port, args.queries_file, args.k, int(args.concurrency),
                                        args.seconds)))
        return
    if args.quick:
        args.vectors, args.seconds = 100_000, 10.0

    import faiss
    import torch
    from prometheus_client import CollectorRegistry

    from clipaudit.indexer.v1 import indexer_pb2_grpc
    from clipaudit.rpc import ServiceMetrics, build_server
    from clipaudit.store import open_store
    from services.indexer.grpc_api import SERVICE_NAME, IndexerServicer
    from services.indexer.handler import IndexerHandler
    from services.indexer.metrics import IndexerMetrics

    cache = Path(args.cache) / f"{args.vectors}x{args.dim}-{args.index_type or 'auto'}-{args.memory_budget_gib:g}GiB"
    built = build_or_load(cache, args)
    queries = np.load(cache / "queries.npy")
    exact_keys = np.load(cache / "exact_keys.npy")

    registry = CollectorRegistry()
    handler = IndexerHandler(open_store(str(cache / "store")), metrics=IndexerMetrics(registry))
    idx = handler._load_index("bench")
    faiss.omp_set_num_threads(args.faiss_threads)
    srv = build_server([(indexer_pb2_grpc.add_IndexerServicer_to_server, IndexerServicer(handler))], [SERVICE_NAME],
                       metrics=ServiceMetrics(registry, "indexer"), max_workers=args.server_threads)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    nprobes = [int(x) for x in args.nprobe.split(",") if x] or [int(idx.info.get("nprobe") or 0)]
    sweeps = []
    try:
        for nprobe in nprobes:
            if nprobe:
                for shard in idx.shards:
                    faiss.extract_index_ivf(shard.index).nprobe = nprobe
            approx = handler.search(index="bench", k=args.k, vectors=queries[:RECALL_QUERIES])
            recall = float(np.mean([len(set(a[0]) & set(e)) / args.k for a, e in zip(approx, exact_keys)]))
            runs = []
            for c in args.concurrency.split(","):
                out = subprocess.run([sys.executable, __file__, "--load-generator-port", str(srv.port), "--queries-file",
                                      str(cache / "queries.npy"), "--k", str(args.k), "--concurrency", c,
                                      "--seconds", str(args.seconds)],
                                     capture_output=True, text=True, env=env, timeout=args.seconds + 120)
                if out.returncode:
                    raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            sweeps.append({"nprobe": nprobe, "recall_at_k_vs_exact": recall, "recall_queries": RECALL_QUERIES,
                           "runs": runs})
    finally:
        srv.stop(0)
    result = {
        "benchmark": "indexer_grpc_qps", "vectors": args.vectors, "dim": args.dim, "k": args.k,
        "index_type": built["index_type"], "announced": built["announced"],
        "build_seconds": built["build_seconds"], "build_loadavg": built["build_loadavg"],
        "server_threads": args.server_threads, "faiss_threads_per_request": args.faiss_threads,
        "sweeps": sweeps, "goal": "QPS >= 200 at p99 <= 20 ms", "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
