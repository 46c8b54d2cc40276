"""The embedder's use cases. The CLI, the gRPC servicer, the Kafka worker and embedded
mode all call these; ports (store opener, publisher, metrics) are injected.

* :meth:`EmbedderHandler.embed_dataset` — every ``*.tar`` shard under a location ->
  one embedding-set part per shard (clip-retrieval layout), resumable.
* :meth:`EmbedderHandler.on_shard_created` — the Kafka use case: one shard event ->
  its part in the store -> an ``EmbeddingsWritten`` event.
* :meth:`EmbedderHandler.embed_image_stream`, :meth:`embed_texts`, :meth:`model_info`
  — the gRPC use cases.
* :func:`embed_dataset` — the same as a single in-process call (loads the model).

Resume: a part's sidecar ``done/<part>.json`` (input sha256, model id, rows) is
written *after* the part's vectors and metadata, and a shard whose sidecar matches
its bytes and the model is skipped. Tested in ``tests/unit/test_embedder_pipeline.py``,
``tests/unit/test_embedder_grpc.py`` and ``tests/integration/test_embedder_kafka.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from clipaudit.bus import TOPIC_EMBEDDINGS
from clipaudit.errors import FailedPrecondition, InvalidInput, NotFound
from services.embedder.logic import BatchEncoder, choose_batch_size, embed_images, embed_texts
from services.embedder.reader import ReadOptions, ShardSource, iter_batches

log = logging.getLogger(__name__)

DONE_PREFIX = "done/"


@dataclass
class EmbedSummary:
    """What one dataset (or shard) job did."""

    out: str
    model_id: str
    dim: int
    shards: int = 0
    parts_written: int = 0
    parts_skipped: int = 0
    parts_failed: list[str] = field(default_factory=list)   # "part: reason"
    images: int = 0
    skipped_samples: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    batch_size: int = 0
    workers: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def part_id(shard_key: str) -> str:
    """``train/train-000003.tar`` -> ``train-000003``."""
    base = shard_key.rsplit("/", 1)[-1]
    return base[:-4] if base.endswith(".tar") else base


def list_shards(location: str | Path, open_store: Callable) -> list[ShardSource]:
    """The ``*.tar`` shards of a location: a single tar (path or s3 URI), or every tar
    below a directory / s3 prefix, recursively, in sorted order."""
    loc = str(location)
    if loc.endswith(".tar"):
        parent, _, base = loc.rstrip("/").rpartition("/")
        if not loc.startswith("s3://") and not Path(loc).is_file():
            raise NotFound(f"shard {loc} does not exist")
        parent = parent or "."
        store = open_store(parent)
        if not store.exists(base):
            raise NotFound(f"shard {loc} does not exist")
        return [ShardSource(part_id(base), store.uri(), base)]
    if not loc.startswith("s3://") and not Path(loc).is_dir():
        raise NotFound(f"data location {loc} does not exist")
    store = open_store(loc)
    keys = [k for k in store.list("") if k.endswith(".tar")]
    if not keys:
        raise NotFound(f"no .tar shards under {store.uri()}")
    shards = [ShardSource(part_id(k), store.uri(), k) for k in keys]
    seen: dict[str, str] = {}
    for s in shards:
        if s.part in seen:
            raise InvalidInput(f"two shards would write the same part {s.part!r}: {seen[s.part]} and {s.key}; "
                               "embed the directories separately")
        seen[s.part] = s.key
    return shards


def safe_name(s: str) -> str:
    """A model id or dataset name usable as one path segment of an object key."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", s).strip("_") or "_"


class EmbedderHandler:
    """One loaded model, its batch encoder, and the ports it writes through."""

    def __init__(self, loaded, *, open_store: Callable | None = None, metrics=None, publisher=None,
                 default_out: str | None = None, batch_size: int | None = None, workers: int = 2,
                 worker_kind: str = "process", dtype: str = "float16", precision: str = "auto",
                 text: bool = False, embeddings_topic: str = TOPIC_EMBEDDINGS,
                 resize_on_device: bool | None = None):
        if dtype not in ("float16", "float32"):
            raise InvalidInput(f"embedding dtype must be float16 or float32, got {dtype!r}")
        if worker_kind not in ("process", "thread"):
            raise InvalidInput(f"worker kind must be 'process' or 'thread', got {worker_kind!r}")
        if open_store is None:
            from clipaudit.store import open_store as _open

            open_store = _open
        self.loaded = loaded
        self.open_store = open_store
        self.metrics = metrics
        self.publisher = publisher
        self.default_out = default_out
        self.encoder = BatchEncoder(loaded, precision=precision)
        self.batch_size = choose_batch_size(loaded, requested=batch_size, precision=precision)
        self.workers = int(workers)
        self.worker_kind = worker_kind
        self.dtype = dtype
        self.text = text
        self.embeddings_topic = embeddings_topic
        # on a GPU the workers only decode and cut the centre square; the device resizes
        # (measured: 2x the images/s of PIL resizing in 16 workers for ViT-B-32, see README)
        self.resize_on_device = self.encoder.device.type == "cuda" if resize_on_device is None else resize_on_device
        self._lock = threading.Lock()   # one dataset/shard job at a time per process

    # ------------------------------------------------------------------ model info, texts, images

    def model_info(self) -> dict:
        lm = self.loaded
        return {"model_id": lm.model_id, "architecture": lm.name, "dim": int(lm.dim), "image_size": int(lm.image_size),
                "device": str(lm.device), "checkpoint": lm.checkpoint or "", "batch_size": self.batch_size,
                "dtype": self.dtype}

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            raise InvalidInput("no texts given")
        out = embed_texts(self.loaded, texts, encoder=self.encoder)
        if self.metrics:
            self.metrics.texts.inc(len(texts))
        return out

    def embed_images(self, images: list) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """PIL images or encoded bytes -> (vectors of the good ones, ok mask, {index: reason})."""
        r = embed_images(self.loaded, images, batch_size=self.batch_size, encoder=self.encoder)
        if self.metrics:
            self.metrics.images.labels("grpc").inc(int(r.ok.sum()))
            for reason in r.errors.values():
                self.metrics.skipped(reason)
        return r.vectors, r.ok, r.errors

    def embed_image_stream(self, requests: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, np.ndarray | None, str]]:
        """``(key, image bytes)`` in, ``(key, vector or None, error)`` out, one per input,
        in order. Requests are read by a thread and embedded in micro-batches of
        whatever has arrived (up to the batch size), so a client that waits for each
        answer before sending the next image is served at once and a client that
        streams many gets full batches."""
        q: queue.Queue = queue.Queue(maxsize=4 * self.batch_size)
        END = object()

        def pump() -> None:
            try:
                for r in requests:
                    q.put(r)
            except Exception as e:  # noqa: BLE001 - a broken stream ends the batch loop
                q.put(e)
            q.put(END)

        threading.Thread(target=pump, name="embedder-stream", daemon=True).start()
        ended = False
        while not ended:
            batch = [q.get()]
            while len(batch) < self.batch_size:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is END:
                ended = True
                batch.pop()
            for b in batch:
                if isinstance(b, Exception):
                    raise b
            if not batch:
                continue
            vecs, ok, errors = self.embed_images([img for _, img in batch])
            row = 0
            for i, (key, _) in enumerate(batch):
                if ok[i]:
                    yield key, vecs[row], ""
                    row += 1
                else:
                    log.warning("skipping image %r: %s", key, errors[i])
                    yield key, None, errors[i]

    # ------------------------------------------------------------------ datasets and shards

    def embed_dataset(self, data_location: str | Path, out_location: str | Path, *, text: bool | None = None,
                      progress: bool = False) -> EmbedSummary:
        """Embed every shard under ``data_location`` into the embedding set at ``out_location``."""
        shards = list_shards(data_location, self.open_store)
        return self.embed_shards(shards, str(out_location), text=self.text if text is None else text,
                                 progress=progress)

    def embed_shards(self, shards: list[ShardSource], out_location: str, *, text: bool = False,
                     progress: bool = False, workers: int | None = None, worker_kind: str | None = None,
                     expected_sha256: dict[str, str] | None = None) -> EmbedSummary:
        from clipaudit.embeddings import EmbeddingSetWriter

        with self._lock:
            return self._embed_shards(EmbeddingSetWriter, shards, out_location, text, progress,
                                      self.workers if workers is None else workers,
                                      worker_kind or self.worker_kind, expected_sha256)

    def _embed_shards(self, writer_cls, shards, out_location, text, progress, workers, worker_kind,
                      expected_sha256) -> EmbedSummary:
        import pandas as pd

        lm = self.loaded
        out_store = self.open_store(out_location)
        out_uri = out_store.uri()
        writer = writer_cls(out_store, model_id=lm.model_id, dim=lm.dim, dtype=self.dtype)
        summary = EmbedSummary(out=out_uri, model_id=lm.model_id, dim=lm.dim, shards=len(shards),
                               batch_size=self.batch_size, workers=min(workers, len(shards)))
        open_store = self.open_store
        model_id = lm.model_id

        def is_done(part: str, sha: str) -> bool:  # runs in the reader (worker) processes
            store = open_store(out_uri)
            key = f"{DONE_PREFIX}{part}.json"
            if not store.exists(key):
                return False
            try:
                done = json.loads(store.get_bytes(key))
            except ValueError:
                return False
            return (done.get("shard_sha256") == sha and done.get("model_id") == model_id
                    and (done.get("text") or not text) and store.exists(f"img_emb/img_emb_{part}.npy"))

        def read_bytes(src: ShardSource) -> bytes:
            return open_store(src.location).get_bytes(src.key)

        opts = ReadOptions(spec=self.encoder.spec, batch_size=self.batch_size, model_id=model_id,
                           tokenizer=lm.tokenizer if text else None, is_done=is_done, read_bytes=read_bytes,
                           expected_sha256=expected_sha256, resize_on_device=self.resize_on_device)
        on_gpu = self.encoder.device.type == "cuda"
        buffers: dict[str, dict[str, list]] = {}
        writes: list[Future] = []
        pool = ThreadPoolExecutor(1, thread_name_prefix="embedder-write")
        bar = _progress_bar(progress, len(shards))
        t0 = time.perf_counter()
        metrics = self.metrics

        def write_part(part: str, vectors, rows, text_vectors, sha: str, skipped: int) -> None:
            meta = pd.DataFrame(rows) if rows else pd.DataFrame({"key": pd.Series([], dtype=str),
                                                                 "shard": pd.Series([], dtype=str)})
            writer.write_part(part, vectors, meta, text_vectors)
            done = {"shard_sha256": sha, "model_id": model_id, "rows": len(rows), "skipped": skipped,
                    "text": text_vectors is not None, "written_at": time.time()}
            out_store.put_bytes(f"{DONE_PREFIX}{part}.json", json.dumps(done, sort_keys=True).encode())  # LAST

        def finish(item: dict, launched, t_launch: float) -> None:
            part = item["part"]
            buf = buffers.setdefault(part, {"vec": [], "rows": [], "text": [], "skipped": 0})
            n = item.get("n", 0)
            if n:
                vec = launched.cpu().numpy().astype(self.dtype)
                buf["vec"].append(vec)
                buf["rows"].extend(item["rows"])
                if metrics:
                    metrics.batch_seconds.observe(time.perf_counter() - t_launch)
                    metrics.images.labels("dataset").inc(n)
                if text:
                    buf["text"].append(self.encoder.encode_tokens(item["tokens"]).astype(self.dtype))
                summary.images += n
                bar.update(n)
            for key, reason in item.get("errors", []):
                log.warning("skipping sample %r of %s: %s", key, part, reason)
                buf["skipped"] += 1
                summary.skipped_samples += 1
                if metrics:
                    metrics.skipped(reason)
            if not item.get("end"):
                return
            buffers.pop(part)
            if item.get("failed"):
                log.error("shard %s failed: %s", part, item["failed"])
                summary.parts_failed.append(f"{part}: {item['failed']}")
                if metrics:
                    metrics.shards.labels("failed").inc()
            elif item.get("skipped"):
                summary.parts_skipped += 1
                if metrics:
                    metrics.shards.labels("skipped").inc()
            else:
                vecs = np.concatenate(buf["vec"]) if buf["vec"] else np.zeros((0, lm.dim), self.dtype)
                tv = (np.concatenate(buf["text"]) if buf["text"] else np.zeros((0, lm.dim), self.dtype)) if text else None
                writes.append(pool.submit(write_part, part, vecs, buf["rows"], tv, item["sha256"], buf["skipped"]))
                summary.parts_written += 1
                if metrics:
                    metrics.shards.labels("written").inc()
            bar.set_postfix_str(f"shards {summary.parts_written + summary.parts_skipped + len(summary.parts_failed)}"
                                f"/{len(shards)}")
            if metrics:
                elapsed = time.perf_counter() - t0
                metrics.images_per_second.set(summary.images / elapsed if elapsed > 0 else 0.0)
                if on_gpu:
                    metrics.observe_gpu()

        try:
            prev = None
            for item in iter_batches(shards, opts, workers=workers, kind=worker_kind, pin_memory=on_gpu):
                # launch this batch (asynchronous on a GPU), then collect the previous one:
                # the device computes batch i while the loader hands over batch i+1.
                t_launch = time.perf_counter()
                launched = self.encoder.encode_async(item["pixels"]) if item.get("n") else None
                if prev is not None:
                    finish(*prev)
                prev = (item, launched, t_launch)
            if prev is not None:
                finish(*prev)
            for f in writes:
                f.result()   # surface a failed write as the job's error
        finally:
            pool.shutdown(wait=True)
            bar.close()
        summary.seconds = time.perf_counter() - t0
        summary.images_per_s = summary.images / summary.seconds if summary.seconds > 0 else 0.0
        if metrics:
            metrics.images_per_second.set(summary.images_per_s)
        return summary

    # ------------------------------------------------------------------ Kafka

    def output_location_for(self, dataset: str, output_prefix: str = "") -> str:
        """Where a dataset's embeddings go: the event's ``output_prefix`` or
        ``<default store>/embeddings/<model id>/<dataset>`` (deterministic)."""
        if output_prefix:
            return output_prefix
        if not self.default_out:
            raise FailedPrecondition("the embedder has no default store and the event names no output_prefix")
        return (f"{self.default_out.rstrip('/')}/embeddings/{safe_name(self.loaded.model_id)}/"
                f"{'/'.join(safe_name(p) for p in dataset.split('/') if p) or '_'}")

    def on_shard_created(self, event) -> Any:
        """A ``ShardCreated`` event: embed the shard (or find it already embedded from the
        same bytes), then publish ``EmbeddingsWritten``. Idempotent: a redelivered event
        rewrites nothing and publishes the same event again."""
        from clipaudit.common.v1 import common_pb2
        from clipaudit.events.v1 import events_pb2

        uri = event.shard.uri
        if not uri or not uri.endswith(".tar"):
            raise InvalidInput(f"shard event names no .tar object: {uri!r}")
        parent, _, base = uri.rpartition("/")
        src = ShardSource(event.shard_id or part_id(base), self.open_store(parent).uri(), base)
        out = self.output_location_for(event.dataset, event.output_prefix)
        s = self.embed_shards([src], out, text=self.text, workers=1, worker_kind="thread",
                              expected_sha256={src.part: event.shard.sha256} if event.shard.sha256 else None)
        if s.parts_failed:
            reason = s.parts_failed[0].split(": ", 1)[-1]
            if "promised" in reason:
                raise InvalidInput(reason)
            if "NotFound" in reason or "does not exist" in reason:
                raise NotFound(reason)
            raise FailedPrecondition(reason)
        store = self.open_store(out)
        done = json.loads(store.get_bytes(f"{DONE_PREFIX}{src.part}.json"))

        def ref(key: str, rows: int):
            data = store.get_bytes(key)
            return common_pb2.ObjectRef(uri=store.uri(key), sha256=hashlib.sha256(data).hexdigest(), rows=rows,
                                        size_bytes=len(data))

        msg = events_pb2.EmbeddingsWritten(
            dataset=event.dataset, shard_id=src.part, model_id=self.loaded.model_id, dim=int(self.loaded.dim),
            embeddings=ref(f"img_emb/img_emb_{src.part}.npy", done["rows"]),
            metadata=ref(f"metadata/metadata_{src.part}.parquet", done["rows"]),
            skipped=int(done.get("skipped", 0)),
        )
        if done.get("text"):
            msg.text_embeddings.CopyFrom(ref(f"text_emb/text_emb_{src.part}.npy", done["rows"]))
        if self.publisher is not None:
            self.publisher.publish(self.embeddings_topic, src.part, msg)
            self.publisher.flush()
        return msg


def _progress_bar(enabled: bool, shards: int):
    from tqdm import tqdm

    return tqdm(unit="img", unit_scale=True, desc="embed", disable=not (enabled and sys.stderr.isatty()),
                postfix=f"shards 0/{shards}", dynamic_ncols=True)


def embed_dataset(data_location: str | Path, model_spec: str, out_location: str | Path, *, text: bool = False,
                  batch_size: int | None = None, workers: int | None = None, progress: bool = False,
                  device: str = "cpu", dtype: str = "float16", precision: str = "auto", seed: int = 0,
                  worker_kind: str = "process", metrics=None) -> EmbedSummary:
    """One call, in process: load ``model_spec`` (``name[@checkpoint]``), embed every shard
    under ``data_location`` into the embedding set at ``out_location``; returns the summary."""
    from clipaudit.models import load_clip

    loaded = load_clip(model_spec, device=device, seed=seed)
    h = EmbedderHandler(loaded, batch_size=batch_size, workers=default_workers() if workers is None else workers,
                        worker_kind=worker_kind, dtype=dtype, precision=precision, metrics=metrics)
    return h.embed_dataset(data_location, out_location, text=text, progress=progress)


def default_workers() -> int:
    """Decode workers: every core the process may use (decoding is the bottleneck for
    small models; for large ones idle workers just sleep on a full queue)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
