"""Pure similarity algorithms of the indexer: arrays in, arrays out.

Every embedding is L2-normalised, so cosine similarity is a dot product and
``sim(x, S) = max_{s in S} <x, s>``. Nothing here touches storage, transport or
metrics; the handler feeds it blocks streamed from embedding sets.

Arithmetic, stated once because the study depends on it:

* **Bulk similarity** (:func:`nn_similarity`) is a float32 matrix product followed
  by a running top-k: on CPU numpy's sgemm (OpenBLAS, the BLAS faiss uses too; torch's
  MKL sgemm measured 0.5-0.8x of it on the AMD development machine) into one reused
  buffer, on CUDA torch with TF32 off. Its values are exact up to float32 rounding of
  the dot product.
* **Ties** are broken deterministically: among equal similarities the *smaller
  reference position* (order in the reference set) comes first, whatever the block
  sizes or the device.
* **Threshold rules** (:func:`matched_thresholds`, :func:`matched_prune_masks`) must
  compare ``<x, t>`` with ``thr(t) = sim(t, R)`` *exactly*: a training image that is a
  copy of the reference image that set ``thr(t)`` ties and must stay. Two matrix
  products with different shapes may round one pair differently, so the decision is
  never taken on a GEMM value near the threshold. Every pair is first screened by the
  fast float32 GEMM; a pair whose GEMM value lies within the GEMM's proven error
  bound (:func:`gemm_error_bound`) of the threshold is recomputed with the one
  *canonical* kernel :func:`canonical_dot` (float64 products of the stored values,
  float64 sum, always the same code path), and thresholds are canonical values too.
  So threshold and comparison use the same arithmetic, and the invariant
  ``sim(t, pruned) <= thr(t)`` holds exactly in it. For float16-stored embeddings (the
  default) the canonical value is the exact real dot product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from clipaudit.errors import InvalidInput, ResourceExhausted

DEFAULT_QUERY_BLOCK = 4096
DEFAULT_REF_BLOCK = 4096   # smaller products stay cache-friendly for the top-k pass on CPU; GPUs like 16k+
# Rows are accepted as "normalised" within this tolerance of norm 1 (see clipaudit.embeddings.check_vectors).
NORM_TOLERANCE = 1e-2

ProgressFn = Callable[[int], None]


# -- devices and arithmetic ------------------------------------------------------------

def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU. ``cuda`` without CUDA is refused."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput("--device cuda was asked for but CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise InvalidInput(f"unknown device {device!r}: choose auto, cpu or cuda")
    dev = torch.device(name)
    if dev.type == "cuda":
        # exactness: no TF32 and no reduced-precision reductions in our products
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    return dev


def gemm_error_bound(dim: int, max_norm: float = 1.0 + NORM_TOLERANCE) -> float:
    """Worst-case |fl32(<x, y>) - <x, y>| of a float32 dot product of length ``dim``
    with ``|x|, |y| <= max_norm``, whatever the summation order: gamma_d * sum|x_i y_i|
    <= gamma_d * |x| |y| (Higham, Accuracy and Stability, 3.1), doubled for safety."""
    u = 2.0 ** -24
    gamma = dim * u / (1 - dim * u)
    return 2.0 * gamma * max_norm * max_norm + 2.0 ** -30


def canonical_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise <a_i, b_i> in the canonical arithmetic: float64 products of the stored
    values (exact for float32/float16 inputs) summed in float64 along one fixed path.
    Thresholds and the comparisons near them are decided with this function only."""
    a64 = np.ascontiguousarray(a, dtype=np.float64)
    b64 = np.ascontiguousarray(b, dtype=np.float64)
    return np.multiply(a64, b64).sum(axis=1)


# torch runs a copy of fewer elements than its parallel grain size (32768) on the calling
# thread, with F16C vector instructions: widening a 4096 x 512 float16 block this way takes
# ~0.5 ms, against ~6 ms for numpy's astype and ~8 ms through torch's OpenMP pool when the
# 2 cores are also running OpenBLAS's threads (measured on the development machine).
_SERIAL_COPY_ELEMENTS = 16384


def _widen_on_cpu(x: np.ndarray) -> torch.Tensor:
    """float16 (contiguous) -> a new float32 CPU tensor, exactly, without thread pools."""
    src = torch.from_numpy(x).view(-1)
    out = torch.empty(x.shape, dtype=torch.float32)
    flat = out.view(-1)
    for s in range(0, src.numel(), _SERIAL_COPY_ELEMENTS):
        flat[s:s + _SERIAL_COPY_ELEMENTS].copy_(src[s:s + _SERIAL_COPY_ELEMENTS])
    return out


def _to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 on the device; float16 blocks travel as float16 and widen there (exact)."""
    x = np.ascontiguousarray(x)
    if x.dtype not in (np.float16, np.float32):
        x = x.astype(np.float32)
    if device.type == "cpu":
        return _widen_on_cpu(x) if x.dtype == np.float16 else torch.from_numpy(x)
    t = torch.from_numpy(x).to(device)
    return t.float() if t.dtype != torch.float32 else t


# -- bulk nearest-neighbour similarity -------------------------------------------------

def _order_topk(vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k best of each row, ordered by (-similarity, position)."""
    o = torch.argsort(idx, dim=1, stable=True)
    vals, idx = vals.gather(1, o), idx.gather(1, o)
    o = torch.argsort(vals, dim=1, descending=True, stable=True)
    return vals.gather(1, o)[:, :k], idx.gather(1, o)[:, :k]


def _block_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of a similarity block, ties -> smaller column first."""
    if k == 1:
        if s.device.type == "cpu":
            # numpy's argmax is 2-3x faster than torch.max(dim=1) here (a single vectorised
            # pass); both return the first maximal column, so ties keep the smaller position
            a = s.numpy()
            i = a.argmax(axis=1)
            v = a[np.arange(len(a)), i]
            return torch.from_numpy(v)[:, None], torch.from_numpy(i)[:, None]
        v, i = torch.max(s, dim=1)  # documented: index of the first maximal value
        return v[:, None], i[:, None]
    kk = min(k, s.shape[1])
    v, i = torch.topk(s, kk, dim=1, sorted=True)
    # rows where the k-th value ties with values outside the selection: pick by position
    tied = (s >= v[:, -1:]).sum(dim=1) > kk
    if bool(tied.any()):
        rows = torch.nonzero(tied).flatten()
        sv, si = torch.sort(s[rows], dim=1, descending=True, stable=True)
        v[rows], i[rows] = sv[:, :kk], si[:, :kk]
    return _order_topk(v, i, kk)


class RunningTopK:
    """Merges per-block top-k results of a fixed query set, block by block. Blocks must
    arrive in reference order, so on equal similarity the entry already held wins."""

    def __init__(self, n: int, k: int, device: torch.device):
        self.k = k
        self.vals = torch.full((n, k), -math.inf, device=device)
        self.idx = torch.full((n, k), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)

    def update(self, rows: slice, vals: torch.Tensor, idx: torch.Tensor) -> None:
        if self.k == 1:
            better = vals[:, 0] > self.vals[rows, 0]  # strict: the earlier position keeps a tie
            self.vals[rows, 0] = torch.where(better, vals[:, 0], self.vals[rows, 0])
            self.idx[rows, 0] = torch.where(better, idx[:, 0], self.idx[rows, 0])
            return
        v, i = _order_topk(torch.cat([self.vals[rows], vals], 1), torch.cat([self.idx[rows], idx], 1), self.k)
        self.vals[rows], self.idx[rows] = v, i


class SimilarityBuffer:
    """One reusable output buffer for the (query block x ref block) products, so a
    long scan does not allocate (and page-fault) a fresh matrix per block.

    On CPU the product is numpy's float32 ``matmul`` (OpenBLAS sgemm) written into the
    buffer's memory, which the returned tensor shares; on CUDA it is ``torch.mm``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.flat = torch.empty(0, device=device)

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, m = a.shape[0], b.shape[0]
        if self.flat.numel() < n * m:
            self.flat = torch.empty(n * m, device=self.device)
        out = self.flat[: n * m].view(n, m)
        if self.device.type == "cpu":
            np.matmul(a.numpy(), b.numpy().T, out=out.numpy())
            return out
        return torch.mm(a, b.T, out=out)


def nn_similarity(
    queries: np.ndarray,
    ref_blocks: Iterable[np.ndarray],
    k: int = 1,
    *,
    device: str | torch.device = "cpu",
    query_block: int = DEFAULT_QUERY_BLOCK,
    on_block: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of every query against a streamed reference set.

    ``ref_blocks`` yields (rows, dim) blocks in reference order; each is used once and
    dropped, so peak memory is ``queries + one ref block + query_block x ref block``
    similarities, independent of the reference size. Returns ``(sims, positions)``,
    both ``(n_queries, k)``; positions index the concatenated reference set.
    Ties: smaller reference position first.
    """
    if k < 1:
        raise InvalidInput(f"k must be >= 1, got {k}")
    if query_block < 1:
        raise InvalidInput(f"query block must be >= 1, got {query_block}")
    dev = resolve_device(device)
    q = _to_device(queries, dev)
    nq = q.shape[0]
    top = RunningTopK(nq, k, dev)
    buf = SimilarityBuffer(dev)
    offset = 0
    for block in ref_blocks:
        if len(block) == 0:
            continue
        if block.shape[1] != q.shape[1]:
            raise InvalidInput(f"reference block has dimension {block.shape[1]}, queries {q.shape[1]}")
        r = _to_device(block, dev)
        for s in range(0, nq, query_block):
            rows = slice(s, min(nq, s + query_block))
            v, i = _block_topk(buf.product(q[rows], r), k)
            top.update(rows, v, i + offset)
        offset += len(block)
        if on_block:
            on_block(len(block))
    if offset == 0:
        raise InvalidInput("the reference set is empty")
    if offset < k:
        raise InvalidInput(f"k={k} is larger than the reference set ({offset} vectors)")
    return top.vals.cpu().numpy(), top.idx.cpu().numpy()


def max_similarity_streamed(
    query_blocks: Iterable[np.ndarray],
    reference: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    ref_block: int = DEFAULT_REF_BLOCK,
    query_block: int = DEFAULT_QUERY_BLOCK,
) -> Iterator[np.ndarray]:
    """``sim(x, reference)`` for every x of a streamed (large) query set with the
    reference (small, e.g. a test set) in memory: yields one float32 array per block."""
    dev = resolve_device(device)
    ref = np.ascontiguousarray(reference, dtype=np.float32)
    if len(ref) == 0:
        raise InvalidInput("the reference set is empty")
    for block in query_blocks:
        if len(block) == 0:
            yield np.zeros(0, np.float32)
            continue
        blocks = (ref[s:s + ref_block] for s in range(0, len(ref), ref_block))
        sims, _ = nn_similarity(block, blocks, 1, device=dev, query_block=query_block)
        yield sims[:, 0]


# -- near / far / random pruning ---------------------------------------------------------

def select_by_similarity(sims: np.ndarray, keep: int, mode: str) -> np.ndarray:
    """Positions of the ``keep`` training points to keep, sorted ascending.

    ``near``: the least similar to the test set (near-duplicates pruned);
    ``far``: the most similar. Ties: the smaller position wins.
    """
    n = len(sims)
    _check_keep(keep, n)
    pos = np.arange(n)
    if mode == "near":
        order = np.lexsort((pos, sims))
    elif mode == "far":
        order = np.lexsort((pos, -sims.astype(np.float64)))
    else:
        raise InvalidInput(f"unknown prune mode {mode!r}: near or far")
    return np.sort(order[:keep])


def select_random(n: int, keep: int, seed: int) -> np.ndarray:
    _check_keep(keep, n)
    return np.sort(np.random.default_rng(seed).choice(n, size=keep, replace=False))


def _check_keep(keep: int, n: int) -> None:
    if n == 0:
        raise InvalidInput("the training set is empty")
    if keep < 1 or keep > n:
        raise InvalidInput(f"--keep must be between 1 and the training set size {n}, got {keep}")


# -- similarity-matched pruning ----------------------------------------------------------

def matched_thresholds(
    tests: np.ndarray,
    ref_blocks: Iterable[np.ndarray],
    *,
    device: str | torch.device = "cpu",
    test_block: int = DEFAULT_QUERY_BLOCK,
    on_block: ProgressFn | None = None,
) -> np.ndarray:
    """``thr(t) = sim(t, R)`` for every test point, in the canonical arithmetic (float64).

    GEMM screens; every reference point whose GEMM value is within twice the error
    bound of the running GEMM maximum is recomputed canonically. The true canonical
    argmax is always among those (its GEMM value is >= max_gemm - 2*eps).
    """
    dev = resolve_device(device)
    tests = np.ascontiguousarray(tests, dtype=np.float32)
    m, d = tests.shape
    eps = gemm_error_bound(d)
    t_dev = _to_device(tests, dev)
    gemm_max = torch.full((m,), -math.inf, device=dev)
    thr = np.full(m, -np.inf, dtype=np.float64)
    buf = SimilarityBuffer(dev)
    seen = 0
    for block in ref_blocks:
        if len(block) == 0:
            continue
        block32 = np.asarray(block)   # rows picked for the canonical recheck are read from here
        r = _to_device(block32, dev)
        for s in range(0, m, test_block):
            rows = slice(s, min(m, s + test_block))
            sims = buf.product(t_dev[rows], r)
            gemm_max[rows] = torch.maximum(gemm_max[rows], sims.max(dim=1).values)
            ti, rj = torch.nonzero(sims >= (gemm_max[rows] - 2 * eps)[:, None], as_tuple=True)
            ti, rj = ti.cpu().numpy() + s, rj.cpu().numpy()
            np.maximum.at(thr, ti, canonical_dot(tests[ti], block32[rj]))
        seen += len(block)
        if on_block:
            on_block(len(block))
    if seen == 0:
        raise InvalidInput("the reference set is empty")
    return thr


def matched_prune_masks(
    train_blocks: Iterable[np.ndarray],
    test_sets: list[np.ndarray],
    thresholds: list[np.ndarray],
    *,
    device: str | torch.device = "cpu",
    test_block: int = DEFAULT_QUERY_BLOCK,
    stats: dict | None = None,
) -> Iterator[np.ndarray]:
    """For each streamed training block, a bool array (rows, n_test_sets): True where
    the training point is removed by that test set, i.e. ``<x, t> > thr(t)`` (strict,
    canonical arithmetic) for some t of the set. Only (test_block x train_block)
    similarities exist at any time; the train x test matrix never does.

    ``stats`` (optional) receives ``pairs``, ``rechecked`` (pairs decided canonically).
    """
    dev = resolve_device(device)
    if len(test_sets) != len(thresholds):
        raise InvalidInput("one threshold array per test set is needed")
    sets = []
    for t, thr in zip(test_sets, thresholds):
        t32 = np.ascontiguousarray(t, dtype=np.float32)
        thr = np.asarray(thr, dtype=np.float64)
        if len(t32) != len(thr):
            raise InvalidInput("thresholds and test vectors differ in length")
        d = t32.shape[1]
        eps = gemm_error_bound(d)
        # float32 bounds rounded outwards so the screen never decides a pair it should not
        hi = np.nextafter((thr + eps).astype(np.float32), np.float32(np.inf))
        lo = np.nextafter((thr - eps).astype(np.float32), np.float32(-np.inf))
        sets.append((t32, _to_device(t32, dev), thr, torch.from_numpy(hi).to(dev), torch.from_numpy(lo).to(dev)))
    stats = stats if stats is not None else {}
    stats.setdefault("pairs", 0)
    stats.setdefault("rechecked", 0)
    buf = SimilarityBuffer(dev)
    for block in train_blocks:
        x32 = np.asarray(block)
        removed = np.zeros((len(x32), len(sets)), dtype=bool)
        if len(x32) == 0:
            yield removed
            continue
        x = _to_device(x32, dev)
        for si, (t32, t_dev, thr, hi, lo) in enumerate(sets):
            removed_dev = torch.zeros(len(x32), dtype=torch.bool, device=dev)
            for s in range(0, len(t32), test_block):
                rows = slice(s, min(len(t32), s + test_block))
                sims = buf.product(t_dev[rows], x)
                removed_dev |= (sims > hi[rows, None]).any(dim=0)
                border = (sims >= lo[rows, None]) & ~removed_dev[None, :]
                ti, xj = torch.nonzero(border & (sims <= hi[rows, None]), as_tuple=True)
                if len(ti):
                    ti, xj = ti.cpu().numpy() + s, xj.cpu().numpy()
                    exceed = canonical_dot(t32[ti], x32[xj]) > thr[ti]
                    if exceed.any():
                        removed_dev[torch.from_numpy(np.unique(xj[exceed])).to(dev)] = True
                    stats["rechecked"] += len(ti)
                stats["pairs"] += (rows.stop - rows.start) * len(x32)
            removed[:, si] = removed_dev.cpu().numpy()
        yield removed


# -- deduplication ---------------------------------------------------------------------

def kmeans_assign(vectors: np.ndarray, n_clusters: int, *, seed: int = 0, niter: int = 20,
                  max_points_per_centroid: int = 256) -> np.ndarray:
    """Spherical k-means (faiss) on the vectors; returns each point's cluster id."""
    import faiss

    n, d = vectors.shape
    k = max(1, min(n_clusters, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max_points_per_centroid)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def greedy_dedup_cluster(vectors: np.ndarray, threshold: float, *, block: int = 2048) -> np.ndarray:
    """Inside one cluster, in order: keep a point iff its max similarity to the points
    kept before it is <= threshold. Similarities in float64 (exact for float16 data).
    Returns a bool mask of kept points.

    Blocked, so a large cluster never needs its n x n Gram matrix: each block of
    ``block`` points is first compared with the points kept in earlier blocks (in
    chunks), then the sequential rule runs inside the block."""
    n = len(vectors)
    keep = np.ones(n, dtype=bool)
    if n <= 1:
        return keep
    kept: list[np.ndarray] = []                       # float64 points kept by earlier blocks
    for s in range(0, n, block):
        x = np.asarray(vectors[s:s + block], dtype=np.float64)
        alive = np.ones(len(x), dtype=bool)           # no close point kept in an earlier block
        for k in kept:
            alive &= ~((x @ k.T) > threshold).any(axis=1)
        close = np.triu((x @ x.T) > threshold, k=1)  # close[i, j]: i before j and too similar
        kb = alive
        for j in np.flatnonzero(close.any(axis=0)):  # only points with a close earlier point
            if kb[j] and kb[np.flatnonzero(close[:j, j])].any():
                kb[j] = False
        keep[s:s + len(x)] = kb
        if kb.any():
            kept.append(x[kb])
    return keep


def dedup(vectors: np.ndarray, threshold: float, *, clusters: int = 1, seed: int = 0,
          assignments: np.ndarray | None = None) -> np.ndarray:
    """Positions kept by k-means + in-cluster greedy deduplication (sorted)."""
    if len(vectors) == 0:
        raise InvalidInput("the training set is empty")
    if not -1.0 <= threshold <= 1.0:
        raise InvalidInput(f"dedup threshold must be a cosine similarity in [-1, 1], got {threshold}")
    if clusters < 1:
        raise InvalidInput(f"--clusters must be >= 1, got {clusters}")
    assign = assignments if assignments is not None else kmeans_assign(vectors, clusters, seed=seed)
    keep = np.zeros(len(vectors), dtype=bool)
    order = np.argsort(assign, kind="stable")
    bounds = np.flatnonzero(np.diff(assign[order])) + 1
    for members in np.split(order, bounds):
        keep[members] = greedy_dedup_cluster(vectors[members], threshold)
    return np.flatnonzero(keep)


def kmeans_centroids(sample: np.ndarray, n_clusters: int, *, seed: int = 0, niter: int = 20) -> np.ndarray:
    """Spherical k-means (faiss) centroids trained on a sample (at most 256 points per
    centroid are used, as faiss would subsample anyway)."""
    import faiss

    x = np.ascontiguousarray(sample, dtype=np.float32)
    k = max(1, min(n_clusters, len(x)))
    if k == 1:
        return np.ascontiguousarray(x.mean(axis=0, keepdims=True))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=256)
    km.train(x)
    return km.centroids.copy()


def assign_to_centroids(block: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cluster id of every row: the most similar centroid, ties -> the smaller id."""
    if len(centroids) == 1:
        return np.zeros(len(block), dtype=np.int64)
    _, pos = nn_similarity(block, (centroids,), 1, device="cpu")
    return pos[:, 0]


def dedup_streamed(blocks: Iterable[np.ndarray], n: int, threshold: float, centroids: np.ndarray, spill_dir: str,
                   *, bucket_bytes: int = 1 << 30, dtype=np.float16, on_block: ProgressFn | None = None
                   ) -> np.ndarray:
    """:func:`dedup` for a set larger than memory. Returns the kept mask (n bools).

    Pass 1 streams the blocks, assigns each row to its cluster and appends it (float16,
    as stored, with its position) to one of B bucket files on local disk, a bucket
    holding whole clusters, B chosen so a bucket is about ``bucket_bytes``. ``dtype`` is
    the set's stored dtype, so spilling loses nothing. Pass 2
    reads one bucket at a time and runs the in-cluster greedy rule in training-set
    order. Peak memory: one block + one bucket (+ n bools), whatever n is."""
    if n == 0:
        raise InvalidInput("the training set is empty")
    if not -1.0 <= threshold <= 1.0:
        raise InvalidInput(f"dedup threshold must be a cosine similarity in [-1, 1], got {threshold}")
    import os

    k, d = centroids.shape
    rec = np.dtype([("cluster", np.int64), ("pos", np.int64), ("vec", dtype, (d,))])
    buckets = int(max(1, min(k, math.ceil(n * rec.itemsize / bucket_bytes))))
    files = [open(os.path.join(spill_dir, f"bucket-{b:05d}.bin"), "wb") for b in range(buckets)]
    start = 0
    try:
        for block in blocks:
            assign = assign_to_centroids(block, centroids)
            rows = np.empty(len(block), dtype=rec)
            rows["cluster"], rows["pos"] = assign, np.arange(start, start + len(block))
            rows["vec"] = block
            bucket = assign % buckets
            for b in np.unique(bucket):
                rows[bucket == b].tofile(files[b])
            start += len(block)
            if on_block:
                on_block(len(block))
    finally:
        for f in files:
            f.close()
    if start != n:
        raise InvalidInput(f"the training set has {start} rows, {n} were announced")
    keep = np.zeros(n, dtype=bool)
    for b in range(buckets):
        path = os.path.join(spill_dir, f"bucket-{b:05d}.bin")
        rows = np.fromfile(path, dtype=rec)
        os.remove(path)
        order = np.argsort(rows["cluster"], kind="stable")   # rows were written in position order
        rows = rows[order]
        bounds = np.flatnonzero(np.diff(rows["cluster"])) + 1
        for members in np.split(np.arange(len(rows)), bounds):
            keep[rows["pos"][members]] = greedy_dedup_cluster(rows["vec"][members], threshold)
    return keep


# -- FAISS index planning --------------------------------------------------------------

@dataclass(frozen=True)
class IndexPlan:
    factory: str          # faiss index_factory string
    estimated_bytes: int
    nprobe: int           # for IVF indexes; 0 otherwise
    train_size: int       # vectors needed to train; 0 if no training
    reason: str


FLAT_MAX_VECTORS = 20_000   # a Flat scan of more costs > ~5 ms per single query on a CPU core


def estimate_index_bytes(factory: str, n: int, dim: int) -> int:
    """Rough memory of a faiss index of ``n`` vectors (as autofaiss estimates it)."""
    if factory == "Flat":
        return n * dim * 4
    if factory.startswith("HNSW"):
        m = int(factory[4:].split(",")[0] or 32)
        return n * (dim * 4 + m * 2 * 4 + 16)
    if factory.startswith("IVF"):
        nlist_s, _, coder = factory[3:].partition(",")
        nlist = int(nlist_s)
        per_vector = dim * 4 if coder == "Flat" else int(coder[2:].split("x")[0])
        return n * (per_vector + 8) + nlist * dim * 4
    raise InvalidInput(f"cannot estimate the size of index type {factory!r}")


def choose_index(n: int, dim: int, memory_budget_bytes: int) -> IndexPlan:
    """Pick the index from the number of vectors and a memory budget.

    Flat (exact) while small and within budget; IVF with full vectors when they fit;
    IVF-PQ with the largest code that fits beyond; refuse when nothing fits.
    """
    if n <= 0:
        raise InvalidInput("cannot build an index of an empty set")
    flat = estimate_index_bytes("Flat", n, dim)
    if n <= FLAT_MAX_VECTORS and flat <= memory_budget_bytes:
        return IndexPlan("Flat", flat, 0, 0, f"{n} vectors <= {FLAT_MAX_VECTORS}: exact search")
    nlist = int(2 ** round(math.log2(max(16, 4 * math.sqrt(n)))))
    nlist = max(1, min(nlist, n // 39))
    nprobe = max(1, min(nlist, nlist // 64 if nlist >= 1024 else 16))
    train = min(n, max(39 * nlist, 10_000))
    ivf_flat = f"IVF{nlist},Flat"
    est = estimate_index_bytes(ivf_flat, n, dim)
    if est <= memory_budget_bytes:
        return IndexPlan(ivf_flat, est, nprobe, train, f"{n} vectors: inverted lists with full vectors fit the budget")
    for m in (dim // 2, dim // 4, dim // 8, dim // 16, dim // 32):
        if m < 1 or dim % m:
            continue
        fac = f"IVF{nlist},PQ{m}"
        est = estimate_index_bytes(fac, n, dim)
        if est <= memory_budget_bytes:
            return IndexPlan(fac, est, nprobe, min(n, max(train, 256 * 40)), f"{m}-byte PQ codes fit the budget")
    raise ResourceExhausted(
        f"no index of {n} x {dim} vectors fits a memory budget of {memory_budget_bytes / 2**30:.2f} GiB "
        f"(smallest: {estimate_index_bytes(f'IVF{nlist},PQ{max(1, dim // 32)}', n, dim) / 2**30:.2f} GiB)")


def plan_for_type(factory: str, n: int, dim: int) -> IndexPlan:
    """A plan for an explicitly named index type (``Flat``, ``HNSW32``, ``IVF1024,Flat``...)."""
    est = estimate_index_bytes(factory, n, dim)
    if factory.startswith("IVF"):
        nlist = int(factory[3:].split(",")[0])
        return IndexPlan(factory, est, min(nlist, 16), min(n, max(39 * nlist, 10_000)), "asked for")
    return IndexPlan(factory, est, 0, 0, "asked for")


def new_faiss_index(plan: IndexPlan, dim: int, train_vectors: np.ndarray | None = None):
    import faiss

    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        if train_vectors is None or len(train_vectors) < 1:
            raise InvalidInput(f"index type {plan.factory} needs training vectors")
        nlist = faiss.extract_index_ivf(index).nlist if plan.factory.startswith("IVF") else 1
        if len(train_vectors) < nlist:
            raise InvalidInput(f"index type {plan.factory} needs at least {nlist} training vectors, "
                               f"got {len(train_vectors)}")
        index.train(np.ascontiguousarray(train_vectors, dtype=np.float32))
    if plan.nprobe:
        faiss.extract_index_ivf(index).nprobe = plan.nprobe
    return index


def merge_topk(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (sims, global ids) results, each (nq, k_i), into the global top-k.
    Missing entries (faiss returns id -1) are dropped; ties -> smaller global id first."""
    sims = np.concatenate([r[0] for r in results], axis=1).astype(np.float64)
    ids = np.concatenate([r[1] for r in results], axis=1)
    sims = np.where(ids < 0, -np.inf, sims)
    big = np.iinfo(np.int64).max
    order = np.lexsort((np.where(ids < 0, big, ids), -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, 1).astype(np.float32), np.take_along_axis(ids, order, 1)
