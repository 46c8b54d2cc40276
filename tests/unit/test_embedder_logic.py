"""Pure embedding logic on the tiny model: the fast preprocessing against open_clip's
own transform (the oracle), shapes, normalisation, determinism, bad images.

Also holds the sample/shard builders the other embedder tests import."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clipaudit.shards import ShardWriter

# --------------------------------------------------------------------------- builders (shared)


def image_bytes(seed: int, size: tuple[int, int] = (32, 32), fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    # smooth gradients + noise: JPEG-like content, different per seed
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (seed % 5 + 1) + yy * 3) % 256, (yy * (seed % 3 + 2)) % 256, (xx + yy + 40 * seed) % 256], -1)
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    buf = io.BytesIO()
    if mode == "CMYK":
        img.convert("CMYK").save(buf, format="JPEG", quality=90)
    elif mode == "I;16":
        Image.fromarray((arr[..., 0].astype(np.uint16) * 257), "I;16").save(buf, format="PNG")
    elif mode == "P":
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, format="PNG")
    elif mode == "RGBA":
        rgba = np.concatenate([arr, np.full((h, w, 1), 128, np.uint8)], -1)
        Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    else:
        img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def gigantic_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header announcing 900 M pixels (the data is a tiny image): the
    decoder must refuse it from the header, without allocating anything."""
    small = image_bytes(1, fmt="PNG")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    patched = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return small[:8] + patched + small[8 + 25:]


def sample_json(i: int) -> dict:
    return {"key": f"{i:06d}", "class": f"class{i % 3}", "class_id": i % 3,
            "domain": "natural" if i % 2 else "sketch", "domain_group": "natural" if i % 2 else "rendition",
            "background": "grass", "group": "common", "split": "train", "near_duplicate_of": None, "seed": i}


def write_shard(path, samples: list[tuple[str, dict]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(path) as w:
        for key, sample in samples:
            w.write(key, sample)


def good_samples(start: int, n: int, size=(32, 32)) -> list[tuple[str, dict]]:
    return [(f"{i:06d}", {"jpg": image_bytes(i, size), "txt": f"a photo of class{i % 3}", "json": sample_json(i)})
            for i in range(start, start + n)]


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def tiny():
    from clipaudit.models import load_clip

    return load_clip("clipaudit-tiny", seed=0)


def test_fast_preprocess_matches_open_clip_transform(tiny):
    """uint8 resize/crop + on-device normalisation == open_clip's eval transform."""
    import torch

    from services.embedder.logic import BatchEncoder, image_to_uint8

    enc = BatchEncoder(tiny)
    for size in [(32, 32), (80, 48), (20, 45)]:
        img = Image.open(io.BytesIO(image_bytes(7, size, fmt="PNG"))).convert("RGB")
        ours = enc.pixels(image_to_uint8(img, enc.spec)[None])
        theirs = tiny.preprocess(img)[None]
        assert ours.shape == theirs.shape == (1, 3, 32, 32)
        # PIL vs torchvision bicubic differ by at most a rounding step per pixel
        assert torch.allclose(ours, theirs, atol=0.05), float((ours - theirs).abs().max())
        if size == (32, 32):
            assert torch.allclose(ours, theirs, atol=1e-5)


def test_embed_images_matches_open_clip_encode_image(tiny):
    import torch

    from services.embedder.logic import embed_images

    imgs = [image_bytes(i) for i in range(6)]
    r = embed_images(tiny, imgs, batch_size=4)
    assert r.vectors.shape == (6, 64) and r.ok.all() and not r.errors
    np.testing.assert_allclose(np.linalg.norm(r.vectors, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        x = torch.stack([tiny.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in imgs])
        ref = tiny.model.encode_image(x)
        ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(r.vectors, ref, atol=1e-4)
    # different images -> different vectors (a random-init model maps them close, not equal)
    assert np.abs(r.vectors[0] - r.vectors[1]).max() > 1e-4


def test_embed_images_is_deterministic_on_cpu(tiny):
    from services.embedder.logic import embed_images

    imgs = [image_bytes(i) for i in range(5)]
    a = embed_images(tiny, imgs, batch_size=5).vectors
    b = embed_images(tiny, imgs[::-1], batch_size=2).vectors[::-1]
    np.testing.assert_allclose(a, b, atol=1e-6)   # batch composition does not change a row
    assert np.array_equal(a, embed_images(tiny, imgs, batch_size=5).vectors)


def test_bad_images_are_reported_not_raised(tiny):
    from services.embedder.logic import embed_images

    good = image_bytes(3)
    inputs = [good, b"", good[: len(good) // 2], b"not an image at all", gigantic_png(),
              image_bytes(4, mode="CMYK"), image_bytes(5, mode="I;16"), image_bytes(6, mode="P"),
              image_bytes(7, mode="RGBA"), Image.new("LA", (40, 40))]
    r = embed_images(tiny, inputs)
    assert r.ok.tolist() == [True, False, False, False, False, True, True, True, True, True]
    assert "zero-byte" in r.errors[1]
    assert r.errors[2] and r.errors[3]
    assert "too large" in r.errors[4]
    assert r.vectors.shape == (6, 64)
    np.testing.assert_allclose(np.linalg.norm(r.vectors, axis=1), 1.0, atol=1e-5)


def test_embed_texts_shape_normalisation_and_identity(tiny):
    from services.embedder.logic import embed_texts

    z = embed_texts(tiny, ["a photo of a star", "a sketch of a heart", "a photo of a star"])
    assert z.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(z[0], z[2], atol=1e-6)
    assert np.abs(z[0] - z[1]).max() > 1e-4
    assert embed_texts(tiny, []).shape == (0, 64)


def test_metadata_row_carries_every_json_field_and_caption():
    from services.embedder.logic import metadata_row

    row = metadata_row({"__key__": "000001", "json": {**sample_json(1), "extra": {"a": 1}}, "txt": "a cap"},
                       "train-000000.tar")
    assert row["key"] == "000001" and row["shard"] == "train-000000.tar" and row["caption"] == "a cap"
    for k in ("class", "class_id", "domain", "domain_group", "background", "group", "split", "near_duplicate_of"):
        assert k in row
    assert row["extra"] == '{"a": 1}'
