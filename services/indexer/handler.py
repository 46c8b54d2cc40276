"""Use cases of the indexer, one method each. The CLI, the gRPC servicer, the Kafka
worker and embedded mode all call this class; ports (store, metrics, the text
embedder) are injected.

Inputs are embedding sets (``clipaudit.embeddings``) named by location (a local
directory or ``s3://bucket/prefix``). Vectors read from a set must be finite, of the
set's dimension and L2-normalised: unnormalised rows in a *set* are refused (they mean
an upstream bug). Ad-hoc query vectors sent to :meth:`IndexerHandler.search` are
normalised (only their direction matters); NaN/inf/zero rows are refused there too.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from clipaudit.embeddings import EmbeddingSet, check_vectors, require_same_model
from clipaudit.errors import ClipauditError, FailedPrecondition, InvalidInput, NotFound
from clipaudit.manifests import Manifest, write_manifest
from clipaudit.store import Store, open_store
from services.indexer import logic

log = logging.getLogger(__name__)

EmbedTexts = Callable[[list[str]], np.ndarray]
INDEX_PREFIX = "indexes"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _counted(operation: str):
    """Count refused requests (any ClipauditError) per operation, then re-raise."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except ClipauditError as e:
                if self.metrics is not None:
                    self.metrics.rejected.labels(operation, type(e).__name__).inc()
                raise
        return inner
    return wrap


def _split_location(location: str) -> tuple[Store, str]:
    loc = str(location).rstrip("/")
    parent, _, name = loc.rpartition("/")
    if not name:
        raise InvalidInput(f"not a file location: {location!r}")
    return open_store(parent or "."), name


def put_object(location: str, data: bytes) -> str:
    store, name = _split_location(location)
    store.put_bytes(name, data)
    return store.uri(name)


def get_object(location: str) -> bytes:
    store, name = _split_location(location)
    return store.get_bytes(name)


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not (enabled and sys.stderr.isatty()))


# -- process memory ----------------------------------------------------------------------

def use_fixed_mmap_threshold(threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes or more with mmap, always (glibc).

    By default glibc raises its mmap threshold after the first multi-MB free, so the
    per-block temporaries of a long scan (8-16 MB each) then come from heap arenas that
    fragment: matched pruning over 1M training vectors grew RSS by 790 MiB that way, and by
    159 MiB with a fixed threshold (measured, README). Same as ``MALLOC_MMAP_THRESHOLD_``.
    Returns False where this is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))     # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


# -- streaming an embedding set -----------------------------------------------------------

class SetScan:
    """Streams an embedding set in validated float32 blocks, part by part, and remembers
    each part's length so positions can be mapped back to keys afterwards without
    holding every key in memory."""

    def __init__(self, eset: EmbeddingSet, block_rows: int, *, on_bytes: Callable[[int], None] | None = None,
                 progress: bool = False, desc: str = "scan"):
        self.eset = eset
        self.block_rows = block_rows
        self.part_sizes: list[tuple[str, int]] = []
        self.on_bytes = on_bytes
        self.progress = progress
        self.desc = desc
        self.rows = 0

    def blocks(self) -> Iterator[np.ndarray]:
        self.part_sizes, self.rows = [], 0
        with _progress(None, self.desc, self.progress) as bar:
            for part in self.eset.parts:
                v = self.eset.load_vectors(part)
                self.part_sizes.append((part, len(v)))
                for s in range(0, len(v), self.block_rows):
                    raw = v[s:s + self.block_rows]
                    block = check_vectors(np.asarray(raw, dtype=np.float32), dim=self.eset.dim,
                                          what=f"{self.eset.uri()} part {part} rows {s}..{s + len(raw) - 1}")
                    if self.on_bytes:
                        self.on_bytes(raw.nbytes)
                    self.rows += len(block)
                    bar.update(len(block))
                    yield block

    def keys_at(self, positions: np.ndarray) -> np.ndarray:
        """Keys of the given global positions (any shape), reading only the parts needed."""
        flat = np.asarray(positions).ravel()
        out = np.empty(len(flat), dtype=object)
        start = 0
        for part, n in self.part_sizes:
            sel = np.flatnonzero((flat >= start) & (flat < start + n))
            if len(sel):
                keys = self.eset.load_metadata(part, ["key"])["key"].astype(str).to_numpy()
                out[sel] = keys[flat[sel] - start]
            start += n
        return out.reshape(np.shape(positions))


def _open_set(location: str) -> EmbeddingSet:
    if not location:
        raise InvalidInput("an embedding set location is required")
    return EmbeddingSet.open(location)


def _load_set(eset: EmbeddingSet, what: str) -> tuple[np.ndarray, np.ndarray]:
    vectors, meta = eset.load()
    if len(vectors) == 0:
        raise InvalidInput(f"{what} {eset.uri()} is empty")
    vectors = check_vectors(vectors, dim=eset.dim, what=f"{what} {eset.uri()}")
    return vectors, meta["key"].astype(str).to_numpy()


def _set_keys(eset: EmbeddingSet) -> np.ndarray:
    return eset.metadata(["key"])["key"].astype(str).to_numpy()


# -- results -----------------------------------------------------------------------------

@dataclass
class SimilarityResult:
    out: str
    queries: int
    references: int
    k: int
    seconds: float
    bytes_scanned: int
    approximate: bool
    frame: pd.DataFrame = field(repr=False)


@dataclass
class IndexInfo:
    name: str
    index_type: str
    count: int
    estimated_bytes: int
    model_id: str
    dim: int
    shards: int
    uri: str
    reason: str = ""


# -- loaded faiss indexes ------------------------------------------------------------------

class _RWLock:
    """Many concurrent searches, one writer (faiss indexes are not safe to add to while searched)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def read(self):
        return _Guard(self, False)

    def write(self):
        return _Guard(self, True)


class _Guard:
    def __init__(self, lock: _RWLock, write: bool):
        self.lock, self.write = lock, write

    def __enter__(self):
        c = self.lock._cond
        with c:
            if self.write:
                c.wait_for(lambda: not self.lock._writer and self.lock._readers == 0)
                self.lock._writer = True
            else:
                c.wait_for(lambda: not self.lock._writer)
                self.lock._readers += 1

    def __exit__(self, *exc):
        c = self.lock._cond
        with c:
            if self.write:
                self.lock._writer = False
            else:
                self.lock._readers -= 1
            c.notify_all()


@dataclass
class IndexShard:
    lower: str                 # smallest key this shard holds (key-range sharding); "" for the first
    index: object              # faiss index, ids = positions in `keys`
    keys: list[str]
    # vectors added since the shard file was last written whole: each entry names one
    # appended batch in the store ({"vectors", "keys", "count"}), replayed in order on load
    appends: list[dict] = field(default_factory=list)

    def appended_rows(self) -> int:
        return sum(int(a["count"]) for a in self.appends)


# An append log is folded into its shard file (one full rewrite) once it holds this many
# batches or as many rows as the shard file itself: each vector is then rewritten O(1)
# times on average, instead of the whole shard once per Kafka event.
COMPACT_AFTER_BATCHES = 64


class LoadedIndex:
    def __init__(self, name: str, info: dict, shards: list[IndexShard]):
        self.name = name
        self.info = info
        self.shards = shards
        self.lock = _RWLock()
        self._key_pos: dict[str, tuple[int, int]] | None = None

    @property
    def model_id(self) -> str:
        return self.info["model_id"]

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def count(self) -> int:
        return sum(len(s.keys) for s in self.shards)

    def shard_for(self, key: str) -> int:
        return max(0, bisect_right([s.lower for s in self.shards], key) - 1)

    def key_positions(self) -> dict[str, tuple[int, int]]:
        if self._key_pos is None:
            self._key_pos = {k: (si, p) for si, s in enumerate(self.shards) for p, k in enumerate(s.keys)}
        return self._key_pos


# -- the handler -----------------------------------------------------------------------------

class IndexerHandler:
    def __init__(self, store: Store, *, metrics=None, embed_texts: EmbedTexts | None = None,
                 embedder_model_id: str | None = None, device: str = "auto",
                 query_block: int = logic.DEFAULT_QUERY_BLOCK, ref_block: int = logic.DEFAULT_REF_BLOCK,
                 memory_budget_bytes: int = 8 << 30, default_index: str = "default", progress: bool = False,
                 spill_dir: str | None = None):
        self.store = store
        self.spill_dir = spill_dir              # local scratch for dedup's cluster buckets (None: system temp)
        self.metrics = metrics
        self.embed_texts = embed_texts
        self.embedder_model_id = embedder_model_id
        self.device = device
        self.query_block = query_block
        self.ref_block = ref_block
        self.memory_budget_bytes = memory_budget_bytes
        self.default_index = default_index
        self.progress = progress
        self._indexes: dict[str, LoadedIndex] = {}
        self._indexes_lock = threading.Lock()

    # ---- metrics helpers
    def _scanned(self, operation: str) -> Callable[[int], None]:
        counter = self.metrics.bytes_scanned.labels(operation) if self.metrics is not None else None
        return counter.inc if counter is not None else (lambda n: None)

    def _finished(self, operation: str, seconds: float, nbytes: int) -> None:
        if self.metrics is not None:
            self.metrics.bulk_seconds.labels(operation).observe(seconds)
            self.metrics.scan_rate.labels(operation).set(nbytes / max(seconds, 1e-9))

    # ---- bulk nearest-neighbour similarity
    @_counted("similarity")
    def similarity(self, query: str, reference: str, out: str | None = None, *, k: int = 1,
                   approximate: bool = False, device: str | None = None) -> SimilarityResult:
        """Top-k similarities of every query vector to the reference set; writes a parquet
        with ``key, sim, ref_key`` (top-1) and, for k > 1, list columns ``sims, ref_keys``."""
        t0 = time.perf_counter()
        if k < 1:
            raise InvalidInput(f"k must be >= 1, got {k}")
        qset, rset = _open_set(query), _open_set(reference)
        require_same_model(qset, rset)
        q, qkeys = _load_set(qset, "query set")
        nbytes = [0]
        on_bytes = self._scanned("similarity")

        def count(n: int) -> None:
            nbytes[0] += n
            on_bytes(n)

        scan = SetScan(rset, self.ref_block, on_bytes=count, progress=self.progress, desc="similarity")
        if approximate:
            sims, pos = self._approximate_knn(q, scan, k)
        else:
            sims, pos = logic.nn_similarity(q, scan.blocks(), k, device=device or self.device,
                                            query_block=self.query_block)
        ref_keys = scan.keys_at(pos)
        frame = pd.DataFrame({"key": qkeys, "sim": sims[:, 0].astype(np.float32), "ref_key": ref_keys[:, 0]})
        if k > 1:
            frame["sims"] = list(sims.astype(np.float32))
            frame["ref_keys"] = [list(r) for r in ref_keys]
        uri = ""
        if out:
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            uri = put_object(out, buf.getvalue())
        seconds = time.perf_counter() - t0
        self._finished("similarity", seconds, nbytes[0])
        return SimilarityResult(uri, len(q), scan.rows, k, seconds, nbytes[0], approximate, frame)

    def _approximate_knn(self, q: np.ndarray, scan: SetScan, k: int) -> tuple[np.ndarray, np.ndarray]:
        blocks = list(scan.blocks())  # an approximate index holds the reference in memory anyway
        n = sum(len(b) for b in blocks)
        if n < k:
            raise InvalidInput(f"k={k} is larger than the reference set ({n} vectors)")
        plan = logic.choose_index(n, q.shape[1], self.memory_budget_bytes)
        sample = _strided_sample(blocks, plan.train_size)
        index = logic.new_faiss_index(plan, q.shape[1], sample)
        for b in blocks:
            index.add(b)
        sims, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return sims, ids

    def nearest_similarity(self, query: str, reference: str, *, k: int = 1,
                           approximate: bool = False) -> Iterator[tuple[str, list[str], list[float]]]:
        """The per-query results of :meth:`similarity`, for streaming over gRPC."""
        res = self.similarity(query, reference, None, k=k, approximate=approximate)
        f = res.frame
        if k > 1:
            for key, ks, ss in zip(f["key"], f["ref_keys"], f["sims"]):
                yield key, list(ks), [float(s) for s in ss]
        else:
            for key, rk, s in zip(f["key"], f["ref_key"], f["sim"]):
                yield key, [rk], [float(s)]

    # ---- pruning
    def _train_sims_to_test(self, train: EmbeddingSet, test: np.ndarray, operation: str) -> tuple[np.ndarray, int]:
        on_bytes = self._scanned(operation)
        scan = SetScan(train, self.query_block * 4, on_bytes=on_bytes, progress=self.progress, desc=operation)
        parts = list(logic.max_similarity_streamed(scan.blocks(), test, device=self.device,
                                                   ref_block=self.ref_block, query_block=self.query_block))
        return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), scan.rows

    @_counted("prune")
    def prune_by_similarity(self, train: str, test: str, keep: int, mode: str, out: str) -> Manifest:
        """near: keep the ``keep`` training points least similar to the test set; far: the most similar."""
        t0 = time.perf_counter()
        if mode not in ("near", "far"):
            raise InvalidInput(f"unknown prune mode {mode!r}: near or far")
        tset, xset = _open_set(train), _open_set(test)
        require_same_model(tset, xset)
        xt, _ = _load_set(xset, "test set")
        sims, n = self._train_sims_to_test(tset, xt, f"prune_{mode}")
        kept = logic.select_by_similarity(sims, keep, mode)
        keys = _set_keys(tset)
        cut = float(sims[kept].max() if mode == "near" else sims[kept].min())
        m = write_manifest(out, keys[kept], rule=f"prune-{mode}",
                           parameters={"keep": keep, "removed": int(n - len(kept)), "train_size": int(n),
                                       "similarity_cut": cut, "model_id": tset.model_id},
                           parent=tset.uri(), sources=[xset.uri()])
        self._finished(f"prune_{mode}", time.perf_counter() - t0, 0)
        return m

    @_counted("prune")
    def prune_random(self, train: str, keep: int, seed: int, out: str) -> Manifest:
        tset = _open_set(train)
        keys = _set_keys(tset)
        kept = logic.select_random(len(keys), keep, seed)
        return write_manifest(out, keys[kept], rule="prune-random",
                              parameters={"keep": keep, "seed": seed, "removed": int(len(keys) - keep),
                                          "train_size": int(len(keys))},
                              parent=tset.uri())

    @_counted("prune")
    def prune_matched(self, train: str, tests: list[str], reference: str, out: str) -> list[Manifest]:
        """Similarity-matched pruning: thr(t) = sim(t, reference); a training point x is
        removed if <x, t> > thr(t) for some t. One manifest per test set (named after the
        set) and ``combined`` (the union of removals), all under ``out``."""
        t0 = time.perf_counter()
        if not tests:
            raise InvalidInput("prune matched needs at least one test set (--tests)")
        tset, rset = _open_set(train), _open_set(reference)
        require_same_model(tset, rset)
        test_sets = [_open_set(t) for t in tests]
        for x in test_sets:
            require_same_model(tset, x)
        names = _unique_names([x.uri() for x in test_sets])
        if "combined" in names:
            raise InvalidInput("a test set may not be named 'combined' (the union manifest is)")
        vectors = [_load_set(x, "test set")[0] for x in test_sets]
        sizes = [len(v) for v in vectors]
        all_tests = np.concatenate(vectors)
        on_bytes = self._scanned("prune_matched")
        rscan = SetScan(rset, self.ref_block, on_bytes=on_bytes, progress=self.progress, desc="thresholds")
        thr_all = logic.matched_thresholds(all_tests, rscan.blocks(), device=self.device, test_block=self.query_block)
        thresholds = np.split(thr_all, np.cumsum(sizes)[:-1])
        xscan = SetScan(tset, self.ref_block, on_bytes=on_bytes, progress=self.progress, desc="matched prune")
        stats: dict = {}
        removed = np.concatenate(list(logic.matched_prune_masks(
            xscan.blocks(), vectors, thresholds, device=self.device, test_block=self.query_block, stats=stats)))
        keys = _set_keys(tset)
        if len(keys) != len(removed):
            raise FailedPrecondition(f"{tset.uri()}: {len(keys)} metadata rows for {len(removed)} vectors")
        sources = [x.uri() for x in test_sets] + [rset.uri()]
        manifests = []
        columns = [(name, removed[:, i], [test_sets[i].uri(), rset.uri()]) for i, name in enumerate(names)]
        columns.append(("combined", removed.any(axis=1), sources))
        for name, rm, src in columns:
            manifests.append(write_manifest(
                f"{out.rstrip('/')}/{name}", keys[~rm], rule="prune-matched",
                parameters={"test_set": name, "removed": int(rm.sum()), "train_size": int(len(keys)),
                            "reference": rset.uri(), "strict": True, "model_id": tset.model_id,
                            "pairs_rechecked_exactly": int(stats.get("rechecked", 0))},
                parent=tset.uri(), sources=src))
        self._finished("prune_matched", time.perf_counter() - t0, 0)
        return manifests

    @_counted("dedup")
    def dedup(self, train: str, threshold: float, out: str, *, clusters: int = 1, seed: int = 0) -> Manifest:
        """k-means into ``clusters`` clusters, then greedy in-cluster dedup (keep iff max
        similarity to earlier kept points <= threshold), streamed: k-means is trained on a
        strided sample (<= 256 points per centroid), then the set is assigned block by
        block and spilled by cluster to local disk (``spill_dir``, default the system
        temp dir), and clusters are deduplicated one disk bucket at a time. Memory: a
        block + a bucket (a quarter of the memory budget) + one bool per vector."""
        t0 = time.perf_counter()
        if not -1.0 <= threshold <= 1.0:
            raise InvalidInput(f"dedup threshold must be a cosine similarity in [-1, 1], got {threshold}")
        if clusters < 1:
            raise InvalidInput(f"--clusters must be >= 1, got {clusters}")
        tset = _open_set(train)
        n = len(tset)
        if n == 0:
            raise InvalidInput(f"training set {tset.uri()} is empty")
        on_bytes = self._scanned("dedup")
        stride = max(1, n // (256 * clusters))
        sample = np.concatenate([b[::stride] for b in SetScan(tset, 65536, on_bytes=on_bytes).blocks()])
        centroids = logic.kmeans_centroids(sample, clusters, seed=seed)
        del sample
        scan = SetScan(tset, 65536, on_bytes=on_bytes, progress=self.progress, desc="dedup")
        with tempfile.TemporaryDirectory(prefix="clipaudit-dedup-", dir=self.spill_dir) as spill:
            keep = logic.dedup_streamed(scan.blocks(), n, threshold, centroids, spill,
                                        bucket_bytes=max(1 << 20, self.memory_budget_bytes // 4),
                                        dtype=np.dtype(tset.info.dtype))
        kept = np.flatnonzero(keep)
        m = write_manifest(out, scan.keys_at(kept), rule="dedup",
                           parameters={"threshold": threshold, "clusters": clusters, "seed": seed,
                                       "removed": int(n - len(kept)), "train_size": int(n)},
                           parent=tset.uri())
        nbytes = 2 * n * tset.dim * np.dtype(tset.info.dtype).itemsize
        self._finished("dedup", time.perf_counter() - t0, nbytes)
        return m

    # ---- kNN indexes
    def _index_store(self, name: str) -> Store:
        if not _NAME.match(name or ""):
            raise InvalidInput(f"invalid index name {name!r} (letters, digits, . _ -)")
        return self.store.child(f"{INDEX_PREFIX}/{name}")

    @_counted("build_index")
    def build_index(self, vectors: str, name: str | None = None, *, index_type: str | None = None,
                    memory_budget_bytes: int | None = None, append: bool = False, shards: int = 1,
                    announce: Callable[[str], None] | None = None) -> IndexInfo:
        """Build (or, with ``append``, extend) a named index from an embedding set.

        The index type comes from the set's size and the memory budget unless given; the
        estimate is announced before anything is built. ``shards`` > 1 splits the index
        by key range (each shard a faiss index; searches merge their top-k)."""
        t0 = time.perf_counter()
        name = name or self.default_index
        eset = _open_set(vectors)
        if append:
            idx = self._load_index(name)
            if idx.model_id != eset.model_id:
                raise FailedPrecondition(f"index {name!r} holds embeddings of model {idx.model_id!r}; "
                                         f"refusing to add {eset.model_id!r} from {eset.uri()}")
            added = 0
            for part, v, meta in eset.iter_parts(["key"]):
                added += self.add_vectors(name, np.asarray(v, dtype=np.float32), meta["key"].astype(str).to_numpy(),
                                          model_id=eset.model_id, source=f"{eset.uri()}#{part}")
            info = self._info_of(idx)
            if announce:
                announce(f"appended {added} vectors to {name} ({info.count} in total)")
            return info
        keys = _set_keys(eset)
        n = len(keys)
        if n == 0:
            raise InvalidInput(f"{eset.uri()} is empty")
        if len(set(keys)) != n:
            raise InvalidInput(f"{eset.uri()} has duplicate keys; an index needs unique keys")
        if shards < 1 or shards > n:
            raise InvalidInput(f"shards must be between 1 and the number of vectors, got {shards}")
        budget = memory_budget_bytes or self.memory_budget_bytes
        plan = logic.plan_for_type(index_type, n, eset.dim) if index_type else logic.choose_index(n, eset.dim, budget)
        if announce:
            announce(f"index {name}: {n} x {eset.dim} vectors -> {plan.factory}, estimated "
                     f"{plan.estimated_bytes / 2**20:.1f} MiB ({plan.reason})")
        on_bytes = self._scanned("build_index")
        sample = None
        if plan.train_size:
            stride = max(1, n // plan.train_size)
            sample = np.concatenate([b[::stride] for b in SetScan(eset, 65536).blocks()])[: plan.train_size]
        sorted_keys = np.sort(keys)
        lowers = [""] + [str(sorted_keys[(i * n) // shards]) for i in range(1, shards)]
        built = [IndexShard(lo, logic.new_faiss_index(plan, eset.dim, sample), []) for lo in lowers]
        scan = SetScan(eset, 65536, on_bytes=on_bytes, progress=self.progress, desc=f"index {name}")
        start = 0
        for block in scan.blocks():
            bkeys = keys[start:start + len(block)]
            start += len(block)
            route = np.searchsorted(np.array(lowers[1:], dtype=object), bkeys, side="right") if shards > 1 \
                else np.zeros(len(block), dtype=np.int64)
            for si in np.unique(route):
                sel = route == si
                built[si].index.add(np.ascontiguousarray(block[sel]))
                built[si].keys.extend(bkeys[sel].tolist())
        info = {"name": name, "model_id": eset.model_id, "dim": eset.dim, "factory": plan.factory,
                "nprobe": plan.nprobe, "estimated_bytes": plan.estimated_bytes, "sources": [eset.uri()],
                "created_at": time.time()}
        idx = LoadedIndex(name, info, built)
        self._save_index(idx, range(len(built)))
        with self._indexes_lock:
            self._indexes[name] = idx
        if self.metrics is not None:
            self.metrics.vectors_indexed.labels(name).inc(n)
            self.metrics.index_vectors.labels(name).set(n)
        self._finished("build_index", time.perf_counter() - t0, 0)
        return self._info_of(idx, plan.reason)

    def _info_of(self, idx: LoadedIndex, reason: str = "") -> IndexInfo:
        return IndexInfo(idx.name, idx.info["factory"], idx.count(), int(idx.info.get("estimated_bytes", 0)),
                         idx.model_id, idx.dim, len(idx.shards), self._index_store(idx.name).uri("index.json"), reason)

    def _save_index(self, idx: LoadedIndex, shard_ids) -> None:
        """Write the named shards whole (folding their append logs in), then index.json."""
        import faiss

        st = self._index_store(idx.name)
        folded = []
        for si, s in enumerate(idx.shards):
            if si in shard_ids:
                st.put_bytes(f"shard-{si:03d}.faiss", faiss.serialize_index(s.index).tobytes())
                st.put_bytes(f"shard-{si:03d}.keys.parquet", _keys_parquet(s.keys))
                folded += s.appends
                s.appends = []
        self._write_index_json(idx)
        for a in folded:                      # only once index.json no longer names them
            st.delete(a["vectors"])
            st.delete(a["keys"])

    def _write_index_json(self, idx: LoadedIndex) -> None:
        """index.json is the commit point: it names each shard file and its append log."""
        idx.info["shards"] = [{"lower": s.lower, "count": len(s.keys), "file": f"shard-{si:03d}.faiss",
                               "appends": list(s.appends)} for si, s in enumerate(idx.shards)]
        idx.info["count"] = idx.count()
        self._index_store(idx.name).put_bytes("index.json", json.dumps(idx.info, indent=2, sort_keys=True).encode())

    def _append_batch(self, idx: LoadedIndex, si: int, vectors: np.ndarray, keys: list[str]) -> None:
        """Persist vectors just added to shard ``si`` as one append-log batch (two small
        objects + index.json), not by rewriting the shard; compact when the log is long."""
        shard = idx.shards[si]
        if len(shard.appends) + 1 >= COMPACT_AFTER_BATCHES or \
                shard.appended_rows() + len(keys) >= len(shard.keys) - len(keys) - shard.appended_rows():
            self._save_index(idx, {si})
            return
        st = self._index_store(idx.name)
        seq = int(idx.info.get("append_seq", 0)) + 1
        idx.info["append_seq"] = seq
        name = f"shard-{si:03d}.append-{seq:08d}"
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
        st.put_bytes(f"{name}.npy", buf.getvalue())
        st.put_bytes(f"{name}.keys.parquet", _keys_parquet(keys))
        shard.appends.append({"vectors": f"{name}.npy", "keys": f"{name}.keys.parquet", "count": len(keys)})
        self._write_index_json(idx)

    def _load_index(self, name: str) -> LoadedIndex:
        name = name or self.default_index
        with self._indexes_lock:
            if name in self._indexes:
                return self._indexes[name]
            import faiss

            st = self._index_store(name)
            if not st.exists("index.json"):
                raise NotFound(f"no index named {name!r} at {st.uri()}")
            info = json.loads(st.get_bytes("index.json"))
            shards = []
            for si, meta in enumerate(info["shards"]):
                index = faiss.deserialize_index(np.frombuffer(st.get_bytes(meta["file"]), dtype=np.uint8))
                keys = _read_keys(st.get_bytes(f"shard-{si:03d}.keys.parquet"))
                for a in meta.get("appends", []):     # replay the append log in order
                    index.add(np.load(io.BytesIO(st.get_bytes(a["vectors"])), allow_pickle=False))
                    keys += _read_keys(st.get_bytes(a["keys"]))
                if info.get("nprobe"):
                    faiss.extract_index_ivf(index).nprobe = int(info["nprobe"])
                shards.append(IndexShard(meta["lower"], index, keys, list(meta.get("appends", []))))
            idx = LoadedIndex(name, info, shards)
            self._indexes[name] = idx
            if self.metrics is not None:
                self.metrics.index_vectors.labels(name).set(idx.count())
            return idx

    def index_info(self, name: str | None = None) -> IndexInfo:
        return self._info_of(self._load_index(name or self.default_index))

    @_counted("add_vectors")
    def add_vectors(self, name: str, vectors: np.ndarray, keys, *, model_id: str, source: str | None = None,
                    create: bool = False) -> int:
        """Add vectors to a named index incrementally (the Kafka worker's path).

        Refuses another model's vectors. ``source`` (e.g. a shard id) makes the call
        idempotent: a source already added is skipped (at-least-once delivery). With
        ``create``, a missing index is created as exact Flat."""
        keys = np.asarray([str(k) for k in keys], dtype=object)
        if len(vectors) != len(keys):
            raise InvalidInput(f"{len(vectors)} vectors but {len(keys)} keys")
        try:
            idx = self._load_index(name)
        except NotFound:
            if not create:
                raise
            vectors = np.asarray(vectors)
            if vectors.ndim != 2 or len(vectors) == 0:
                raise InvalidInput("cannot create an index from no vectors")
            idx = self._create_empty(name, model_id, vectors.shape[1])
        if model_id != idx.model_id:
            raise FailedPrecondition(f"index {name!r} holds embeddings of model {idx.model_id!r}; "
                                     f"refusing vectors of model {model_id!r}")
        x = check_vectors(np.asarray(vectors, dtype=np.float32), dim=idx.dim, what=f"vectors for index {name}")
        with idx.lock.write():
            sources = idx.info.setdefault("sources", [])
            if source and source in sources:
                log.info("index %s already holds %s; skipping", name, source)
                return 0
            existing = idx.key_positions()
            dup = [k for k in keys if k in existing]
            if dup or len(set(keys)) != len(keys):
                raise InvalidInput(f"{len(dup) or 'some'} key(s) already indexed or repeated (first: "
                                   f"{(dup or [keys[0]])[0]!r}); keys must be unique in an index")
            route = np.array([idx.shard_for(k) for k in keys], dtype=np.int64)
            if source:
                sources.append(source)
            for si in np.unique(route):
                sel = route == si
                shard = idx.shards[si]
                base = len(shard.keys)
                shard.index.add(np.ascontiguousarray(x[sel]))
                shard.keys.extend(keys[sel].tolist())
                for p, k in enumerate(keys[sel]):
                    existing[k] = (int(si), base + p)
                self._append_batch(idx, int(si), x[sel], keys[sel].tolist())
        if self.metrics is not None:
            self.metrics.vectors_indexed.labels(name).inc(len(x))
            self.metrics.index_vectors.labels(name).set(idx.count())
        return len(x)

    def _create_empty(self, name: str, model_id: str, dim: int) -> LoadedIndex:
        plan = logic.plan_for_type("Flat", 0, dim)
        idx = LoadedIndex(name, {"name": name, "model_id": model_id, "dim": dim, "factory": "Flat", "nprobe": 0,
                                 "estimated_bytes": 0, "sources": [], "created_at": time.time()},
                          [IndexShard("", logic.new_faiss_index(plan, dim), [])])
        with self._indexes_lock:
            self._indexes.setdefault(name, idx)
            return self._indexes[name]

    @_counted("search")
    def search(self, *, index: str | None = None, k: int = 10, vectors: np.ndarray | None = None,
               keys: list[str] | None = None, text: str | list[str] | None = None
               ) -> list[tuple[list[str], list[float]]]:
        """kNN search by vectors (normalised here), by existing keys, or by text through
        the embedder. Exactly one of the three. Returns (keys, similarities) per query."""
        t0 = time.perf_counter()
        given = [x for x in (vectors, keys, text) if x is not None and len(x) > 0]
        if len(given) != 1:
            raise InvalidInput("search needs exactly one of: vectors, keys, text")
        idx = self._load_index(index or self.default_index)
        total = idx.count()
        if k < 1:
            raise InvalidInput(f"k must be >= 1, got {k}")
        if k > total:
            raise InvalidInput(f"k={k} is larger than index {idx.name!r} ({total} vectors)")
        kind = "vector"
        if keys is not None and len(keys):
            kind = "key"
            q = self._vectors_of_keys(idx, keys)
        elif text is not None and len(text):
            kind = "text"
            q = self._embed_text([text] if isinstance(text, str) else list(text), idx)
        else:
            q = np.asarray(vectors, dtype=np.float32)
            if q.ndim == 1:
                q = q[None, :]
        q = _normalised_queries(q, idx.dim)
        with idx.lock.read():
            results, offsets, shard_keys, offset = [], [], [], 0
            for s in idx.shards:
                if len(s.keys) == 0:
                    continue
                sims, ids = s.index.search(q, min(k, len(s.keys)))
                results.append((sims, np.where(ids < 0, -1, ids + offset)))
                offsets.append(offset)
                shard_keys.append(s.keys)
                offset += len(s.keys)
            sims, ids = logic.merge_topk(results, k) if len(results) > 1 else results[0]
            out = []
            for srow, row in zip(sims, ids):
                found = [(int(i), float(v)) for v, i in zip(srow, row) if i >= 0]
                where = np.searchsorted(offsets, [i for i, _ in found], side="right") - 1
                out.append(([shard_keys[w][i - offsets[w]] for w, (i, _) in zip(where, found)],
                            [v for _, v in found]))
        if self.metrics is not None:
            self.metrics.queries.labels(kind).inc(len(q))
            self.metrics.query_seconds.labels(kind).observe(time.perf_counter() - t0)
        return out

    def _vectors_of_keys(self, idx: LoadedIndex, keys: list[str]) -> np.ndarray:
        pos = idx.key_positions()
        missing = [k for k in keys if k not in pos]
        if missing:
            raise NotFound(f"{len(missing)} key(s) not in index {idx.name!r} (first: {missing[0]!r})")
        out = np.empty((len(keys), idx.dim), dtype=np.float32)
        with idx.lock.read():
            for j, k in enumerate(keys):
                si, p = pos[k]
                out[j] = _reconstruct(idx.shards[si].index, p)
        return out

    def _embed_text(self, texts: list[str], idx: LoadedIndex) -> np.ndarray:
        if self.embed_texts is None:
            raise FailedPrecondition("search by text needs an embedder (set CLIPAUDIT_INDEXER_EMBEDDER_ADDRESS)")
        if self.embedder_model_id is None and callable(getattr(self.embed_texts, "model_id", None)):
            self.embedder_model_id = self.embed_texts.model_id()
        if self.embedder_model_id and self.embedder_model_id != idx.model_id:
            raise FailedPrecondition(f"the embedder serves model {self.embedder_model_id!r} but index "
                                     f"{idx.name!r} holds {idx.model_id!r}")
        return np.asarray(self.embed_texts(texts), dtype=np.float32)

    # ---- the Kafka worker
    def on_embeddings_written(self, event, index: str | None = None, model_id: str = "") -> int:
        """embeddings.v1 -> add that shard's vectors to the index (created if absent).
        Idempotent per (dataset, shard): a redelivered event adds nothing. ``model_id``
        binds the index to one model whatever order events arrive in (without it the
        first event's model creates the index and later models are refused)."""
        name = index or self.default_index
        if model_id and event.model_id != model_id:
            raise FailedPrecondition(f"index {name!r} takes embeddings of model {model_id!r} (consume_model); "
                                     f"refusing {event.model_id!r} from {event.dataset}/{event.shard_id}")
        if not event.embeddings.uri or not event.metadata.uri:
            raise InvalidInput("EmbeddingsWritten without embeddings or metadata uri")
        vectors = np.load(io.BytesIO(get_object(event.embeddings.uri)), allow_pickle=False)
        meta = pd.read_parquet(io.BytesIO(get_object(event.metadata.uri)), columns=["key"])
        if event.dim and vectors.ndim == 2 and vectors.shape[1] != event.dim:
            raise InvalidInput(f"event says dim {event.dim} but {event.embeddings.uri} has {vectors.shape[1]}")
        if len(vectors) == 0:
            return 0
        return self.add_vectors(name, vectors, meta["key"].astype(str).to_numpy(), model_id=event.model_id,
                                source=f"{event.dataset}/{event.shard_id}", create=True)


def _normalised_queries(q: np.ndarray, dim: int) -> np.ndarray:
    """Query vectors as unit float32 rows. The common case (finite, non-zero rows of the
    right width) costs one pass: a NaN/inf row has a non-finite norm. Anything else goes
    through ``check_vectors`` for its one-line refusal. (A Search request's fixed cost
    matters at hundreds of queries per second on two cores.)"""
    q = np.asarray(q, dtype=np.float32)
    if q.ndim == 2 and q.shape[1] == dim and len(q):
        norms = np.sqrt(np.einsum("ij,ij->i", q, q))
        if np.isfinite(norms).all() and (norms > 0).all():
            return q / norms[:, None]
    return check_vectors(q, dim=dim, normalise=True, what="query vectors").astype(np.float32)


def _keys_parquet(keys: list[str]) -> bytes:
    buf = io.BytesIO()
    pd.DataFrame({"key": pd.Series(keys, dtype="string")}).to_parquet(buf, index=False)
    return buf.getvalue()


def _read_keys(data: bytes) -> list[str]:
    return pd.read_parquet(io.BytesIO(data))["key"].astype(str).tolist()


def _reconstruct(index, position: int) -> np.ndarray:
    import faiss

    try:
        return index.reconstruct(int(position))
    except RuntimeError:
        ivf = faiss.extract_index_ivf(index)
        ivf.make_direct_map()
        return index.reconstruct(int(position))


def _strided_sample(blocks: list[np.ndarray], size: int) -> np.ndarray | None:
    if not size:
        return None
    x = np.concatenate(blocks)
    return x[:: max(1, len(x) // size)][:size]


def _unique_names(uris: list[str]) -> list[str]:
    names, seen = [], {}
    for u in uris:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", u.rstrip("/").rsplit("/", 1)[-1]) or "test"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names
