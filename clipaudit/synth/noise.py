"""Counter-based randomness: every random number is a hash of (sample seed, stream,
position), so a sample renders the same whatever batch, chunk or worker it is in.

``uniform(seeds, stream, shape)`` gives, for each seed, an independent array of
uniform floats in [0, 1); ``stream`` names what the numbers are for (one constant
per quantity, see ``render.py``). All ops are element-wise on uint64/float32 arrays
(no BLAS), so results are bit-identical for any batch size.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
MASK64 = (1 << 64) - 1
MASK63 = (1 << 63) - 1
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_INV16 = np.float32(1.0 / 65536.0)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise (wrapping uint64 arithmetic)."""
    z = np.asarray(z, dtype=np.uint64).copy()
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def split_base(seed: int, split: str) -> int:
    """A 64-bit base for one split of one collection seed (stable across runs)."""
    h = hashlib.blake2b(f"clipaudit.synth:{int(seed)}:{split}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def sample_seeds(seed: int, split: str, indices: np.ndarray) -> np.ndarray:
    """Per-sample seeds (uint64, < 2**63 so they fit a signed JSON integer)."""
    base = np.uint64(split_base(seed, split))
    idx = np.asarray(indices, dtype=np.uint64) + np.uint64(1)
    z = mix64(base + idx * np.uint64(GOLDEN))
    return z & np.uint64(MASK63)


def uniform(seeds: np.ndarray, stream: int, shape: tuple[int, ...] = ()) -> np.ndarray:
    """Uniform float32 in [0, 1), shape ``(len(seeds), *shape)``; 16-bit resolution
    (one 64-bit hash gives four numbers)."""
    seeds = np.asarray(seeds, dtype=np.uint64)
    n = seeds.shape[0]
    k = int(math.prod(shape))
    nh = (k + 3) // 4
    base = mix64(seeds ^ np.uint64((int(stream) * GOLDEN) & MASK64))
    ctr = np.arange(1, nh + 1, dtype=np.uint64) * np.uint64(GOLDEN)
    z = mix64(base[:, None] + ctr[None, :])  # (n, nh)
    u16 = z.view(np.uint16).reshape(n, nh * 4)[:, :k]
    return (u16.astype(np.float32) * _INV16).reshape((n, *shape))


def between(seeds: np.ndarray, stream: int, lo: float, hi: float, shape: tuple[int, ...] = ()) -> np.ndarray:
    return np.float32(lo) + uniform(seeds, stream, shape) * np.float32(hi - lo)


def choice(seeds: np.ndarray, stream: int, k: int) -> np.ndarray:
    """A uniform integer in [0, k) per seed."""
    return np.minimum((uniform(seeds, stream) * k).astype(np.int64), k - 1)


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


def value_noise(seeds: np.ndarray, stream: int, gx: int, gy: int, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Smooth periodic value noise in [0, 1).

    Each sample has its own ``gy x gx`` lattice of random values; ``X``/``Y`` are
    lattice coordinates, either shared ``(H, W)`` arrays or per-sample
    ``(n, H, W)`` ones (e.g. rotated). Bilinear with smoothstep, wrapping around.
    """
    n = len(seeds)
    lat = uniform(seeds, stream, (gy * gx,)).reshape(n * gy * gx)
    X = np.asarray(X, dtype=np.float32)
    Y = np.asarray(Y, dtype=np.float32)
    fx, fy = np.floor(X), np.floor(Y)
    tx, ty = _smooth(X - fx), _smooth(Y - fy)
    ix0 = np.mod(fx.astype(np.int64), gx)
    iy0 = np.mod(fy.astype(np.int64), gy)
    ix1 = np.where(ix0 + 1 == gx, 0, ix0 + 1)
    iy1 = np.where(iy0 + 1 == gy, 0, iy0 + 1)
    off = (np.arange(n, dtype=np.int64) * (gy * gx)).reshape(n, 1, 1)
    r0, r1 = off + iy0 * gx, off + iy1 * gx
    a = lat[r0 + ix0]
    b = lat[r0 + ix1]
    c = lat[r1 + ix0]
    d = lat[r1 + ix1]
    top = a + (b - a) * tx
    bot = c + (d - c) * tx
    return top + (bot - top) * ty


def _axis_weights(coords: np.ndarray, g: int):
    c = np.asarray(coords, dtype=np.float32)
    f = np.floor(c)
    t = _smooth(c - f)
    i0 = np.mod(f.astype(np.int64), g)
    i1 = np.where(i0 + 1 == g, 0, i0 + 1)
    return i0, i1, t


def grid_noise(seeds: np.ndarray, stream: int, gx: int, gy: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """:func:`value_noise` on an axis-aligned grid: lattice coordinates ``xs``
    (W,) and ``ys`` (H,) shared by all samples; separable, so much cheaper.
    Returns (n, H, W)."""
    n = len(seeds)
    lat = uniform(seeds, stream, (gy, gx))
    x0, x1, tx = _axis_weights(xs, gx)
    y0, y1, ty = _axis_weights(ys, gy)
    a = lat[:, :, x0]
    rows = a + (lat[:, :, x1] - a) * tx  # (n, gy, W)
    top = rows[:, y0, :]
    return top + (rows[:, y1, :] - top) * ty[:, None]
