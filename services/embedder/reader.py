"""Shards -> decoded uint8 batches, in worker processes (or threads).

Shards are the unit of work: worker ``i`` of ``n`` reads shards ``i, i+n, i+2n...``
one at a time, so after an interruption at most one shard per worker is redone.
For each shard a worker

1. reads its bytes once and hashes them (sha256: the resume checksum),
2. asks ``is_done(part, sha256)`` and, if the part was already written from the
   same bytes by the same model, yields only an end marker (``skipped=True``),
3. otherwise decodes every image (draft JPEG decoding + :func:`image_to_uint8`),
   yielding batches of at most ``batch_size`` images of that shard, each with the
   samples' metadata rows, optional caption tokens, and the samples it had to
   skip (``errors``: key and one-line reason), then an end marker.

A truncated or corrupt tar ends the shard where it broke (the samples before the
break are kept, the break is reported), a bad image skips that one sample, and
nothing here can hang: the tar reader in ``clipaudit.shards`` never waits for
bytes that will not come.

:func:`iter_batches` runs this in a torch ``DataLoader`` (processes, pinned memory
on GPU) or in plain threads (safe inside a multi-threaded server). Tested in
``tests/unit/test_embedder_pipeline.py``.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from clipaudit.images import BadImage
from clipaudit.shards import iter_samples
from services.embedder.logic import PixelSpec, decode_to_uint8, image_of, metadata_row, caption_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSource:
    """One input shard: ``part`` (its output part id), the store it lives in and its key."""

    part: str
    location: str   # root of the store holding it (local dir or s3://bucket/prefix)
    key: str        # key of the .tar below that root

    def uri(self) -> str:
        return f"{self.location.rstrip('/')}/{self.key}"


@dataclass
class ReadOptions:
    spec: PixelSpec
    batch_size: int
    model_id: str
    tokenizer: Any = None                  # set -> caption tokens are produced (``--text``)
    is_done: Callable[[str, str], bool] | None = None   # (part, sha256) -> already written?
    read_bytes: Callable[[ShardSource], bytes] | None = None
    expected_sha256: dict[str, str] | None = None       # part -> sha256 the caller was promised
    resize_on_device: bool = False   # ship centre squares, resize on the GPU (batches grouped by size)


def _default_read_bytes(src: ShardSource) -> bytes:
    from clipaudit.store import open_store

    return open_store(src.location, create=False).get_bytes(src.key)


def read_shard(src: ShardSource, opts: ReadOptions) -> Iterator[dict]:
    """Batches of one shard, then its end marker (see the module docstring)."""
    errors: list[tuple[str, str]] = []
    try:
        data = (opts.read_bytes or _default_read_bytes)(src)
    except Exception as e:  # noqa: BLE001 - a missing/unreadable shard is reported, not fatal
        yield {"part": src.part, "end": True, "failed": f"{type(e).__name__}: {e}", "errors": [], "n": 0}
        return
    sha = hashlib.sha256(data).hexdigest()
    expected = (opts.expected_sha256 or {}).get(src.part)
    if expected and expected != sha:
        yield {"part": src.part, "end": True, "failed": f"shard {src.uri()} has sha256 {sha[:12]}…, the event "
               f"promised {expected[:12]}…", "errors": [], "n": 0, "sha256": sha}
        return
    if opts.is_done is not None and opts.is_done(src.part, sha):
        yield {"part": src.part, "end": True, "skipped": True, "sha256": sha, "errors": [], "n": 0}
        return

    def on_error(exc: BaseException) -> bool:
        key = getattr(exc, "key", None)   # a tar-level problem: named after the shard
        errors.append((key or "<shard>", "shard: " + str(exc).replace("<bytes>", src.key).splitlines()[0][:300]))
        return True

    s = opts.spec.size
    # pending images by pixel shape: one batch holds images of one shape (always the
    # model's square unless ``resize_on_device``, where uniform shards stay one group)
    groups: dict[tuple, tuple[list, list, list]] = {}

    def flush(shape: tuple | None, end: bool) -> dict:
        nonlocal errors
        pixels, rows, captions = groups.pop(shape, ([], [], [])) if shape is not None else ([], [], [])
        item: dict[str, Any] = {"part": src.part, "end": end, "errors": errors, "rows": rows, "n": len(rows),
                                "pixels": np.stack(pixels) if pixels else np.zeros((0, s, s, 3), np.uint8)}
        if opts.tokenizer is not None:
            item["tokens"] = opts.tokenizer(captions) if captions else None
        if end:
            item["sha256"] = sha
        errors = []
        return item

    for sample in iter_samples(data, handler=on_error):
        key = sample["__key__"]
        ext, img = image_of(sample)
        if img is None:
            errors.append((key, "no image in sample" if ext is None else f"image member .{ext} is not bytes"))
            continue
        try:
            px = decode_to_uint8(img, opts.spec, resize_on_device=opts.resize_on_device)
        except BadImage as e:
            errors.append((key, str(e)))
            continue
        pixels, rows, captions = groups.setdefault(px.shape, ([], [], []))
        pixels.append(px)
        rows.append(metadata_row(sample, src.key.rsplit("/", 1)[-1]))
        captions.append(caption_of(sample))
        if len(rows) >= opts.batch_size:
            yield flush(px.shape, False)
    shapes = list(groups)
    for shape in shapes[:-1]:
        yield flush(shape, False)
    yield flush(shapes[-1] if shapes else None, True)


def shards_of_worker(shards: list[ShardSource], index: int, count: int) -> list[ShardSource]:
    return shards[index::count]


def _init_worker(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # a decode worker needs no intra-op threads; they would fight the model's


class _ShardStream:
    """A torch IterableDataset (built lazily so this module imports without torch)."""

    def __new__(cls, shards: list[ShardSource], opts: ReadOptions):
        import torch

        class ShardStream(torch.utils.data.IterableDataset):
            def __iter__(self):
                info = torch.utils.data.get_worker_info()
                idx, cnt = (info.id, info.num_workers) if info is not None else (0, 1)
                for src in shards_of_worker(shards, idx, cnt):
                    yield from read_shard(src, opts)

        return ShardStream()


def iter_batches(shards: list[ShardSource], opts: ReadOptions, *, workers: int = 2, kind: str = "process",
                 pin_memory: bool = False, prefetch: int = 4) -> Iterator[dict]:
    """Every shard's batches and end markers, read by ``workers`` processes or threads.

    Processes (a torch DataLoader, fork) are the fast path; threads are for callers
    that already run threads of their own (a gRPC server, a Kafka consumer), where
    forking is unsafe. ``workers=0`` reads in the calling thread.
    """
    workers = max(0, min(workers, len(shards)))
    if workers == 0:
        for src in shards:
            yield from read_shard(src, opts)
        return
    if kind == "process":
        import torch

        loader = torch.utils.data.DataLoader(
            _ShardStream(shards, opts), batch_size=None, num_workers=workers, pin_memory=pin_memory,
            prefetch_factor=prefetch, worker_init_fn=_init_worker, persistent_workers=False,
            multiprocessing_context="fork",
            # a slow shard must not stall the others: batches are regrouped by part downstream,
            # and each part comes from one worker, in sample order
            in_order=False,
        )
        yield from loader
        return
    yield from _thread_batches(shards, opts, workers, prefetch)


def _thread_batches(shards: list[ShardSource], opts: ReadOptions, workers: int, prefetch: int) -> Iterator[dict]:
    q: queue.Queue = queue.Queue(maxsize=max(2, prefetch * workers))
    stop = threading.Event()
    DONE = object()

    def run(index: int) -> None:
        try:
            for src in shards_of_worker(shards, index, workers):
                for item in read_shard(src, opts):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            q.put(DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
            if not stop.is_set():
                q.put(e)

    threads = [threading.Thread(target=run, args=(i,), name=f"embedder-read-{i}", daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    finished = 0
    try:
        while finished < workers:
            item = q.get()
            if item is DONE:
                finished += 1
            elif isinstance(item, BaseException):
                raise item  # a reader thread broke on something unexpected: the caller sees it
            else:
                yield item
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
