"""Loading the model under evaluation: a CLIP checkpoint or a supervised classifier.

A checkpoint spec is one of

* ``<arch>[@<checkpoint path | s3 uri>]`` — a CLIP model through
  :func:`clipaudit.models.load_clip` (random init without a checkpoint);
* ``<checkpoint path | s3 uri>`` — the file says what it is: ``{"model": state_dict,
  "arch": name, ...}`` from the trainer is CLIP, ``{"kind": "supervised", "arch":
  "<timm name>", "classes": [...], "model": state_dict}`` a timm classifier;
* ``timm:<name>`` — a randomly initialised timm classifier (tests), with ``classes``
  given by the request.

Only ``torch.load(weights_only=True)`` is used: no pickled code ever runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from clipaudit.errors import FailedPrecondition, InvalidInput


@dataclass
class EvaluatedModel:
    kind: str                   # "clip" | "supervised"
    name: str                   # architecture
    model_id: str
    family: str                 # default family for effective-robustness fits
    model: Any
    preprocess: Callable
    image_tower: Any            # module whose layers are hooked for mechanistic similarity
    tokenizer: Any = None
    classes: list[str] = field(default_factory=list)   # supervised: output order
    device: str = "cpu"


def _looks_like_file(spec: str) -> bool:
    """A checkpoint file (not an architecture name or a JSON model config)."""
    if spec.endswith(".json"):
        return False
    return spec.startswith("s3://") or spec.endswith((".pt", ".pth", ".ckpt", ".bin")) or Path(spec).is_file()


def _read_checkpoint(uri: str) -> tuple[Path, dict]:
    import torch

    from clipaudit.models import fetch_checkpoint

    path = fetch_checkpoint(uri)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise InvalidInput(f"checkpoint {uri} could not be read: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]}") from e
    if not isinstance(obj, dict):
        raise InvalidInput(f"checkpoint {uri} holds no dict")
    return path, obj


def timm_preprocess(model, image_size: int | None = None):
    from torchvision import transforms as T

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    mean = cfg.get("mean", (0.485, 0.456, 0.406))
    std = cfg.get("std", (0.229, 0.224, 0.225))
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      T.ToTensor(), T.Normalize(mean, std)])


def load_supervised(arch: str, classes: list[str], state_dict: dict | None, *, model_id: str,
                    image_size: int | None = None, device: str = "cpu", seed: int = 0) -> EvaluatedModel:
    import timm

    from clipaudit.convnet import register as register_towers

    register_towers()  # our timm towers can serve as supervised classifiers too
    import torch

    if not classes:
        raise InvalidInput(f"supervised classifier {arch!r} needs its class list")
    torch.manual_seed(seed)
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=len(classes))
    except RuntimeError as e:
        raise InvalidInput(f"unknown timm architecture {arch!r}: {e}") from e
    if state_dict is not None:
        sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise FailedPrecondition(f"checkpoint does not fit timm {arch!r}: {str(e).splitlines()[0]}") from e
    model.eval().to(device)
    return EvaluatedModel("supervised", arch, model_id, "supervised", model, timm_preprocess(model, image_size),
                          model, classes=list(classes), device=device)


def load_model(spec: str, *, device: str = "cpu", seed: int = 0, classes: list[str] | None = None,
               image_size: int | None = None) -> EvaluatedModel:
    from clipaudit.models import file_sha256, load_clip

    if spec.startswith("timm:"):
        return load_supervised(spec[5:], classes or [], None, model_id=f"{spec[5:]}@init{seed}",
                               image_size=image_size, device=device, seed=seed)
    if "@" not in spec and _looks_like_file(spec):
        path, obj = _read_checkpoint(spec)
        arch = obj.get("arch")
        if not isinstance(arch, str) or not arch:
            raise InvalidInput(f"checkpoint {spec} does not name its architecture ('arch'); "
                               f"pass '<arch>@{spec}'")
        if "supervised" in (obj.get("kind"), obj.get("mode")):   # the trainer writes mode, older files kind
            sd = obj.get("model")
            if not isinstance(sd, dict):
                raise InvalidInput(f"checkpoint {spec} has no 'model' state dict")
            size = obj.get("image_size")
            return load_supervised(arch, list(obj.get("classes") or []), sd,
                                   model_id=f"{arch}@{file_sha256(path)[:12]}",
                                   image_size=int(size) if size else image_size, device=device, seed=seed)
        spec = f"{arch}@{path}"
    loaded = load_clip(spec, device=device, seed=seed)
    return EvaluatedModel("clip", loaded.name, loaded.model_id, "clip", loaded.model, loaded.preprocess,
                          loaded.model.visual, tokenizer=loaded.tokenizer, device=device)
