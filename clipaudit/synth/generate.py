"""Generate a synthetic collection: plan -> render in chunks (optionally in worker
processes) -> WebDataset shards per split -> ``collection.json``.

Chunks are fixed runs of ``CHUNK`` rows of one split, so every image is computed
in an identical batch whatever the number of workers: same preset and seed give
byte-identical shards (on one machine with the same numpy/Pillow builds).
"""

from __future__ import annotations

import io
import itertools
import multiprocessing as mp
import os
import re
import sys
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from clipaudit.errors import ClipauditError, InvalidInput
from clipaudit.shards import write_shards
from clipaudit.synth.captions import captions
from clipaudit.synth.collection import COLLECTION_FILE, Collection, SplitInfo
from clipaudit.synth.plan import GROUPS, CollectionPlan, SplitPlan, make_plan
from clipaudit.synth.presets import Preset, resolve_preset
from clipaudit.synth.render import NO_BACKGROUND, render

# bump when the same preset and seed would give other images or splits (2: test_natural drawn like the
# pool, the reference carries the ID test set's rendition share; 3: quickdraw doodles some classes as
# stick figures, and its strokes wander by warping, not by offsetting the outline; a painting's background
# follows its class as a photo's does; 4: a painting turns the scene's hues and posterises it, every default class
# is doodled as a symbol of its own, 40% of clipart is line art; 5: a split test_domains, every domain with each
# class's photos and paintings on every background alike, for study 3's mechanistic similarity; the other
# splits' images are unchanged)
GENERATOR_VERSION = "clipaudit.synth/5"
CHUNK = 256
SAMPLE_FIELDS = ["key", "class", "class_id", "domain", "domain_group", "background", "group", "split",
                 "near_duplicate_of", "seed"]
AUTO_WORKERS_MIN_IMAGES = 8_000  # below this, worker start-up costs more than it saves


class GenerationReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    location: str  # where the collection is (collection.json at its root)
    name: str
    preset: str
    seed: int
    counts: dict[str, int]  # split -> images
    total: int
    seconds: float
    images_per_s: float
    workers: int


@dataclass(frozen=True)
class _Spec:
    """What a worker needs besides the rows."""

    classes: tuple[str, ...]
    domains: tuple[str, ...]
    backgrounds: tuple[str, ...]
    image_size: int
    jpeg_quality: int


@dataclass
class _Task:
    split: str
    start: int
    cls: np.ndarray
    domain: np.ndarray
    background: np.ndarray
    group: np.ndarray
    seed: np.ndarray
    render_seed: np.ndarray
    perturb: np.ndarray
    dup_of: list


def _tasks(plan: CollectionPlan) -> Iterator[_Task]:
    for sp in plan.splits.values():
        for start in range(0, len(sp), CHUNK):
            sl = slice(start, start + CHUNK)
            yield _Task(sp.name, start, sp.cls[sl], sp.domain[sl], sp.background[sl], sp.group[sl], sp.seed[sl],
                        sp.render_seed[sl], sp.perturb[sl], sp.dup_of[sl])


def _encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    h, w = img.shape[:2]
    Image.frombytes("RGB", (w, h), img.tobytes()).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render_task(spec: _Spec, t: _Task) -> list[tuple[str, dict[str, Any]]]:
    """Draw, encode and describe one chunk: ``[(key, {"jpg", "txt", "json"}), ...]``."""
    dom_names = [spec.domains[d] for d in t.domain]
    bg_names = [spec.backgrounds[b] if b >= 0 else NO_BACKGROUND for b in t.background]
    cls_names = [spec.classes[c] for c in t.cls]
    imgs = render(list(spec.classes), t.cls, dom_names, bg_names, t.render_seed, t.perturb, spec.image_size)
    caps = captions(dom_names, cls_names, bg_names, t.seed)
    out = []
    for i in range(len(t.cls)):
        key = f"{t.split}-{t.start + i:06d}"
        meta = {
            "key": key,
            "class": cls_names[i],
            "class_id": int(t.cls[i]),
            "domain": dom_names[i],
            "domain_group": "natural" if dom_names[i] == "natural" else "rendition",
            "background": bg_names[i],
            "group": GROUPS[int(t.group[i])],
            "split": t.split,
            "near_duplicate_of": t.dup_of[i],
            "seed": int(t.seed[i]),
        }
        out.append((key, {"jpg": _encode_jpeg(imgs[i], spec.jpeg_quality), "txt": caps[i], "json": meta}))
    return out


_WORKER_SPEC: _Spec | None = None


def _init_worker(spec: _Spec) -> None:
    global _WORKER_SPEC
    _WORKER_SPEC = spec


def _worker(t: _Task):
    assert _WORKER_SPEC is not None
    return render_task(_WORKER_SPEC, t)


def _ordered_map(pool, fn, items, window: int):
    """``pool.map`` in order, with at most ``window`` tasks in flight (bounded memory)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _split_info(preset: Preset, sp: SplitPlan, shards) -> SplitInfo:
    doms = preset.domains
    dom_counts = Counter(doms[d] for d in sp.domain)
    bgs = Counter(preset.backgrounds[b] if b >= 0 else NO_BACKGROUND for b in sp.background)
    nominal_group = None if sp.nominal_domain is None else ("natural" if sp.nominal_domain == "natural" else "rendition")
    n_nat = int(dom_counts.get("natural", 0))
    contaminated = 0
    if nominal_group == "natural" and sp.kind in ("test", "reference"):
        contaminated = len(sp) - n_nat
    elif nominal_group == "rendition":
        contaminated = n_nat
    return SplitInfo(
        name=sp.name,
        kind=sp.kind,
        nominal_domain=sp.nominal_domain,
        count=len(sp),
        domains={d: int(dom_counts.get(d, 0)) for d in doms},
        domain_groups={"natural": n_nat, "rendition": len(sp) - n_nat},
        groups={g: int((sp.group == i).sum()) for i, g in enumerate(GROUPS)},
        backgrounds={b: int(bgs.get(b, 0)) for b in [*preset.backgrounds, NO_BACKGROUND]},
        classes={c: int((sp.cls == i).sum()) for i, c in enumerate(preset.classes)},
        near_duplicates=sum(1 for x in sp.dup_of if x is not None),
        contaminated=contaminated,
        shards=shards,
    )


def _default_workers(total: int) -> int:
    if total < AUTO_WORKERS_MIN_IMAGES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus - 1, 8))  # one CPU stays with the process writing the shards


class _Progress:
    """A rich progress bar over images (or nothing)."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled = enabled
        self._p = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.console = Console(stderr=True)
            self._p = Progress(TextColumn("[bold]synth[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=self.console,
                               transient=False)
            self._task = self._p.add_task(label, total=total, rate="")
            self._start = time.perf_counter()
            self._done = 0

    def __enter__(self):
        if self._p:
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p:
            self._p.__exit__(*exc)

    def advance(self, n: int, split: str) -> None:
        if self._p:
            self._done += n
            rate = self._done / max(time.perf_counter() - self._start, 1e-9)
            self._p.update(self._task, advance=n, description=split, rate=f"{rate:,.0f} img/s")


_SHARD_RE = re.compile(r"^(?P<split>[a-z_]+)/(?P=split)-\d{6}\.tar$")


def _remove_stale_shards(store, written: set[str], splits: list[str]) -> None:
    """Delete shards of an earlier, bigger run at the same location (only files
    named like ours, inside our split folders)."""
    for split in splits:
        for key in list(store.list(f"{split}/")):
            if _SHARD_RE.match(key) and key not in written:
                store.delete(key)


def generate(
    preset: str | Preset,
    out: str | Path,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> GenerationReport:
    """Generate the synthetic collection ``preset`` with ``seed`` into ``out``
    (a local directory or ``s3://bucket/prefix``); returns a report.

    ``workers``: processes that render (None: 1 for runs under 8,000 images or
    on 2 CPUs, else one per CPU but one, at most 8). The output does not depend
    on it.
    """
    from clipaudit.store import open_store

    p = resolve_preset(preset)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise InvalidInput(f"workers must be a positive integer, got {workers!r}")
    if isinstance(out, (str, Path)) and not str(out).startswith("s3://"):
        _check_local_output(Path(out))
    store = open_store(out)
    t0 = time.perf_counter()
    try:
        plan = make_plan(p, seed)
    except ValueError as e:
        raise InvalidInput(f"preset {p.name!r} cannot be planned: {e}") from e
    total = sum(len(s) for s in plan.splits.values())
    n_workers = workers or _default_workers(total)
    spec = _Spec(tuple(p.classes), tuple(p.domains), tuple(p.backgrounds), p.image_size, p.jpeg_quality)

    pool = None
    if n_workers > 1:
        pool = ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(spec,))
        results = _ordered_map(pool, _worker, _tasks(plan), window=4 * n_workers)
    else:
        results = (render_task(spec, t) for t in _tasks(plan))

    infos: dict[str, list] = {}
    try:
        with _Progress(progress, total, "") as bar:
            def stream():
                for chunk in results:
                    split = chunk[0][0].rsplit("-", 1)[0]
                    bar.advance(len(chunk), split)
                    for item in chunk:
                        yield split, item

            for split, group in itertools.groupby(stream(), key=lambda x: x[0]):
                infos[split] = write_shards((item for _, item in group), store, f"{split}/{split}", p.shard_maxcount)
    except BrokenProcessPool as e:
        raise ClipauditError(
            "a synth render worker died (out of memory? or generate(workers>1) called from a script without "
            "an `if __name__ == '__main__':` guard)") from e
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    coll = Collection(
        generator_version=GENERATOR_VERSION,
        name=f"synth-{p.name}-seed{seed}",
        preset=p.name,
        preset_config=p.model_dump(mode="json"),
        seed=seed,
        image_size=p.image_size,
        classes=list(p.classes),
        domains=list(p.domains),
        domain_groups={d: ("natural" if d == "natural" else "rendition") for d in p.domains},
        rendition_styles=list(p.rendition_styles),
        backgrounds=list(p.backgrounds),
        common_background={c: p.backgrounds[int(b)] for c, b in zip(p.classes, plan.common_background)},
        held_out_classes=[p.classes[i] for i in plan.held_out],
        sample_fields=list(SAMPLE_FIELDS),
        splits={name: _split_info(p, sp, infos.get(name, [])) for name, sp in plan.splits.items()},
    )
    store.put_bytes(COLLECTION_FILE, coll.dump_bytes())
    _remove_stale_shards(store, {s.key for v in infos.values() for s in v}, list(plan.splits))
    seconds = time.perf_counter() - t0
    report = GenerationReport(
        location=store.uri(), name=coll.name, preset=p.name, seed=seed,
        counts={n: s.count for n, s in coll.splits.items()}, total=total,
        seconds=round(seconds, 3), images_per_s=round(total / max(seconds, 1e-9), 1), workers=n_workers,
    )
    if progress:
        print(f"synth: {total:,} images ({p.name}, seed {seed}) in {seconds:.1f} s, "
              f"{report.images_per_s:,.0f} img/s, {n_workers} worker(s) -> {report.location}", file=sys.stderr)
    return report


def _check_local_output(path: Path) -> None:
    """Fail before any work if ``path`` cannot become a writable directory."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidInput(f"cannot write the collection to {path}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InvalidInput(f"cannot write the collection to {path}: {parent} is not writable")
            return
