"""Pure training logic: arrays and modules in, arrays and numbers out.

No transport, storage or metrics here (numpy, torch and open_clip only). Every
choice that decides *which* sample is seen *when* is a pure function of the seed,
the epoch and the position, so a resumed run replays exactly the order of an
uninterrupted one:

* :func:`resolve_mixture` — exact, seeded counts per manifest (largest remainder).
* :func:`epoch_permutation`, :func:`shard_plan`, :func:`shuffled` — the data order.
* :func:`lr_at` — warmup + cosine, open_clip_train's schedule, as a function of the step.
* :class:`ClipObjective`, :class:`SupervisedObjective` and :class:`Stepper` — one optimizer
  step (AMP, gradient accumulation and clipping), shared by both modes.

Tested in ``tests/unit/test_trainer_logic.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

T = TypeVar("T")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class MixtureError(ValueError):
    """A mixture that cannot be resolved (the handler turns it into InvalidInput)."""


# --------------------------------------------------------------------------- mixtures


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` that sum to ``total``
    exactly (largest remainder; ties go to the earlier component)."""
    if total < 0:
        raise MixtureError(f"cannot share out a negative total ({total})")
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0:
        if total:
            raise MixtureError(f"{total} samples left for no weighted component")
        return []
    if (w <= 0).any() or not np.isfinite(w).all():
        raise MixtureError("mixture weights must be positive")
    exact = total * w / w.sum()
    base = np.floor(exact).astype(np.int64)
    rest = total - int(base.sum())
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[:rest]:
        base[i] += 1
    return [int(x) for x in base]


def resolve_mixture(key_lists: Sequence[Sequence[str]], counts: Sequence[int | None],
                    weights: Sequence[float | None], total: int | None, seed: int,
                    names: Sequence[str] | None = None) -> list[list[str]]:
    """Draw each component's keys, deterministically by ``seed``.

    A component takes ``count`` keys, or a ``weight`` share of what ``total`` leaves
    after the fixed components, or (neither) all of its keys. Components are drawn
    in order and a key chosen by an earlier component is not available to a later
    one, so the union has exactly ``sum(counts)`` distinct keys. A count larger than
    what a manifest offers is refused.
    """
    n = len(key_lists)
    names = list(names or [f"component {i}" for i in range(n)])
    wanted: list[int | None] = []
    for keys, c, w in zip(key_lists, counts, weights):
        wanted.append(c if c is not None else (None if w is not None else len(set(keys))))
    weighted = [i for i in range(n) if wanted[i] is None]
    if weighted:
        if total is None:
            raise MixtureError("mixture weights need a total")
        fixed = sum(int(wanted[i]) for i in range(n) if wanted[i] is not None)
        if fixed > total:
            raise MixtureError(f"the fixed components already hold {fixed} samples, more than total={total}")
        for i, share in zip(weighted, apportion(total - fixed, [float(weights[i]) for i in weighted])):
            wanted[i] = share
    elif total is not None and sum(wanted) != total:
        raise MixtureError(f"mixture counts sum to {sum(wanted)}, not total={total}")
    taken: set[str] = set()
    out: list[list[str]] = []
    for i, keys in enumerate(key_lists):
        pool = sorted(set(keys) - taken)
        k = int(wanted[i])
        if k > len(pool):
            extra = f" ({len(set(keys)) - len(pool)} already taken by earlier components)" if len(pool) < len(set(keys)) else ""
            raise MixtureError(f"{names[i]}: asks for {k} samples but its manifest has {len(pool)}{extra}")
        rng = np.random.default_rng([seed, i, 0x6D6978])
        pick = rng.choice(len(pool), size=k, replace=False) if k < len(pool) else np.arange(len(pool))
        chosen = [pool[j] for j in sorted(pick.tolist())]
        taken.update(chosen)
        out.append(chosen)
    return out


# --------------------------------------------------------------------------- data order


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x7065726D]).permutation(n)


def rank_indices(n: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """In-memory subset: the sample indices rank ``rank`` sees in ``epoch`` (equal length on every rank)."""
    perm = epoch_permutation(n, seed, epoch)
    per_rank = n // world
    return perm[rank::world][:per_rank]


def shard_plan(n_shards: int, seed: int, epoch: int, slot: int, n_slots: int) -> list[int]:
    """Streaming: the shards (indices, in reading order) that reader ``slot`` of
    ``n_slots`` (= world size x workers) reads in ``epoch``."""
    order = np.random.default_rng([seed, epoch, 0x73686172]).permutation(n_shards)
    return [int(i) for i in order[slot::n_slots]]


def shuffled(items: Iterable[T], buffer: int, rng: np.random.Generator) -> Iterator[T]:
    """WebDataset-style shuffle buffer: hold up to ``buffer`` items, emit a random one per new item."""
    buf: list[T] = []
    for x in items:
        buf.append(x)
        if len(buf) >= buffer:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    for j in rng.permutation(len(buf)):
        yield buf[int(j)]


def streaming_batches_per_slot(shard_counts: Sequence[int], batch: int, seed: int, epoch: int,
                               n_slots: int) -> list[int]:
    """Full batches each reader slot produces in ``epoch`` (subset samples per shard known)."""
    out = []
    for slot in range(n_slots):
        n = sum(shard_counts[i] for i in shard_plan(len(shard_counts), seed, epoch, slot, n_slots))
        out.append(n // batch)
    return out


# --------------------------------------------------------------------------- schedule


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """open_clip_train's cosine_lr: linear warmup over ``warmup`` steps, then cosine to 0."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(e, es) / es)) * base_lr


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip_train's split: no weight decay on gains, biases, norms and logit_scale."""
    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in params if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in params if not exclude(n, p)], "weight_decay": weight_decay},
    ]


def make_adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
               eps: float) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, fused (one kernel for all parameters) where
    torch supports it: on CPU it makes the optimizer step about 10x cheaper for the
    tiny model, whose 3M-parameter token embedding dominates the update."""
    groups = param_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


# --------------------------------------------------------------------------- batches


def normalise_images(images_u8: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     device: torch.device | str, channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] normalised, on ``device`` (the cheap
    preprocess: the float work happens once per batch, on the accelerator if any)."""
    x = images_u8.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


@dataclass
class Batch:
    images: torch.Tensor            # uint8 [B, H, W, 3]
    texts: torch.Tensor | None      # long [B, L] (clip)
    labels: torch.Tensor | None     # long [B] (supervised)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- objectives


class ClipObjective:
    """open_clip's contrastive loss on an open_clip model (tuple or dict outputs)."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        from open_clip.loss import ClipLoss

        self.loss = ClipLoss(local_loss=False, gather_with_grad=world_size > 1, cache_labels=True,
                             rank=rank, world_size=world_size)

    def __call__(self, model, images: torch.Tensor, batch: Batch, device) -> torch.Tensor:
        out = model(images, batch.texts.to(device, non_blocking=True))
        if isinstance(out, dict):
            img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        else:
            img, txt, scale = out[:3]
        return self.loss(img, txt, scale)

    @staticmethod
    def after_step(model) -> None:
        """Clamp the temperature like open_clip_train (logit_scale <= ln 100)."""
        m = getattr(model, "module", model)
        with torch.no_grad():
            m.logit_scale.clamp_(0, math.log(100))


class SupervisedObjective:
    """Cross-entropy of an image classifier on integer labels."""

    def __call__(self, model, images: torch.Tensor, batch: Batch, device) -> torch.Tensor:
        return F.cross_entropy(model(images), batch.labels.to(device, non_blocking=True))

    @staticmethod
    def after_step(model) -> None:
        pass


class Stepper:
    """One optimizer step over ``accum_steps`` micro-batches: autocast (bf16/fp16),
    a GradScaler for fp16, gradient clipping, the LR set from the schedule first."""

    def __init__(self, model, objective, optimizer, *, precision: str, device: torch.device,
                 grad_clip: float | None, mean, std, channels_last: bool = False):
        self.model, self.objective, self.optimizer = model, objective, optimizer
        self.device, self.grad_clip, self.mean, self.std = device, grad_clip, mean, std
        self.channels_last = channels_last
        self.dtype = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "amp_fp16" else None

    def step(self, micro_batches: Sequence[Batch], lr: float) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        n = len(micro_batches)
        for mb in micro_batches:
            images = normalise_images(mb.images, self.mean, self.std, self.device, self.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                loss = self.objective(self.model, images, mb, self.device) / n
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            total += float(loss.detach())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, norm_type=2.0)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.objective.after_step(self.model)
        return total


# --------------------------------------------------------------------------- CPU threads


def intra_op_threads(requested: int, available: int, idle_cpus: float | None) -> int:
    """Intra-op threads for a CPU run: ``requested`` when > 0, else one per idle CPU
    (at least 1, at most ``available``; all of them when idleness is unknown).

    A thread team larger than the idle CPUs waits at every parallel region's barrier
    for its descheduled members: on 2 cores shared with other jobs, the tiny model's
    step took 1.2-1.6x longer with 2 threads than with 1 (services/trainer/README.md).
    """
    if requested > 0:
        return requested
    if idle_cpus is None:
        return max(1, available)
    return max(1, min(available, int(idle_cpus + 0.5)))


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict:
    """Torch RNG states as tensors (loadable with ``weights_only=True``)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def every(n: int) -> Callable[[int], bool]:
    return (lambda step: n > 0 and step % n == 0)
