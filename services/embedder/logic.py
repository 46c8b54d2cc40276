"""Pure embedding logic: images and texts in, L2-normalised float arrays out.

No transport, storage or metrics here — only numpy, PIL, torch and open_clip —
so the evaluator and the trainer can import these functions to encode images in
batches exactly as the embedder does.

The fast path splits preprocessing in two:

* :func:`image_to_uint8` runs where the image is decoded (a worker process):
  resize the shortest side to the model's resolution (bicubic, like open_clip's
  eval transform), centre-crop, and keep **uint8 HWC** pixels. No torchvision,
  no float conversion: a 32 px image costs a few microseconds beyond its decode.
* :func:`encode_uint8_batch` runs where the model is: the uint8 batch moves to
  the device (4x fewer bytes than float32), is converted and normalised there,
  and enters the model in channels_last layout (an NHWC buffer viewed as NCHW),
  under ``inference_mode`` and, on a GPU, bf16/fp16 autocast.

:func:`embed_images` and :func:`embed_texts` are the one-call versions for small
lists (gRPC requests, evaluator prompts). Tested in
``tests/unit/test_embedder_logic.py`` against open_clip's own preprocessing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from clipaudit.images import BadImage, decode_image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tiff", "tif")
TEXT_EXTENSIONS = ("txt", "text", "caption")
DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP, open_clip's default
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class PixelSpec:
    """What the model expects at its input: square size, normalisation, resampling."""

    size: int
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    interpolation: str = "bicubic"

    @classmethod
    def of(cls, loaded) -> "PixelSpec":
        """The spec of a :class:`clipaudit.models.LoadedModel` (open_clip's ``preprocess_cfg``)."""
        cfg = getattr(loaded.model.visual, "preprocess_cfg", None) or {}
        return cls(
            size=int(loaded.image_size),
            mean=tuple(cfg.get("mean", DEFAULT_MEAN)),
            std=tuple(cfg.get("std", DEFAULT_STD)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
        )


_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def image_to_uint8(img: Image.Image, spec: PixelSpec) -> np.ndarray:
    """An RGB image -> ``(size, size, 3)`` uint8: shortest side resized to ``size``,
    centre crop — open_clip's eval transform, minus the float normalisation."""
    s = spec.size
    w, h = img.size
    if (w, h) != (s, s):
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), _RESAMPLE.get(spec.interpolation, Image.Resampling.BICUBIC))
        if (nw, nh) != (s, s):
            left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
            img = img.crop((left, top, left + s, top + s))
    return np.asarray(img, dtype=np.uint8)


def square_uint8(img: Image.Image, spec: PixelSpec, max_side_factor: float = 2.0) -> np.ndarray:
    """The device-resize variant of :func:`image_to_uint8`: only the centre square is
    cut (no resampling, ~free on the CPU); the GPU resizes it to ``size`` (bicubic,
    antialiased) in :meth:`BatchEncoder.pixels`. Squares larger than
    ``max_side_factor * size`` are still resized here, so no batch ships huge images."""
    w, h = img.size
    m = min(w, h)
    if m > max_side_factor * spec.size or m < 1:
        return image_to_uint8(img, spec)
    if (w, h) != (m, m):
        left, top = (w - m) // 2, (h - m) // 2
        img = img.crop((left, top, left + m, top + m))
    return np.asarray(img, dtype=np.uint8)


def decode_to_uint8(data: bytes, spec: PixelSpec, *, resize_on_device: bool = False) -> np.ndarray:
    """Encoded bytes -> uint8 pixels, raising :class:`BadImage` for anything unusable.
    JPEGs are decoded at reduced DCT scale when they are much larger than needed."""
    img = decode_image(data, draft_size=spec.size)
    return square_uint8(img, spec) if resize_on_device else image_to_uint8(img, spec)


def as_rgb(image: Any) -> Image.Image:
    """A PIL image (any mode) or encoded bytes -> RGB PIL, or :class:`BadImage`."""
    if isinstance(image, Image.Image):
        from clipaudit.images import to_rgb

        return to_rgb(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image))
    raise BadImage(f"expected a PIL image or encoded bytes, got {type(image).__name__}")


# --------------------------------------------------------------------------- encoding


def autocast_dtype(device: str, precision: str = "auto"):
    """The autocast dtype for ``device``: bf16 on GPUs that have it, fp16 otherwise,
    and none (fp32) on CPU, where autocast would only add conversions."""
    import torch

    if precision == "fp32" or not str(device).startswith("cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class BatchEncoder:
    """Encodes uint8 NHWC batches with one loaded model.

    Holds the normalisation constants on the device and the precision choice so the
    per-batch work is: copy, convert, normalise, forward, L2-normalise.
    """

    def __init__(self, loaded, *, precision: str = "auto", channels_last: bool | None = None):
        import torch

        self.loaded = loaded
        self.device = torch.device(loaded.device)
        self.spec = PixelSpec.of(loaded)
        self.mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.amp = autocast_dtype(loaded.device, precision)
        # channels_last pays off for convolutions on GPU; on CPU (and for ViTs' single
        # patch conv) a contiguous NCHW tensor is as fast or faster — measured, see README —
        # except for towers that say otherwise (clipaudit.convnet: 7.2k -> 10.5k img/s)
        if channels_last is None:
            from clipaudit.convnet import cpu_prefers_channels_last

            channels_last = self.device.type == "cuda" or cpu_prefers_channels_last(loaded.model)
        self.channels_last = channels_last
        if self.channels_last:
            loaded.model.to(memory_format=torch.channels_last)

    def pixels(self, batch_uint8):
        """uint8 ``(B, H, W, 3)`` (numpy or tensor, any device) -> normalised float NCHW on the device."""
        import torch

        if isinstance(batch_uint8, np.ndarray):
            batch_uint8 = np.require(batch_uint8, requirements="W")  # PIL's arrays are read-only
        x = torch.as_tensor(batch_uint8)
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NCHW view of NHWC = channels_last
        x = x.float() if self.channels_last else x.contiguous().float()
        if x.shape[-1] != self.spec.size or x.shape[-2] != self.spec.size:   # squares cut by square_uint8
            x = torch.nn.functional.interpolate(x, size=(self.spec.size, self.spec.size), mode="bicubic",
                                                antialias=True, align_corners=False).clamp_(0, 255)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return x.sub_(self.mean).div_(self.std)

    def encode_async(self, batch_uint8):
        """Launch the forward pass; returns the normalised float32 embeddings still on
        the device (on a GPU this returns before the kernels finish)."""
        import torch

        with torch.inference_mode():
            x = self.pixels(batch_uint8)
            if self.amp is not None:
                with torch.autocast(self.device.type, dtype=self.amp):
                    z = self.loaded.model.encode_image(x)
            else:
                z = self.loaded.model.encode_image(x)
            z = z.float()
            return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def encode(self, batch_uint8, dtype=np.float32) -> np.ndarray:
        return self.encode_async(batch_uint8).cpu().numpy().astype(dtype, copy=False)

    def encode_tokens(self, tokens, dtype=np.float32) -> np.ndarray:
        """Token ids ``(B, context)`` -> normalised text embeddings."""
        import torch

        with torch.inference_mode():
            t = torch.as_tensor(tokens).to(self.device, non_blocking=True)
            if self.amp is not None:
                with torch.autocast(self.device.type, dtype=self.amp):
                    z = self.loaded.model.encode_text(t)
            else:
                z = self.loaded.model.encode_text(t)
            z = z.float()
            z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return z.cpu().numpy().astype(dtype, copy=False)


@dataclass
class ImageBatchResult:
    """Embeddings of the images that decoded, and the reason for each that did not."""

    vectors: np.ndarray                      # (n_ok, dim), rows in input order
    ok: np.ndarray                           # (n,) bool: which inputs have a row
    errors: dict[int, str] = field(default_factory=dict)   # input index -> one-line reason


def embed_images(loaded, images: Sequence[Any], *, batch_size: int = 256, encoder: BatchEncoder | None = None,
                 dtype=np.float32) -> ImageBatchResult:
    """Embed PIL images or encoded bytes in batches. Bad images are skipped and
    reported in ``errors`` (never raised): one corrupt file does not fail the list."""
    enc = encoder or BatchEncoder(loaded)
    pixels, ok, errors = [], np.zeros(len(images), dtype=bool), {}
    for i, im in enumerate(images):
        try:
            if isinstance(im, (bytes, bytearray, memoryview)):
                pixels.append(decode_to_uint8(bytes(im), enc.spec))   # JPEG draft decoding applies
            else:
                pixels.append(image_to_uint8(as_rgb(im), enc.spec))
            ok[i] = True
        except BadImage as e:
            errors[i] = str(e)
    out = [enc.encode(np.stack(pixels[s:s + batch_size]), dtype) for s in range(0, len(pixels), batch_size)]
    vectors = np.concatenate(out) if out else np.zeros((0, loaded.dim), dtype)
    return ImageBatchResult(vectors, ok, errors)


def embed_texts(loaded, texts: Sequence[str], *, batch_size: int = 1024, encoder: BatchEncoder | None = None,
                dtype=np.float32) -> np.ndarray:
    """Embed captions or prompts: ``(len(texts), dim)``, L2-normalised rows."""
    enc = encoder or BatchEncoder(loaded)
    texts = list(texts)
    if not texts:
        return np.zeros((0, loaded.dim), dtype)
    out = [enc.encode_tokens(loaded.tokenizer(texts[s:s + batch_size]), dtype) for s in range(0, len(texts), batch_size)]
    return np.concatenate(out)


def choose_batch_size(loaded, *, requested: int | None = None, precision: str = "auto",
                      candidates: Iterable[int] = (2048, 1024, 512, 256, 128, 64, 32),
                      memory_fraction: float = 0.6) -> int:
    """A batch size that fills the device without running out of memory.

    CPU: 256 (throughput is flat beyond a few dozen images; larger batches only add
    latency and memory). GPU: the largest candidate whose forward pass, tried on
    random pixels, peaks below ``memory_fraction`` of the free memory.
    """
    if requested:
        return int(requested)
    if not str(loaded.device).startswith("cuda"):
        return 256
    import torch

    candidates = list(candidates)
    enc = BatchEncoder(loaded, precision=precision)
    free, _total = torch.cuda.mem_get_info()
    s = loaded.image_size
    for b in candidates:
        try:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            enc.encode_async(torch.zeros((b, s, s, 3), dtype=torch.uint8)).cpu()
            peak = torch.cuda.max_memory_allocated() - base
            if peak < memory_fraction * free:
                return b
        except torch.cuda.OutOfMemoryError:
            pass
        finally:
            torch.cuda.empty_cache()
    return min(candidates)


# --------------------------------------------------------------------------- samples -> rows


def image_of(sample: dict) -> tuple[str | None, bytes | None]:
    """The first image member of a WebDataset sample: (extension, bytes), or (None, None)."""
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            v = sample[ext]
            return ext, v if isinstance(v, (bytes, bytearray)) else None
    return None, None


def caption_of(sample: dict) -> str:
    for ext in TEXT_EXTENSIONS:
        v = sample.get(ext)
        if isinstance(v, str):
            return v
    return ""


def metadata_row(sample: dict, shard: str) -> dict:
    """One metadata row: ``key``, ``shard``, every field of the sample's json (labels)
    and ``caption``. JSON values that are not scalars are kept as JSON text so every
    column stays a plain parquet type."""
    import json

    row: dict[str, Any] = {"key": sample["__key__"], "shard": shard}
    meta = sample.get("json")
    if isinstance(meta, dict):
        for k, v in meta.items():
            if k in ("key", "shard"):
                continue  # our own columns win; the json's key is the sample key anyway
            row[k] = v if (v is None or isinstance(v, (str, int, float, bool))) else json.dumps(v, sort_keys=True)
    row["caption"] = caption_of(sample)
    return row


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pil_from_uint8(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB")


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    pil_from_uint8(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
