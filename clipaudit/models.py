"""Loading CLIP models: any open_clip architecture by name, any custom architecture
from a JSON config, weights from a local file or an ``s3://`` object — never a hub.

A model spec is ``<name or config.json>[@<checkpoint>]``. Without a checkpoint the
model is randomly initialised from ``seed`` (the tiny default used by tests and the
demo). Every loaded model has a ``model_id`` (architecture + checkpoint hash, or
+ init seed) recorded with every embedding set, index and classifier made from it,
so embeddings of two different models are never mixed.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipaudit.errors import FailedPrecondition, InvalidInput, NotFound

CONFIG_DIR = Path(__file__).parent / "model_configs"
DEFAULT_MODEL = "clipaudit-tiny"
_registered = False


def register_configs() -> None:
    """Add our JSON configs (model_configs/*.json) to open_clip's registry, once, and drop
    open_clip's "No pretrained weights loaded" warning (random init is what we ask for
    when no checkpoint is given; the model id says ``@init<seed>``). Our timm image
    towers (:mod:`clipaudit.convnet`) are registered too: the tiny config names one."""
    global _registered
    if not _registered:
        import logging

        import open_clip

        from clipaudit import convnet

        convnet.register()
        open_clip.add_model_config(CONFIG_DIR)
        logging.getLogger().addFilter(_QuietRandomInit())
        _registered = True


@dataclass
class LoadedModel:
    model: Any              # open_clip.CLIP (eval mode)
    preprocess: Any         # torchvision transform for eval
    tokenizer: Any
    name: str
    model_id: str
    checkpoint: str | None
    image_size: int
    dim: int
    device: str


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``ViT-B-32@/ckpt.pt`` -> (``ViT-B-32``, ``/ckpt.pt``); an ``@`` inside s3 URIs is fine."""
    if "@" in spec:
        name, ckpt = spec.split("@", 1)
        return name, ckpt or None
    return spec, None


def resolve_architecture(name: str) -> str:
    """A registered name, or a path to a JSON config which is registered under its stem."""
    import open_clip

    register_configs()
    if name.endswith(".json"):
        p = Path(name)
        if not p.is_file():
            raise NotFound(f"model config {p} does not exist")
        import json

        try:
            json.loads(p.read_text())
        except ValueError as e:
            raise InvalidInput(f"model config {p} does not parse: {e}") from e
        open_clip.add_model_config(p)
        return p.stem
    if name not in open_clip.list_models():
        raise NotFound(f"unknown model architecture {name!r} (not in open_clip's registry; pass a JSON config path)")
    return name


def fetch_checkpoint(uri: str) -> Path:
    """A local path for a checkpoint given as a path or an ``s3://`` URI."""
    from clipaudit.store import is_s3_uri, open_store

    if is_s3_uri(uri):
        parent, _, base = uri.rpartition("/")
        store = open_store(parent)
        dst = Path(tempfile.mkdtemp(prefix="clipaudit-ckpt-")) / base
        return store.get_file(base, dst)
    p = Path(uri)
    if not p.is_file():
        raise NotFound(f"checkpoint {p} does not exist")
    return p


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_from_checkpoint(path: Path) -> dict:
    """Weights only (``weights_only=True``: no pickle code runs). Accepts a bare state
    dict, open_clip_train's ``{"state_dict": ...}`` and our trainer's ``{"model": ...}``."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise InvalidInput(f"checkpoint {path} could not be read: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    if isinstance(obj, dict):
        for k in ("state_dict", "model"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict):
        raise InvalidInput(f"checkpoint {path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


class _QuietRandomInit:
    """A logging filter for open_clip's warning about an intended random init."""

    def filter(self, record) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def load_clip(spec: str = DEFAULT_MODEL, *, device: str = "cpu", seed: int = 0, precision: str = "fp32") -> LoadedModel:
    import open_clip
    import torch

    name, ckpt = parse_spec(spec)
    arch = resolve_architecture(name)
    torch.manual_seed(seed)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, device=device,
                                                                      precision=precision)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise InvalidInput(f"model {arch!r} could not be built from its config: {e}") from e
    if ckpt:
        path = fetch_checkpoint(ckpt)
        sd = state_dict_from_checkpoint(path)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise FailedPrecondition(f"checkpoint {ckpt} does not fit architecture {arch!r}: {first}") from e
        model_id = f"{arch}@{file_sha256(path)[:12]}"
    else:
        model_id = f"{arch}@init{seed}"
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None else None
    if dim is None:
        with torch.no_grad():
            dim = int(model.encode_image(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1])
    return LoadedModel(model, preprocess, tokenizer, arch, model_id, ckpt, image_size, dim, device)
