"""The trainer's use cases, called alike by the CLI, gRPC, the Kafka worker and
embedded mode.

* :func:`train` — one training run, synchronously: resolve the subset (manifest
  or mixture), index the shards, build the model (open_clip CLIP or a timm
  classifier), resume from the last checkpoint if asked, step, checkpoint, return.
* :class:`TrainerJobs` — the service face: a FIFO queue with one job running at a
  time per replica (``submit``/``get``/``watch``/``cancel``), the Kafka handler
  ``on_train_job_requested`` and the ``CheckpointWritten`` event at the end.

Ports are injected: ``open_store`` (a location -> Store), a publisher (the bus)
and :class:`~services.trainer.metrics.TrainerMetrics`.

Tested in ``tests/unit/test_trainer_train.py`` (loss goes down, kill-and-resume,
bad input, checkpoint write failures), ``tests/unit/test_trainer_grpc.py`` (the job
lifecycle through a real channel) and ``tests/integration/test_trainer_kafka.py``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

from clipaudit.errors import (
    AlreadyExists, Cancelled, ClipauditError, FailedPrecondition, InvalidInput, NotFound,
)
from services.trainer.checkpoints import CheckpointStore, SavedCheckpoint
from services.trainer.spec import JobSpec, parse_spec

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- progress


@dataclass
class StepProgress:
    step: int
    total_steps: int
    loss: float
    samples_per_s: float
    lr: float
    epoch: int


@dataclass
class ResolvedSubset:
    keys: set[str] | None            # None: every sample of the data
    counts: dict[str, int]           # component label -> keys drawn


@dataclass
class TrainResult:
    job_id: str
    out: str
    checkpoint: SavedCheckpoint
    step: int
    total_steps: int
    losses: list[float]
    resolved_counts: dict[str, int]
    requested: int
    found: int
    missing: int
    bad_samples: int
    samples_per_s: float
    model_id: str
    arch: str
    data_source: str
    resumed_from: int | None = None

    def summary(self) -> dict:
        first = self.losses[: max(1, len(self.losses) // 10)]
        last = self.losses[-max(1, len(self.losses) // 10):]
        return {
            "job_id": self.job_id, "out": self.out, "checkpoint": self.checkpoint.uri, "step": self.step,
            "total_steps": self.total_steps, "model_id": self.model_id, "arch": self.arch,
            "resolved_counts": self.resolved_counts, "requested_keys": self.requested, "found": self.found,
            "missing": self.missing, "bad_samples": self.bad_samples, "samples_per_s": round(self.samples_per_s, 1),
            "loss_first": sum(first) / len(first) if first else None,
            "loss_last": sum(last) / len(last) if last else None, "data_source": self.data_source,
            "resumed_from": self.resumed_from,
        }


class StopTraining(Exception):
    """Raised by a progress callback to end a run at once (used to simulate a crash in tests)."""


# --------------------------------------------------------------------------- subset


def resolve_subset(spec: JobSpec, *, open_store: Callable | None = None) -> ResolvedSubset:
    """Read the manifests and draw the mixture (exact, seeded). Cheap: no shard is read."""
    comps = spec.components
    if not comps:
        return ResolvedSubset(None, {"all": -1})
    from clipaudit.manifests import read_manifest     # pandas: only when there is a manifest
    from services.trainer.logic import MixtureError, resolve_mixture

    key_lists = []
    for c in comps:
        m = read_manifest(c.manifest)
        key_lists.append(m.keys)
    labels = [c.label for c in comps]
    if len(set(labels)) != len(labels):
        labels = [f"{i}:{lab}" for i, lab in enumerate(labels)]
    try:
        chosen = resolve_mixture(key_lists, [c.count for c in comps], [c.weight for c in comps], spec.total,
                                 spec.seed, names=labels)
    except MixtureError as e:
        raise InvalidInput(f"mixture cannot be resolved: {e}") from e
    keys = set().union(*chosen)
    if not keys:
        raise InvalidInput("the subset is empty: the manifest(s) hold no keys")
    return ResolvedSubset(keys, dict(zip(labels, map(len, chosen))))


def validate_spec(spec: JobSpec) -> ResolvedSubset:
    """What can be checked before a job is queued: the model resolves, the manifests
    exist and the mixture draws. Raises InvalidInput/NotFound with one clear line."""
    check_model_name(spec)
    return resolve_subset(spec)


def check_model_name(spec: JobSpec) -> None:
    if spec.mode == "clip":
        from clipaudit.models import resolve_architecture

        resolve_architecture(spec.model)
    else:
        import timm

        if not timm.is_model(spec.model):
            raise NotFound(f"unknown timm architecture {spec.model!r}")


# --------------------------------------------------------------------------- the run


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "_Dist":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def _device(spec: JobSpec, dist: _Dist):
    import torch

    if spec.device == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        name = spec.device
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FailedPrecondition(f"device {spec.device!r} asked for but CUDA is not available")
        if name == "cuda":
            name = f"cuda:{dist.local_rank}"
    return torch.device(name)


def idle_cpus(window_s: float = 0.1) -> float | None:
    """How many CPUs sat idle over the last ``window_s`` (``/proc/stat``; None elsewhere)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v[:8])        # idle + iowait, all but guest time

    try:
        idle0, total0 = sample()
        time.sleep(window_s)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


def cpu_threads(spec: JobSpec, saved: int | None = None) -> int:
    """The run's intra-op thread count on CPU: the resumed run's (so a resumed run
    computes exactly what the uninterrupted one did), else ``spec.threads``, else
    ``OMP_NUM_THREADS`` when set, else one per idle CPU (``logic.intra_op_threads``)."""
    import torch

    from services.trainer.logic import intra_op_threads

    if saved:
        return int(saved)
    if spec.threads or os.environ.get("OMP_NUM_THREADS"):
        return spec.threads or torch.get_num_threads()
    return intra_op_threads(0, torch.get_num_threads(), idle_cpus())


@dataclass
class _Model:
    module: Any
    arch: str
    image_size: int
    mean: tuple
    std: tuple
    tokenizer: Any = None
    classes: list[str] | None = None


def _build_model(spec: JobSpec, classes: list[str] | None) -> _Model:
    import torch

    torch.manual_seed(spec.seed)
    if spec.mode == "clip":
        import open_clip

        from clipaudit.models import resolve_architecture
        from services.trainer.logic import OPENAI_MEAN, OPENAI_STD

        arch = resolve_architecture(spec.model)
        try:
            model = open_clip.create_model(arch, pretrained=None)
        except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as e:
            raise InvalidInput(f"model {arch!r} could not be built from its config: {e}") from e
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        return _Model(model, arch, size, tuple(cfg.get("mean", OPENAI_MEAN)), tuple(cfg.get("std", OPENAI_STD)),
                      tokenizer=open_clip.get_tokenizer(arch))
    import timm

    from clipaudit.convnet import register as register_towers

    register_towers()  # our timm towers can serve as supervised classifiers too

    if not classes:
        raise InvalidInput("supervised training needs at least one class")
    try:
        model = timm.create_model(spec.model, pretrained=False, num_classes=len(classes))
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise InvalidInput(f"timm model {spec.model!r} could not be built: {e}") from e
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = spec.image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    return _Model(model, spec.model, size, tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                  tuple(cfg.get("std", (0.229, 0.224, 0.225))), classes=list(classes))


def _supervised_classes(spec: JobSpec, refs, index) -> list[str]:
    """The label order: the spec's, else the collections' class list, else the subset's labels."""
    if spec.classes:
        return list(spec.classes)
    if spec.label_column == "class":
        from clipaudit.store import open_store
        from clipaudit.synth.collection import COLLECTION_FILE, Collection

        found: list[str] = []
        for loc in spec.data:
            if not str(loc).endswith(".tar"):
                store = open_store(loc, create=False)
                if store.exists(COLLECTION_FILE):
                    for c in Collection.load(store).classes:
                        if c not in found:
                            found.append(c)
        if found:
            return found
    from services.trainer.data import iter_subset_samples

    values = set()
    for s in iter_subset_samples(index.shards, index.wanted):
        v = (s.get("json") or {}).get(spec.label_column)
        if v is not None:
            values.add(str(v))
    if not values:
        raise InvalidInput(f"no sample of the subset has a {spec.label_column!r} label")
    return sorted(values)


def train(spec: JobSpec, *, job_id: str, out: str | None = None, open_store: Callable | None = None,
          resume: bool | None = None, on_progress: Callable[[StepProgress], None] | None = None,
          cancel: threading.Event | None = None, metrics=None, show_progress: bool = False) -> TrainResult:
    """Run (or resume, or return the finished result of) one training job.

    ``resume``: True continues from the last checkpoint (a fresh start when there is
    none), False refuses an output location that already holds checkpoints, None
    (services) resumes when a checkpoint exists. A finished run returns its final
    checkpoint without training again, so a redelivered job is cheap.
    """
    import torch

    from clipaudit.convnet import cpu_prefers_channels_last
    from services.trainer import logic
    from services.trainer.data import (
        MemorySubset, SampleDecoder, StreamingSubset, image_count_bytes, index_subset, resolve_shards,
    )

    if open_store is None:
        from clipaudit.store import open_store
    out = out or spec.out
    if not out:
        raise InvalidInput("no output location: set spec.out (or --out)")
    dist = _Dist.from_env()
    ckpts = CheckpointStore(open_store(out), keep=spec.keep_checkpoints)
    pointer = ckpts.latest()
    if pointer is not None and resume is False:
        raise FailedPrecondition(f"{out} already holds checkpoints (step {pointer['step']}); pass --resume to "
                                 "continue that run or choose another output location")
    resume_state = None
    if pointer is not None:
        resume_state = ckpts.load(pointer["checkpoint"])
        if resume_state.get("mode") != spec.mode or resume_state.get("arch") not in (spec.model, _arch_name(spec)):
            raise FailedPrecondition(
                f"checkpoint {ckpts.uri(pointer['checkpoint'])} is a {resume_state.get('mode')} "
                f"{resume_state.get('arch')!r} run; this job trains {spec.mode} {spec.model!r}")
        if pointer.get("final"):
            saved = SavedCheckpoint(pointer["checkpoint"], ckpts.uri(pointer["checkpoint"]), pointer["step"], True,
                                    pointer.get("sha256", ""), pointer.get("size_bytes", 0))
            return _result_from_state(job_id, out, saved, resume_state)

    # ---- subset and data
    subset = resolve_subset(spec)
    refs = resolve_shards(spec.data, spec.split)
    index = index_subset(refs, subset.keys)
    if subset.keys is not None:
        if index.found == 0:
            raise InvalidInput(f"none of the {index.requested} manifest keys are in the data ({len(refs)} shard(s) "
                               f"of {', '.join(spec.data)}); wrong --data or --split?")
        if index.missing:
            log.warning("%d of %d manifest keys are not in the data; training on the %d found",
                        index.missing, index.requested, index.found)
    if metrics is not None:
        metrics.missing_keys.set(index.missing)
    if subset.counts == {"all": -1}:
        subset.counts = {"all": index.found}

    classes = _supervised_classes(spec, refs, index) if spec.mode == "supervised" else None
    built = _build_model(spec, classes)
    if resume_state is not None and spec.mode == "supervised" and resume_state.get("classes") != built.classes:
        raise FailedPrecondition("checkpoint was trained on other classes than this job's")
    device = _device(spec, dist)
    threads_before = torch.get_num_threads()
    threads = cpu_threads(spec, (resume_state or {}).get("cpu_threads")) if device.type == "cpu" else threads_before
    decoder = SampleDecoder(built.image_size, spec.label_column if spec.mode == "supervised" else None,
                            {c: i for i, c in enumerate(classes)} if classes else None)
    use_memory = spec.cache == "memory" or (
        spec.cache == "auto" and image_count_bytes(index.found, built.image_size) <= spec.cache_max_bytes)
    if use_memory:
        bar = _bar(index.found, "decoding subset", show_progress and dist.rank == 0)
        src = MemorySubset.load(index, decoder, built.tokenizer, batch_size=spec.batch_size, seed=spec.seed,
                                rank=dist.rank, world=dist.world, progress=bar.update if bar else None)
        if bar:
            bar.close()
        bad = src.bad
        if metrics is not None and bad:
            metrics.bad_samples.inc(bad)
        if src.n_samples == 0:
            raise InvalidInput(f"no sample of the subset could be decoded ({bad} bad)")
    else:
        src = StreamingSubset(index, decoder, built.tokenizer, spec.batch_size, spec.seed, spec.workers,
                              spec.shuffle_buffer, dist.rank, dist.world)
        bad = 0
    per_epoch = src.batches_in_epoch(0)
    if per_epoch == 0:
        raise InvalidInput(f"batch size {spec.batch_size} x {dist.world} process(es) is larger than the subset "
                           f"({src.n_samples} samples{'' if use_memory else ' spread over the readers'})")
    global_batch = spec.batch_size * dist.world * spec.accum_steps
    if spec.samples is not None:
        total_steps = max(1, math.ceil(spec.samples / global_batch))
    else:
        total_steps = max(1, int((spec.epochs or 1.0) * per_epoch) // spec.accum_steps)

    # ---- model, optimizer, distributed
    model = built.module.to(device)
    # channels-last: convolutional supervised models on CUDA, and towers that run faster
    # that way on CPU too (clipaudit.convnet: 1.3x per step measured); weights and inputs both
    channels_last = ((device.type == "cuda" and spec.mode == "supervised")
                     or (device.type == "cpu" and cpu_prefers_channels_last(model)))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if spec.grad_checkpointing and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    optimizer = logic.make_adamw(model, spec.lr, spec.weight_decay, tuple(spec.betas), spec.eps)
    if dist.world > 1:
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        train_model = model
    objective = logic.ClipObjective(dist.rank, dist.world) if spec.mode == "clip" else logic.SupervisedObjective()
    stepper = logic.Stepper(train_model, objective, optimizer, precision=spec.precision, device=device,
                            grad_clip=spec.grad_clip, mean=built.mean, std=built.std,
                            channels_last=channels_last)

    step, epoch, batch_pos = 0, 0, 0
    history: dict[str, list[float]] = {"loss": [], "lr": []}
    resumed_from = None
    if resume_state is not None:
        try:
            model.load_state_dict(resume_state["model"], strict=True)
        except RuntimeError as e:
            raise FailedPrecondition(f"checkpoint does not fit {built.arch!r}: {str(e).splitlines()[0]}") from e
        optimizer.load_state_dict(resume_state["optimizer"])
        if stepper.scaler is not None and resume_state.get("scaler"):
            stepper.scaler.load_state_dict(resume_state["scaler"])
        step = int(resume_state["step"])
        epoch = int(resume_state["data_position"]["epoch"])
        batch_pos = int(resume_state["data_position"]["batch"])
        history = {k: list(v) for k, v in resume_state.get("history", history).items()}
        logic.restore_rng(resume_state.get("rng", {}))
        resumed_from = step
        log.info("resuming %s from step %d (epoch %d, batch %d)", job_id, step, epoch, batch_pos)

    def state(final: bool) -> dict:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": {"kind": "warmup_cosine", "base_lr": spec.lr, "warmup_steps": spec.warmup_steps,
                          "total_steps": total_steps},
            "scaler": stepper.scaler.state_dict() if stepper.scaler is not None else {},
            "step": step, "data_position": {"epoch": epoch, "batch": batch_pos}, "rng": logic.capture_rng(),
            "spec": spec.model_dump_json(), "resolved_counts": dict(subset.counts),
            "subset": {"requested": index.requested, "found": index.found, "missing": index.missing,
                       "bad_samples": bad, "source": src.kind},
            "arch": built.arch, "mode": spec.mode, "model_id": f"{built.arch}@{job_id}-step{step}",
            "classes": built.classes or [], "image_size": built.image_size, "history": history,
            "job_id": job_id, "world_size": dist.world, "final": final, "total_steps": total_steps,
            "cpu_threads": threads if device.type == "cpu" else 0,
        }

    def save(final: bool) -> SavedCheckpoint | None:
        if dist.rank != 0:
            return None
        try:
            saved = ckpts.save(state(final), step=step, final=final)
        except ClipauditError:
            if metrics is not None:
                metrics.checkpoints.labels("failed").inc()
            raise
        if metrics is not None:
            metrics.checkpoints.labels("ok").inc()
        return saved

    def stream() -> Iterator[tuple[int, int, Any]]:
        e, start, empty = epoch, batch_pos, 0
        while True:
            got = False
            for i, b in enumerate(src.iter_epoch(e, start), start=start):
                got = True
                yield e, i + 1, b
            empty = 0 if got or start else empty + 1
            if empty > 10:
                raise InvalidInput("the data yields no batches (every epoch is empty)")
            e, start = e + 1, 0

    bar = _bar(total_steps, f"train {job_id}", show_progress and dist.rank == 0, initial=step)
    batches = stream()
    torch.set_num_threads(threads)   # restored below: in embedded mode other services share the process
    log.info("%s: %d step(s) of %d on %s, %d intra-op thread(s), %s data", job_id, total_steps - step, total_steps,
             device, threads, src.kind)
    window_t, window_samples = time.perf_counter(), 0
    sps = 0.0
    saved: SavedCheckpoint | None = None
    every = logic.every(spec.checkpoint_every)
    try:
        while step < total_steps:
            if cancel is not None and cancel.is_set():
                saved = save(False)
                raise Cancelled(f"job {job_id} cancelled at step {step}"
                                + (f"; checkpoint {saved.uri}" if saved else ""))
            t0 = time.perf_counter()
            micro = []
            for _ in range(spec.accum_steps):
                epoch, batch_pos, b = next(batches)
                micro.append(b)
            lr = logic.lr_at(step, spec.lr, spec.warmup_steps, total_steps)
            loss = stepper.step(micro, lr)
            step += 1
            n = sum(len(b) for b in micro) * dist.world
            history["loss"].append(loss)
            history["lr"].append(lr)
            window_samples += n
            dt = time.perf_counter() - t0
            if metrics is not None:
                metrics.step_seconds.observe(dt)
                metrics.steps.inc()
                metrics.samples.inc(n)
                metrics.loss.set(loss)
                metrics.learning_rate.set(lr)
            if step % spec.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                sps = window_samples / max(now - window_t, 1e-9)
                window_t, window_samples = now, 0
                if metrics is not None:
                    metrics.samples_per_s.set(sps)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if on_progress is not None:
                on_progress(StepProgress(step, total_steps, loss, sps, lr, epoch))
            if step < total_steps and every(step):
                saved = save(False)
        saved = save(True)
    finally:
        if bar:
            bar.close()
        batches.close()
        torch.set_num_threads(threads_before)
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    if saved is None:  # a rank other than 0: report the step, no checkpoint of its own
        saved = SavedCheckpoint("", "", step, True, "", 0)
    return TrainResult(job_id, out, saved, step, total_steps, list(history["loss"]), dict(subset.counts),
                       index.requested, index.found, index.missing, bad, sps,
                       f"{built.arch}@{job_id}-step{step}", built.arch, src.kind, resumed_from)


def _arch_name(spec: JobSpec) -> str:
    name = spec.model
    if spec.mode == "clip" and name.endswith(".json"):
        return name.rsplit("/", 1)[-1][: -len(".json")]
    return name


def _result_from_state(job_id: str, out: str, saved: SavedCheckpoint, st: dict) -> TrainResult:
    sub = st.get("subset", {})
    hist = st.get("history", {}).get("loss", [])
    return TrainResult(job_id, out, saved, int(st["step"]), int(st.get("total_steps", st["step"])), list(hist),
                       dict(st.get("resolved_counts", {})), int(sub.get("requested", 0)), int(sub.get("found", 0)),
                       int(sub.get("missing", 0)), int(sub.get("bad_samples", 0)), 0.0, st.get("model_id", ""),
                       st.get("arch", ""), sub.get("source", ""), None)


def _bar(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False)


# --------------------------------------------------------------------------- jobs


QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


@dataclass
class JobStatus:
    job_id: str
    state: str
    spec_json: str
    step: int = 0
    total_steps: int = 0
    loss: float = float("nan")
    samples_per_s: float = 0.0
    lr: float = 0.0
    error: str = ""
    error_type: str = ""
    checkpoint: SavedCheckpoint | None = None
    result: TrainResult | None = None
    version: int = 0


@dataclass
class _Job:
    status: JobStatus
    spec: JobSpec
    cancel: threading.Event = field(default_factory=threading.Event)


class TrainerJobs:
    """Job queue of one replica: jobs run one at a time, in submission order."""

    def __init__(self, *, open_store: Callable | None = None, publisher=None, metrics=None,
                 default_out: str | None = None, checkpoint_topic: str = "checkpoints.v1",
                 max_finished: int = 1000):
        if open_store is None:
            from clipaudit.store import open_store
        self.open_store = open_store
        self.publisher = publisher
        self.metrics = metrics
        self.default_out = default_out
        self.checkpoint_topic = checkpoint_topic
        self.max_finished = max_finished
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._queue: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle
    def start(self) -> "TrainerJobs":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_queue, name="trainer-jobs", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        with self._cond:
            for job in self._jobs.values():
                if job.status.state in (QUEUED, RUNNING):
                    job.cancel.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- use cases
    def submit(self, spec_json: str, job_id: str = "") -> JobStatus:
        try:
            spec = parse_spec(spec_json)
            validate_spec(spec)
        except ClipauditError as e:
            self._count_rejected(e)
            raise
        job_id = job_id or uuid.uuid4().hex[:12]
        if not spec.out and not self.default_out:
            raise InvalidInput("the job spec has no out and this trainer has no default output location")
        with self._cond:
            if job_id in self._jobs:
                existing = self._jobs[job_id]
                if parse_spec(existing.status.spec_json) != spec:
                    raise AlreadyExists(f"job {job_id} exists with another spec")
                return replace(existing.status)
            status = JobStatus(job_id, QUEUED, spec.model_dump_json())
            self._jobs[job_id] = _Job(status, spec)
            self._queue.append(job_id)
            self._gauge()
            self._cond.notify_all()
            return replace(status)

    def get(self, job_id: str) -> JobStatus:
        with self._cond:
            return replace(self._job(job_id).status)

    def watch(self, job_id: str, *, timeout_s: float | None = None, alive: Callable[[], bool] = lambda: True
              ) -> Iterator[JobStatus]:
        """Every change of a job (step, state) until it ends; the first item is its current status."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        seen = -1
        while True:
            with self._cond:
                job = self._job(job_id)
                while job.status.version == seen and not self._stop.is_set():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return
                    self._cond.wait(timeout=min(1.0, left) if left is not None else 1.0)
                    if not alive():
                        return
                status = replace(job.status)
                seen = status.version
            yield status
            if status.state in TERMINAL or self._stop.is_set():
                return

    def cancel(self, job_id: str) -> JobStatus:
        with self._cond:
            job = self._job(job_id)
            if job.status.state == QUEUED:
                self._queue.remove(job_id)
                self._finish(job, CANCELLED, error="cancelled before it started", error_type="Cancelled")
            elif job.status.state == RUNNING:
                job.cancel.set()
            return replace(job.status)

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        last = None
        for last in self.watch(job_id, timeout_s=timeout_s):
            pass
        return last if last is not None else self.get(job_id)

    def on_train_job_requested(self, event) -> None:
        """Kafka handler: run the job to its end before the offset is committed (a
        redelivered job resumes from its checkpoint or returns its final one).
        Bad input re-raises InvalidInput so the message is dead-lettered at once."""
        status = self.submit(event.spec_json, event.job_id or "")
        status = self.wait(status.job_id)
        if status.state == FAILED:
            if status.error_type in ("InvalidInput", "NotFound", "FailedPrecondition"):
                raise InvalidInput(f"job {status.job_id}: {status.error}")  # retrying cannot help
            raise RuntimeError(f"job {status.job_id} failed: {status.error}")

    # ---- internals
    def _job(self, job_id: str) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no job {job_id!r} on this trainer") from None

    def _gauge(self) -> None:
        if self.metrics is None:
            return
        counts = {s: 0 for s in (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)}
        for j in self._jobs.values():
            counts[j.status.state] += 1
        for s, n in counts.items():
            self.metrics.jobs.labels(s).set(n)

    def _count_rejected(self, e: ClipauditError) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(type(e).__name__).inc()

    def _finish(self, job: _Job, state: str, *, error: str = "", error_type: str = "") -> None:
        st = job.status
        st.state, st.error, st.error_type = state, error, error_type
        st.version += 1
        if self.metrics is not None:
            self.metrics.jobs_finished.labels(state).inc()
        finished = [k for k, j in self._jobs.items() if j.status.state in TERMINAL]
        for k in finished[: max(0, len(finished) - self.max_finished)]:
            del self._jobs[k]
        self._gauge()
        self._cond.notify_all()

    def _update(self, job: _Job, p: StepProgress) -> None:
        with self._cond:
            st = job.status
            st.step, st.total_steps, st.loss, st.samples_per_s, st.lr = p.step, p.total_steps, p.loss, p.samples_per_s, p.lr
            st.version += 1
            self._cond.notify_all()

    def _run_queue(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(timeout=1.0)
                if self._stop.is_set():
                    return
                job = self._jobs[self._queue.pop(0)]
                job.status.state = RUNNING
                job.status.version += 1
                self._gauge()
                self._cond.notify_all()
            self._run_one(job)

    def _run_one(self, job: _Job) -> None:
        job_id = job.status.job_id
        out = job.spec.out or f"{self.default_out.rstrip('/')}/trainer/{job_id}"
        try:
            result = train(job.spec, job_id=job_id, out=out, open_store=self.open_store, resume=None,
                           on_progress=lambda p: self._update(job, p), cancel=job.cancel, metrics=self.metrics)
        except Cancelled as e:
            with self._cond:
                self._finish(job, CANCELLED, error=str(e), error_type="Cancelled")
            return
        except ClipauditError as e:
            log.warning("job %s failed: %s", job_id, e)
            if isinstance(e, (InvalidInput, NotFound, FailedPrecondition)):
                self._count_rejected(e)
            with self._cond:
                self._finish(job, FAILED, error=str(e).splitlines()[0], error_type=type(e).__name__)
            return
        except Exception as e:  # noqa: BLE001 - a job's crash must not kill the replica
            log.exception("job %s crashed", job_id)
            with self._cond:
                self._finish(job, FAILED, error=f"{type(e).__name__}: {e}".splitlines()[0],
                             error_type=type(e).__name__)
            return
        self._publish(job, result)
        with self._cond:
            st = job.status
            st.checkpoint, st.result = result.checkpoint, result
            st.step, st.total_steps = result.step, result.total_steps
            if result.losses:
                st.loss = result.losses[-1]
            self._finish(job, SUCCEEDED)

    def _publish(self, job: _Job, result: TrainResult) -> None:
        if self.publisher is None or not result.checkpoint.uri:
            return
        import json

        from clipaudit.common.v1 import common_pb2
        from clipaudit.events.v1 import events_pb2

        ck = result.checkpoint
        evaluations = "" if job.spec.evaluations is None else json.dumps(job.spec.evaluations)
        ev = events_pb2.CheckpointWritten(
            job_id=result.job_id, step=ck.step, final=True, model_id=result.model_id, evaluations_json=evaluations,
            checkpoint=common_pb2.ObjectRef(uri=ck.uri, sha256=ck.sha256, size_bytes=ck.size_bytes))
        self.publisher.publish(self.checkpoint_topic, result.job_id, ev)
        self.publisher.flush()
