"""Reading a subset for training: WebDataset shards filtered by manifest keys on the
fly, never resharded.

1. :func:`resolve_shards` turns ``spec.data`` (collections, ``.tar`` URIs, directories
   of shards, local or ``s3://``) into shard references.
2. :func:`index_subset` reads only the tar *headers* (a local shard is seeked
   through, not read) to learn how many subset samples each shard holds: the
   missing keys are counted before training starts and the number of batches per
   epoch is known exactly (the LR schedule needs it, DDP ranks must agree on it).
3. Two sources give batches of uint8 images (decoded with
   :func:`clipaudit.images.decode_image`, resized to the model's size) plus
   tokenized captions or integer labels:

   * :class:`MemorySubset` decodes the subset once into RAM (about 3 KiB per 32 px
     image: 20k images are 60 MB) and then serves each epoch from a seeded
     permutation. Used when the decoded subset fits ``cache_max_bytes``.
   * :class:`StreamingSubset` (a torch ``IterableDataset``) reads the shards every
     epoch: shards are permuted per epoch and dealt to (rank, worker) reader slots,
     samples pass a shuffle buffer, batches are assembled in the worker, and only
     then decoded, so skipping to a resume position costs tar reads, no decoding.
     This is the LAION-scale path.

Tested in ``tests/unit/test_trainer_logic.py`` and ``tests/unit/test_trainer_train.py``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import os
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from clipaudit.errors import InvalidInput, NotFound
from clipaudit.images import BadImage, decode_image
from clipaudit.lru import ByteBoundedLRU
from clipaudit.shards import decode_value, iter_samples, split_member_name
from services.trainer.logic import Batch, rank_indices, shard_plan, shuffled

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class ShardRef:
    store: Any
    key: str

    @property
    def uri(self) -> str:
        return self.store.uri(self.key)

    def source(self):
        """A local path (read in place) or the shard's bytes."""
        local = getattr(self.store, "local_path", None)
        if local is not None:
            path = local(self.key)
            if not path.is_file():
                raise NotFound(f"shard {self.uri} does not exist")
            return path
        return self.store.get_bytes(self.key)


def resolve_shards(data: Sequence[str], split: str) -> list[ShardRef]:
    """Shards named by ``data``: a synthetic collection (its ``split``), a ``.tar``
    path/URI, or a directory/prefix whose ``.tar`` objects are all read."""
    from clipaudit.store import open_store
    from clipaudit.synth.collection import COLLECTION_FILE, Collection

    refs: list[ShardRef] = []
    for loc in data:
        loc = str(loc)
        if loc.endswith(".tar"):
            parent, _, base = loc.rpartition("/")
            store = open_store(parent or ".", create=False)
            refs.append(ShardRef(store, base))
            continue
        store = open_store(loc, create=False)
        if store.exists(COLLECTION_FILE):
            keys = Collection.load(store).shard_keys(split)
        else:
            keys = [k for k in store.list() if k.endswith(".tar")]
        if not keys:
            raise NotFound(f"no shards in {loc}")
        refs.extend(ShardRef(store, k) for k in keys)
    return refs


_BLOCK = 512


def _ustar_members(buf) -> list[tuple[str, int, int]] | None:
    """``(name, data offset, size)`` of the regular members of a plain ustar/GNU tar
    (bytes or an mmap), from its 512-byte headers only: ~5x cheaper than ``tarfile``,
    which builds a TarInfo per member (the small preset's 60k members took 1-3 s).
    None when the tar holds anything else (PAX or GNU long-name headers, base-256
    sizes): the caller then reads it the general way. A bad header or a member that
    runs past the end raises ``tarfile.HeaderError``/``ReadError``."""
    members: list[tuple[str, int, int]] = []
    pos, end = 0, len(buf)
    while True:
        h = buf[pos:pos + _BLOCK]
        if len(h) < _BLOCK:
            raise tarfile.ReadError(f"truncated tar header at byte {pos}")
        if h.count(0) == _BLOCK:
            return members
        kind = h[156:157]
        if kind not in (b"0", b"\0", b"5") or h[124] & 0x80:
            return None
        try:
            stored = int(h[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
            size = int(h[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            raise tarfile.HeaderError(f"bad number in the tar header at byte {pos}") from None
        if stored != sum(h) - sum(h[148:156]) + 256:      # the checksum field counts as 8 spaces
            raise tarfile.HeaderError(f"bad tar header checksum at byte {pos}")
        if pos + _BLOCK + size > end:
            raise tarfile.ReadError(f"truncated tar: the member at byte {pos} runs past the end ({end} bytes)")
        if kind != b"5":
            name = h[:100].split(b"\0", 1)[0]
            if h[257:262] == b"ustar" and h[345] != 0:
                name = h[345:500].split(b"\0", 1)[0] + b"/" + name
            members.append((name.decode("utf-8", "surrogateescape"), pos + _BLOCK, size))
        pos += _BLOCK + (size + _BLOCK - 1) // _BLOCK * _BLOCK


_MEMBER_TABLES: "OrderedDict[tuple, list | None]" = OrderedDict()
_MEMBER_TABLES_LOCK = threading.Lock()


def _local_members(f, path) -> list[tuple[str, int, int]] | None:
    """:func:`_ustar_members` of an open local shard, remembered per (path, size, mtime)
    for the most recent shards holding up to 1M members (~100 MB): a run walks the headers
    once for its index and once more to read the samples, and a study's runs read the
    same shards again."""
    st = os.fstat(f.fileno())
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    with _MEMBER_TABLES_LOCK:
        if key in _MEMBER_TABLES:
            _MEMBER_TABLES.move_to_end(key)
            return _MEMBER_TABLES[key]
    if st.st_size == 0:
        raise tarfile.ReadError("empty file")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        members = _ustar_members(m)
    with _MEMBER_TABLES_LOCK:
        _MEMBER_TABLES[key] = members
        while sum(len(v or ()) for v in _MEMBER_TABLES.values()) > 1_000_000 and len(_MEMBER_TABLES) > 1:
            _MEMBER_TABLES.popitem(last=False)
    return members


def shard_sample_keys(ref: ShardRef) -> list[str]:
    """Sample keys of one shard in order, from the tar headers only."""
    src = ref.source()
    try:
        if isinstance(src, bytes):
            members = _ustar_members(src)
        else:
            with open(src, "rb") as f:
                members = _local_members(f, src)
        if members is not None:
            names = [name for name, _, _ in members]
        else:   # PAX or GNU long names: tarfile knows them all
            with (open(src, "rb") if not isinstance(src, bytes) else io.BytesIO(src)) as f, \
                    tarfile.open(fileobj=f, mode="r:") as tf:
                names = [m.name for m in tf if m.isreg()]
    except (tarfile.TarError, OSError) as e:
        raise InvalidInput(f"shard {ref.uri} is not a readable tar: {e}") from e
    keys: list[str] = []
    for name in names:
        parts = split_member_name(name)
        if parts and (not keys or keys[-1] != parts[0]):
            keys.append(parts[0])
    return keys


@dataclass
class SubsetIndex:
    """Where the subset's samples are: the shards holding any, with per-shard counts."""

    shards: list[ShardRef]
    counts: list[int]
    wanted: set[str] | None      # None: every sample of the data
    requested: int               # keys asked for (0 when wanted is None)
    found: int

    @property
    def missing(self) -> int:
        return self.requested - self.found if self.wanted is not None else 0


def index_subset(refs: Sequence[ShardRef], wanted: set[str] | None) -> SubsetIndex:
    shards, counts, seen = [], [], set()
    for ref in refs:
        keys = shard_sample_keys(ref)
        hit = [k for k in keys if wanted is None or k in wanted]
        seen.update(hit)
        if hit:
            shards.append(ref)
            counts.append(len(hit))
    found = len(seen) if wanted is not None else sum(counts)
    return SubsetIndex(shards, counts, wanted, len(wanted) if wanted is not None else 0, found)


# --------------------------------------------------------------------------- decoding


def tokenize_unique(tokenizer, captions: list[str], cache: dict | None = None,
                    max_cached: int = 200_000) -> torch.Tensor:
    """Tokenize each distinct caption once (templated captions repeat a lot: the small
    preset's 20k training captions hold 683 distinct ones). ``cache`` (caption -> token
    row) carries what was tokenized to later calls, e.g. the batches of a stream worker;
    it is emptied when it would pass ``max_cached`` captions."""
    cache = {} if cache is None else cache
    fresh = [c for c in dict.fromkeys(captions) if c not in cache]
    if fresh:
        if len(cache) + len(fresh) > max_cached:
            cache.clear()
            fresh = list(dict.fromkeys(captions))
        cache.update(zip(fresh, tokenizer(fresh)))
    return torch.stack([cache[c] for c in captions])


# Decoded, resized images keyed by (size, hash of the encoded bytes), per process. In
# embedded mode a study trains dozens of models on overlapping subsets of one pool;
# decoding each image once instead of once per run is most of the data cost. Bounded by
# ``CLIPAUDIT_TRAINER_DECODE_CACHE_MB`` (default 1024; 0 disables).
DECODED = ByteBoundedLRU(int(os.environ.get("CLIPAUDIT_TRAINER_DECODE_CACHE_MB", "1024")) << 20)


def _jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's frame header (SOFn), walking the
    marker segments before it; None for anything else."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                                  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > n:
                return None
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9]
        if marker == 0xDA:                                  # a scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _decode_jpeg_rgb(data: bytes) -> np.ndarray:
    """A 3-component JPEG -> uint8 HxWx3 through torchvision's libjpeg-turbo: the same
    pixels as PIL (checked on every image of the small preset) at about half the
    cost, since PIL parses the markers in Python. Raises RuntimeError on bad data."""
    from torchvision.io import ImageReadMode, decode_jpeg

    img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return img.permute(1, 2, 0).contiguous().numpy()


@dataclass
class SampleDecoder:
    """A raw WebDataset sample -> (uint8 HxWx3 image, caption, label). Raises BadImage."""

    image_size: int
    label_column: str | None = None          # supervised
    class_index: dict[str, int] | None = None

    def image(self, data: bytes) -> np.ndarray:
        key = (self.image_size, hashlib.blake2b(data, digest_size=16).digest())
        hit = DECODED.get(key)
        if hit is None:
            hit = self._decode(data)
            DECODED.put(key, hit)
        return hit.copy()

    def _decode(self, data: bytes) -> np.ndarray:
        s = self.image_size
        if _jpeg_frame(data) == (s, s, 3):   # already the model's size: no resize, libjpeg straight to uint8
            try:
                return _decode_jpeg_rgb(data)
            except RuntimeError:
                pass                          # PIL names the problem below
        img = decode_image(data, draft_size=s)
        if img.size != (s, s):
            w, h = img.size
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            img = img.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            img = img.crop((left, top, left + s, top + s))
        return np.array(img, dtype=np.uint8)  # a writable copy

    def __call__(self, sample: dict) -> tuple[np.ndarray, str | None, int | None]:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise BadImage(f"sample {sample.get('__key__')!r} has no image member")
        caption = sample.get("txt")
        label = None
        if self.label_column is not None:
            meta = sample.get("json") or {}
            value = meta.get(self.label_column) if isinstance(meta, dict) else None
            if value is None or self.class_index is None or str(value) not in self.class_index:
                raise BadImage(f"sample {sample.get('__key__')!r}: label {self.label_column}={value!r} is not a known class")
            label = self.class_index[str(value)]
        elif not isinstance(caption, str):
            raise BadImage(f"sample {sample.get('__key__')!r} has no caption (.txt)")
        return self.image(sample[ext]), caption, label


def _skip_bad(e: BaseException) -> bool:
    log.warning("skipping: %s", e)
    return True


def iter_subset_samples(shards: Sequence[ShardRef], wanted: set[str] | None) -> Iterator[dict]:
    """Raw samples of the subset, shard after shard (undecoded members are bytes)."""
    for ref in shards:
        src = ref.source()
        local = None if isinstance(src, bytes) else _local_subset_samples(src, wanted)
        if local is not None:
            yield from local
            continue
        for s in iter_samples(src, handler=_skip_bad):
            if wanted is None or s["__key__"] in wanted:
                yield s


def _local_subset_samples(path, wanted: set[str] | None) -> Iterator[dict] | None:
    """The samples of a local plain-ustar shard that are in ``wanted``, read through an
    mmap: the header walk of :func:`_ustar_members` instead of ``tarfile``, and the
    members of samples outside the subset never copied or decoded. The same samples as
    :func:`clipaudit.shards.iter_samples` (members grouped while the key repeats, ``txt``
    as str, ``json`` parsed, a duplicate member or an undecodable value skipped). None
    for any other tar (PAX, long names, damaged): the caller reads it the general way."""
    try:
        with open(path, "rb") as f:
            members = _local_members(f, path)
            if members is None:
                return None
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, tarfile.TarError):
        return None

    def samples() -> Iterator[dict]:
        try:
            key, group = None, []
            for name, off, size in [*members, ("", 0, 0)]:
                parts = split_member_name(name) if name else ("", "")
                if parts is None:
                    continue
                if parts[0] != key:
                    if group and (wanted is None or key in wanted):
                        sample = _decoded_sample(key, group, m, path)
                        if sample is not None:
                            yield sample
                    key, group = parts[0], []
                group.append((parts[1], off, size))
        finally:
            m.close()

    return samples()


def _decoded_sample(key: str, group, buf, path) -> dict | None:
    sample: dict[str, Any] = {"__key__": key}
    for ext, off, size in group:
        if ext in sample:
            log.warning("skipping: duplicate member %s.%s in %s", key, ext, path)
            continue
        try:
            sample[ext] = decode_value(ext, buf[off:off + size])
        except (ValueError, UnicodeDecodeError) as e:
            log.warning("skipping: cannot decode .%s of sample %r in %s: %s", ext, key, path, e)
            return None
    return sample


def collate(items: Sequence[tuple[np.ndarray, str | None, int | None]], tokenizer,
            token_cache: dict | None = None) -> Batch:
    images = torch.from_numpy(np.stack([it[0] for it in items]))
    texts = tokenize_unique(tokenizer, [it[1] for it in items], token_cache) if tokenizer is not None else None
    labels = torch.tensor([it[2] for it in items], dtype=torch.long) if items and items[0][2] is not None else None
    return Batch(images, texts, labels)


# --------------------------------------------------------------------------- sources


@dataclass
class MemorySubset:
    """The decoded subset in RAM; each epoch is a seeded permutation of it."""

    images: torch.Tensor          # uint8 [N, S, S, 3]
    texts: torch.Tensor | None    # long [N, L]
    labels: torch.Tensor | None   # long [N]
    keys: list[str]
    bad: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1
    kind: str = "memory"

    @classmethod
    def load(cls, index: SubsetIndex, decoder: SampleDecoder, tokenizer, *, batch_size: int, seed: int,
             rank: int = 0, world: int = 1, progress: Callable[[int], None] | None = None) -> "MemorySubset":
        n = sum(index.counts)
        s = decoder.image_size
        images = torch.empty((n, s, s, 3), dtype=torch.uint8)
        captions: list[str] = []
        labels: list[int] = []
        keys: list[str] = []
        bad = 0
        seen: set[str] = set()
        for sample in iter_subset_samples(index.shards, index.wanted):
            key = sample["__key__"]
            if key in seen:  # the same key in two shards: train on it once
                continue
            seen.add(key)
            try:
                img, cap, lab = decoder(sample)
            except BadImage as e:
                bad += 1
                log.warning("skipping %s", e)
                continue
            images[len(keys)] = torch.from_numpy(img)
            captions.append(cap)
            labels.append(lab if lab is not None else -1)
            keys.append(key)
            if progress:
                progress(1)
        images = images[: len(keys)].clone()
        texts = tokenize_unique(tokenizer, captions) if tokenizer is not None else None
        lab = torch.tensor(labels, dtype=torch.long) if decoder.label_column is not None else None
        return cls(images, texts, lab, keys, bad, batch_size, seed, rank, world)

    @property
    def n_samples(self) -> int:
        return len(self.keys)

    def batches_in_epoch(self, epoch: int) -> int:
        return (self.n_samples // self.world) // self.batch_size

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        idx = torch.from_numpy(rank_indices(self.n_samples, self.seed, epoch, self.rank, self.world))
        b = self.batch_size
        for i in range(start, self.batches_in_epoch(epoch)):
            sel = idx[i * b:(i + 1) * b]
            yield Batch(self.images[sel], self.texts[sel] if self.texts is not None else None,
                        self.labels[sel] if self.labels is not None else None)

    def close(self) -> None:
        pass


class _EpochStream(torch.utils.data.IterableDataset):
    """One epoch of one rank, as seen by each DataLoader worker (its reader slot)."""

    def __init__(self, src: "StreamingSubset", epoch: int, skip_per_worker: Sequence[int]):
        self.src, self.epoch, self.skip = src, epoch, list(skip_per_worker)

    def __iter__(self) -> Iterator[Batch]:
        src = self.src
        info = torch.utils.data.get_worker_info()
        w, n_workers = (info.id, info.num_workers) if info else (0, 1)
        slot, n_slots = src.rank * n_workers + w, src.world * n_workers
        order = shard_plan(len(src.index.shards), src.seed, self.epoch, slot, n_slots)
        rng = np.random.default_rng([src.seed, self.epoch, slot, 0x62756666])
        stream = shuffled(iter_subset_samples([src.index.shards[i] for i in order], src.index.wanted),
                          src.shuffle_buffer, rng)
        raw: list[dict] = []
        tokens: dict = {}     # caption -> token row, for this reader's epoch
        done = 0
        for sample in stream:
            raw.append(sample)
            if len(raw) < src.batch_size:
                continue
            if done >= self.skip[w]:
                items = []
                for s in raw:
                    try:
                        items.append(src.decoder(s))
                    except BadImage as e:
                        log.warning("skipping %s", e)
                if items:
                    yield collate(items, src.tokenizer, tokens)
            done += 1
            raw = []


def round_robin_taken(batches_per_worker: Sequence[int], k: int) -> list[int]:
    """How many batches each worker had delivered after ``k`` batches of a torch
    DataLoader (in-order: worker 0, 1, ..., skipping exhausted workers)."""
    left = list(batches_per_worker)
    taken = [0] * len(left)
    while k > 0 and any(left):
        for w in range(len(left)):
            if k == 0:
                break
            if left[w]:
                left[w] -= 1
                taken[w] += 1
                k -= 1
    return taken


@dataclass
class StreamingSubset:
    """Shards read every epoch, filtered by the subset keys, shuffled across shards and workers."""

    index: SubsetIndex
    decoder: SampleDecoder
    tokenizer: Any
    batch_size: int
    seed: int
    workers: int = 0
    shuffle_buffer: int = 2000
    rank: int = 0
    world: int = 1
    kind: str = "stream"
    _loader: Any = field(default=None, repr=False)

    @property
    def n_samples(self) -> int:
        return sum(self.index.counts)

    def _per_worker(self, epoch: int, rank: int) -> list[int]:
        n_workers = max(1, self.workers)
        out = []
        for w in range(n_workers):
            slot = rank * n_workers + w
            order = shard_plan(len(self.index.shards), self.seed, epoch, slot, self.world * n_workers)
            out.append(sum(self.index.counts[i] for i in order) // self.batch_size)
        return out

    def batches_in_epoch(self, epoch: int) -> int:
        """Full batches of the poorest rank (every DDP rank takes this many)."""
        return min(sum(self._per_worker(epoch, r)) for r in range(self.world))

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        n = self.batches_in_epoch(epoch)
        per_worker = self._per_worker(epoch, self.rank)
        ds = _EpochStream(self, epoch, round_robin_taken(per_worker, start))
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.workers,
                                             persistent_workers=False,
                                             multiprocessing_context="fork" if self.workers else None)
        it = iter(loader)
        try:
            for _ in range(start, n):
                try:
                    yield next(it)
                except StopIteration:
                    return
        finally:
            del it

    def close(self) -> None:
        pass


def image_count_bytes(n: int, image_size: int) -> int:
    return n * image_size * image_size * 3

