"""Model-side encoding: images of a test set, class prompts, per-layer activations.

Kept behind :func:`encode_test_set` so a faster image path (the embedder service's
batch encoder) can replace the simple loop here without touching the evaluator.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from clipaudit.errors import FailedPrecondition, InvalidInput
from clipaudit.lru import ByteBoundedLRU
from services.evaluator.checkpoints import EvaluatedModel
from services.evaluator.testsets import TestSetSource, image_bytes, iter_shard_samples, sample_metadata

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, int, int, str], None]


@dataclass
class EncodedTestSet:
    outputs: np.ndarray                 # CLIP: [N, D] normalised image embeddings; supervised: [N, K] logits
    metadata: pd.DataFrame              # one row per output: key + label columns
    activations: dict[str, np.ndarray] = field(default_factory=dict)   # layer -> [N, units]
    skipped: int = 0


def image_layers(tower) -> list[tuple[str, object]]:
    """The layers of an image tower whose outputs are compared across domains:
    ViT residual blocks, ResNet stages (+ attention pool), timm stages/blocks (looked
    up inside open_clip's ``TimmModel`` wrapper, whose children are just trunk and head)."""
    trunk = getattr(tower, "trunk", None)
    if trunk is not None and any(getattr(trunk, a, None) is not None for a in ("stages", "blocks")):
        tower = trunk
    if hasattr(tower, "transformer") and hasattr(tower.transformer, "resblocks"):
        return [(f"resblock{i}", b) for i, b in enumerate(tower.transformer.resblocks)]
    names = [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(tower, n)]
    if names:
        layers = [(n, getattr(tower, n)) for n in names]
        if hasattr(tower, "attnpool"):
            layers.append(("attnpool", tower.attnpool))
        return layers
    for attr in ("stages", "blocks"):
        seq = getattr(tower, attr, None)
        if seq is not None and len(seq):
            return [(f"{attr}{i}", m) for i, m in enumerate(seq)]
    return [(n, m) for n, m in tower.named_children() if any(True for _ in m.parameters())]


def _pool(out, batch: int, batch_first: bool) -> "np.ndarray":
    """One vector of units per image: spatial mean for conv maps, token mean for sequences."""
    import torch

    if isinstance(out, (tuple, list)):
        out = out[0]
    t = out.detach().float()
    if t.dim() == 4:
        return t.mean(dim=(2, 3)).cpu().numpy()
    if t.dim() == 3:
        if not batch_first or (t.shape[0] != batch and t.shape[1] == batch):
            t = t.transpose(0, 1)
        return t.mean(dim=1).cpu().numpy()
    if t.dim() == 2:
        return t.cpu().numpy()
    return torch.flatten(t, 1).cpu().numpy()


def _forward(model: EvaluatedModel, x):
    import torch

    with torch.no_grad():
        if model.kind == "clip":
            f = model.model.encode_image(x)
            return torch.nn.functional.normalize(f.float(), dim=-1)
        return model.model(x).float()


def encode_test_set(model: EvaluatedModel, source: TestSetSource, *, batch_size: int = 64,
                    hook_layers: bool = False, progress: ProgressFn | None = None,
                    cancelled: Callable[[], bool] | None = None) -> EncodedTestSet:
    """Decode, preprocess and run every image of ``source`` through the model.

    An embedding set is used as it is when it was made by this very model (same
    model id) and no activations are needed; otherwise it is refused (activations
    and other models need the images)."""
    if source.kind == "embeddings":
        from clipaudit.embeddings import EmbeddingSet

        es = EmbeddingSet.open(source.store)
        if model.kind != "clip" or es.model_id != model.model_id:
            raise FailedPrecondition(f"embedding set {source.location} was made by {es.model_id!r}, not by the "
                                     f"evaluated model {model.model_id!r}; evaluate the image shards instead")
        if hook_layers:
            raise FailedPrecondition(f"{source.location} is an embedding set: layer activations need the images")
        vectors, meta = es.load()
        from clipaudit.embeddings import check_vectors

        vectors = check_vectors(vectors, dim=es.dim, normalise=True, what=source.location)
        if progress:
            progress("encode", len(vectors), len(vectors), f"{source.name}: read {len(vectors)} embeddings")
        return EncodedTestSet(np.asarray(vectors, dtype=np.float32), meta.reset_index(drop=True))
    return _encode_shards(model, source, batch_size=batch_size, hook_layers=hook_layers, progress=progress,
                          cancelled=cancelled)


# Preprocessed test images, per process: a study evaluates dozens of checkpoints of one
# architecture on the same test sets, and decoding + preprocessing is most of an
# evaluation's cost at small model sizes. Keyed by the shards' identity and the exact
# preprocessing; a test set larger than the bound is streamed and not kept.
PREPROCESSED = ByteBoundedLRU(int(os.environ.get("CLIPAUDIT_EVALUATOR_CACHE_MB", "512")) << 20)


def _cache_key(source: TestSetSource, preprocess) -> tuple:
    """The shards (name, size, and mtime when local) and the preprocessing (its repr
    names every resize, crop and normalisation constant)."""
    local = getattr(source.store, "local_path", None)
    shards = []
    for key in source.shard_keys:
        if local is not None:
            st = local(key).stat()
            shards.append((key, st.st_size, st.st_mtime_ns))
        else:
            shards.append((key, source.store.size(key)))
    return source.location, tuple(shards), repr(preprocess)


def _preprocessed_batches(model, source, *, batch_size, progress, cancelled):
    """Yield ``(x, rows)`` batches of preprocessed images and their label rows; the
    second element of the returned pair is filled with the skipped count at the end.
    Served from :data:`PREPROCESSED` when this test set was prepared before."""
    import torch

    from clipaudit.errors import Cancelled
    from clipaudit.images import BadImage, decode_image
    from clipaudit.shards import warn_and_continue

    key = _cache_key(source, model.preprocess)
    hit = PREPROCESSED.get(key)
    if hit is not None:
        batches, skipped = hit
        for x, rows in batches:
            if cancelled and cancelled():
                raise Cancelled("evaluation cancelled")
            if len(x) <= batch_size:
                yield x, rows
            else:
                for s in range(0, len(x), batch_size):
                    yield x[s:s + batch_size], rows[s:s + batch_size]
        return skipped

    keep: list | None = []          # what will be cached, dropped once over the bound
    kept_bytes = 0
    pending_x, pending_rows = [], []
    skipped = 0

    def batch():
        nonlocal keep, kept_bytes
        x, rows = torch.stack(pending_x), list(pending_rows)
        pending_x.clear()
        pending_rows.clear()
        if keep is not None:
            kept_bytes += x.numel() * x.element_size()
            keep = keep if kept_bytes <= PREPROCESSED.max_bytes else None
            if keep is not None:
                keep.append((x, rows))
        return x, rows

    for sample in iter_shard_samples(source, warn_and_continue):
        if cancelled and cancelled():
            raise Cancelled("evaluation cancelled")
        data = image_bytes(sample)
        if data is None:
            skipped += 1
            continue
        try:
            img = decode_image(data)
        except BadImage as e:
            log.warning("skipping %s: %s", sample.get("__key__"), e)
            skipped += 1
            continue
        pending_x.append(model.preprocess(img))
        pending_rows.append(sample_metadata(sample))
        if len(pending_x) >= batch_size:
            yield batch()
    if pending_x:
        yield batch()
    if keep is not None:
        PREPROCESSED.put(key, (keep, skipped), size=kept_bytes)
    return skipped


def _encode_shards(model, source, *, batch_size, hook_layers, progress, cancelled) -> EncodedTestSet:
    layers = image_layers(model.image_tower) if hook_layers else []
    captured: dict[str, list[np.ndarray]] = {n: [] for n, _ in layers}
    current = {"batch": 0}
    handles = []
    batch_first = bool(getattr(getattr(model.image_tower, "transformer", None), "batch_first", True))
    for name, module in layers:
        def hook(_m, _inp, out, name=name):
            captured[name].append(_pool(out, current["batch"], batch_first))
        handles.append(module.register_forward_hook(hook))

    outputs, rows = [], []
    batches = _preprocessed_batches(model, source, batch_size=batch_size, progress=progress, cancelled=cancelled)
    try:
        while True:
            try:
                x, batch_rows = next(batches)
            except StopIteration as stop:
                skipped = stop.value or 0
                break
            current["batch"] = len(x)
            outputs.append(_forward(model, x.to(model.device)).cpu().numpy())
            rows.extend(batch_rows)
            if progress:
                progress("encode", len(rows), 0, source.name)
    finally:
        for h in handles:
            h.remove()
    if not rows:
        raise InvalidInput(f"test set {source.location} has no decodable images ({skipped} skipped)")
    acts = {n: np.concatenate(v) for n, v in captured.items() if v}
    return EncodedTestSet(np.concatenate(outputs).astype(np.float32), pd.DataFrame(rows), acts, skipped)


def encode_prompts(model: EvaluatedModel, prompts: list[list[str]], *, batch_size: int = 256) -> np.ndarray:
    """``[C, T, D]`` text embeddings (unnormalised) of ``prompts[c][t]``."""
    import torch

    if model.kind != "clip":
        raise InvalidInput("text prompts need a CLIP model")
    flat = [p for per_class in prompts for p in per_class]
    out = []
    with torch.no_grad():
        for s in range(0, len(flat), batch_size):
            tokens = model.tokenizer(flat[s:s + batch_size]).to(model.device)
            out.append(model.model.encode_text(tokens).float().cpu().numpy())
    e = np.concatenate(out)
    return e.reshape(len(prompts), len(prompts[0]), -1)
