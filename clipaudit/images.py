"""Decoding untrusted image bytes into RGB, robustly.

Every kind of bad image — zero bytes, truncated or corrupt data, CMYK, 16-bit, palette,
alpha, gigantic dimensions (decompression bombs) — either converts to RGB or raises
:class:`BadImage` with a one-line reason; nothing hangs and nothing crashes the
caller (PIL's ``LOAD_TRUNCATED_IMAGES`` stays off so truncation is an error, unlike
clip-retrieval issue #257 where a truncated image hangs the reader).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile

from clipaudit.errors import InvalidInput

ImageFile.LOAD_TRUNCATED_IMAGES = False
MAX_PIXELS = 64_000_000  # about 8k x 8k: larger is refused before decoding


class BadImage(InvalidInput):
    """One sample's image could not be decoded; callers count and skip it."""


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Bytes -> fully decoded RGB image, or :class:`BadImage`.

    ``draft_size`` lets JPEG decoding downscale on the fly (DCT scaling) when the
    target resolution is much smaller than the image — a large speed-up for CLIP's
    224 px (or our 32 px) inputs.
    """
    if not data:
        raise BadImage("zero-byte image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage(f"image too large: {w}x{h} pixels (limit {max_pixels:,})")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"image too large: {e}") from e
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise BadImage(f"cannot decode image: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}") from e
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha composited on white, 16-bit scaled down, CMYK/P/L converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) or 1.0
        img = Image.fromarray((arr * (255.0 / (65535.0 if hi > 255 else 255.0))).clip(0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / ((hi - lo) or 1.0) * 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")
