"""Vectorised drawing of a batch of synthetic images in five domains.

``render(classes, domains, backgrounds, seeds, perturb, size)`` returns ``uint8``
images ``(n, size, size, 3)``. Everything random comes from
:mod:`clipaudit.synth.noise` keyed by each row's seed, so an image depends only on
its own row (and the batch it is drawn in does not matter).

Domains:
* ``natural``  the "photo": a textured background with a lighting gradient, a
  shaded object in a random colour with a soft cast shadow, sensor noise.
* ``sketch``   graphite outlines (doubled, wobbly) and hatching on off-white paper.
* ``clipart``  flat saturated fill, cel highlight, thick dark outline, flat shadow,
  plain background; 40% line art (the outline alone).
* ``painting`` the photo scene repainted: blurred colour patches, brush-stroke
  texture, wobbly soft edges, boosted saturation, canvas weave, then the painter's
  palette: hues turned, five tones per channel.
* ``quickdraw`` one-pixel black strokes, jittered and with gaps, on pure white; each
  default class as a symbol of its own, not its outline (``shapes.DOODLES``).

A ``perturb`` seed (non-zero) makes a planted near-duplicate: the same scene with a
sub-pixel shift, a slight rotation/colour change and fresh pixel noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clipaudit.synth.noise import between, grid_noise, uniform, value_noise
from clipaudit.synth.shapes import doodle_distance, shape_sdf

F = np.float32

DOMAINS = ("natural", "sketch", "clipart", "painting", "quickdraw")
RENDITION_STYLES = DOMAINS[1:]
NATURAL_BACKGROUNDS = ("grass", "water", "sand", "snow", "indoor", "rock", "forest", "sky", "autumn", "night")
NO_BACKGROUND = "none"

# random streams: one constant per quantity (never reuse one for two purposes)
(G_R, G_ASP, G_ROT, G_CX, G_CY, P_CX, P_CY, P_ROT, P_R, P_COL, P_NOISE, P_GAIN,
 C_H, C_S, C_V, L_DIR, L_GAIN, L_SPEC, SH_LEN, N_AMP, N_PIX, O_TEX,
 B_COL, B_TEX1, B_TEX2, B_TEX3, B_TEX4, B_PAR1, B_PAR2, B_PAR3,
 SK_INK, SK_W1, SK_W2, SK_HA, SK_HP, SK_PAPER, SK_GRAIN, SK_HS,
 CA_BG, CA_BGH, CA_H, CA_S, CA_OW, CA_SH, CA_HI,
 PA_BLOB, PA_BRUSH, PA_ANG, PA_WOB, PA_SAT, PA_OBJ, PA_EDGE,
 QD_WOB, QD_GAP, QD_W, QD_WOB2,
 CL_N, CL_X, CL_Y, CL_R, CL_H, CL_S, CL_V, CAMO, QD_WOBY, QD_WOBY2, PA_HUE, CA_LINE) = range(1, 69)

BG_COLOURS = {
    "grass": (0.24, 0.50, 0.16),
    "water": (0.12, 0.36, 0.66),
    "sand": (0.86, 0.74, 0.50),
    "snow": (0.92, 0.94, 0.97),
    "indoor": (0.80, 0.74, 0.64),
    "rock": (0.50, 0.48, 0.45),
    "forest": (0.10, 0.28, 0.12),
    "sky": (0.40, 0.62, 0.92),
    "autumn": (0.80, 0.38, 0.10),
    "night": (0.05, 0.06, 0.16),
}


@dataclass
class Geometry:
    """Per-row pose and the pixel-unit signed distance to the object outline."""

    d: np.ndarray  # (n, S, S) signed distance in pixels (negative inside)
    u: np.ndarray  # (n, S, S) local coords (shape frame)
    v: np.ndarray
    cx: np.ndarray  # (n,) centre in [-1, 1] image coords
    cy: np.ndarray
    r: np.ndarray  # (n,) half-size of the shape in image coords
    X: np.ndarray  # (1, 1, S) image coords
    Y: np.ndarray  # (1, S, 1)
    size: int


def hsv2rgb(h, s, v):
    """Vectorised HSV -> RGB; h, s, v arrays of one shape -> (..., 3)."""
    h = np.mod(h, 1.0).astype(np.float32)
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    table = np.stack([np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
                      np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1)], 0)
    return np.take_along_axis(table, i[None, ..., None], 0)[0].astype(np.float32)


def blur3(img: np.ndarray, passes: int = 1) -> np.ndarray:
    """Separable 3x3 box blur over the last two axes (edge padding)."""
    for _ in range(passes):
        p = np.concatenate([img[..., :1, :], img, img[..., -1:, :]], -2)
        img = (p[..., :-2, :] + p[..., 1:-1, :] + p[..., 2:, :]) * F(1 / 3)
        p = np.concatenate([img[..., :1], img, img[..., -1:]], -1)
        img = (p[..., :-2] + p[..., 1:-1] + p[..., 2:]) * F(1 / 3)
    return img


def coverage(d: np.ndarray, soft: float = 1.0) -> np.ndarray:
    """Anti-aliased inside-coverage from a pixel-unit SDF."""
    return np.clip(F(0.5) - d / F(soft), 0, 1)


def stroke(d: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """Anti-aliased line of ``width`` pixels along the outline."""
    return np.clip(np.asarray(width, dtype=np.float32) * F(0.5) + F(0.5) - np.abs(d), 0, 1)


def _col(a: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1, 1) for broadcasting over pixels."""
    return a.reshape(-1, 1, 1)


def _rgb(c: np.ndarray) -> np.ndarray:
    """(n, 3) colours -> (n, 3, 1, 1) for broadcasting over channel-first images."""
    return c.reshape(-1, 3, 1, 1)


def _chw(hwc: np.ndarray) -> np.ndarray:
    """(..., 3) per-pixel colours -> channel-first (n, 3, S, S)."""
    return np.ascontiguousarray(np.moveaxis(hwc, -1, 1))


def _shift(img: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Per-row integer translation (edge clamped) of (n, S, S[, C]) arrays."""
    n, S = img.shape[0], img.shape[1]
    ar = np.arange(S)
    iy = np.clip(ar[None, :] - dy[:, None], 0, S - 1)
    ix = np.clip(ar[None, :] - dx[:, None], 0, S - 1)
    return img[np.arange(n)[:, None, None], iy[:, :, None], ix[:, None, :]]


# ------------------------------------------------------------------ geometry


def geometry(class_names: list[str], cls: np.ndarray, seeds: np.ndarray, perturb: np.ndarray, size: int,
             doodle: np.ndarray | None = None) -> Geometry:
    """Pose every row and measure the pixel distance to its shape: the signed outline
    distance, or for ``doodle`` rows the unsigned distance to the class's doodle strokes."""
    n = len(seeds)
    S = size
    pix = ((np.arange(S, dtype=np.float32) + F(0.5)) / F(S) * F(2) - F(1))
    X = pix.reshape(1, 1, S)
    Y = pix.reshape(1, S, 1)
    r = between(seeds, G_R, 0.48, 0.76)
    asp = between(seeds, G_ASP, 0.86, 1.16)
    rot = between(seeds, G_ROT, -0.42, 0.42)
    room = (F(1) - r) * F(0.75)
    cx = (uniform(seeds, G_CX) * 2 - 1) * room
    cy = (uniform(seeds, G_CY) * 2 - 1) * room
    dup = perturb != 0
    if dup.any():
        ps = perturb[dup]
        cx[dup] += between(ps, P_CX, -0.012, 0.012)
        cy[dup] += between(ps, P_CY, -0.012, 0.012)
        rot[dup] += between(ps, P_ROT, -0.015, 0.015)
        r[dup] *= between(ps, P_R, 0.99, 1.01)
    c, s = np.cos(rot).astype(np.float32), np.sin(rot).astype(np.float32)
    dx = X - _col(cx)
    dy = Y - _col(cy)
    sx = _col(r * asp)
    sy = _col(r / asp)
    u = (_col(c) * dx + _col(s) * dy) / sx
    v = (-_col(s) * dx + _col(c) * dy) / sy
    d = np.empty((n, S, S), dtype=np.float32)
    doodle = np.zeros(n, dtype=bool) if doodle is None else np.asarray(doodle, dtype=bool)
    if doodle.any():
        ud, vd = _hand_warp(seeds[doodle], u[doodle], v[doodle], sx[doodle], sy[doodle], S)
    for k in np.unique(cls):
        m = (cls == k) & ~doodle
        if m.any():
            d[m] = shape_sdf(class_names[k], u[m], v[m])
        m = (cls == k)[doodle]
        if m.any():
            d[np.flatnonzero(doodle)[m]] = doodle_distance(class_names[k], ud[m], vd[m])
    d *= _col(r * F(S / 2))
    return Geometry(d=d, u=u, v=v, cx=cx, cy=cy, r=r, X=X, Y=Y, size=S)


def _hand_warp(seeds, u, v, sx, sy, S: int):
    """A doodler's unsteady hand: shape-frame coordinates moved by a smooth random field
    of up to about 1.8 pixels per axis (a coarse and a fine octave), so strokes wander."""
    ar = _ar(S)
    k = S / 32.0

    def field(coarse, fine):   # pixels, then image units (2/S per pixel)
        a = grid_noise(seeds, coarse, 4, 4, ar * F(4 / S), ar * F(4 / S)) - F(0.5)
        b = grid_noise(seeds, fine, 7, 7, ar * F(7 / S), ar * F(7 / S)) - F(0.5)
        return (a * F(2.6) + b * F(1.0)) * F(k * 2 / S)

    return u + field(QD_WOB, QD_WOB2) / sx, v + field(QD_WOBY, QD_WOBY2) / sy


# ------------------------------------------------------------------ backgrounds


def _grid(S: int):
    ar = np.arange(S, dtype=np.float32)
    return ar.reshape(1, S), ar.reshape(S, 1)  # xs (1,S), ys (S,1) pixel coords


def _ar(S: int) -> np.ndarray:
    return np.arange(S, dtype=np.float32)


def background(names: list[str], seeds: np.ndarray, S: int) -> np.ndarray:
    """Natural background textures, channel-first (n, 3, S, S) float32."""
    n = len(seeds)
    out = np.empty((n, 3, S, S), dtype=np.float32)
    xs, ys = _grid(S)
    xs_b, ys_b = np.broadcast_to(xs, (S, S)), np.broadcast_to(ys, (S, S))
    AR = _ar(S)
    k = S / 32.0
    names_arr = np.asarray(names)
    for name in NATURAL_BACKGROUNDS:
        m = names_arr == name
        if not m.any():
            continue
        sd = seeds[m]
        base = np.asarray(BG_COLOURS[name], np.float32)[None, :] + between(sd, B_COL, -0.07, 0.07, (3,))
        base = _rgb(base)
        if name == "grass":
            blades = grid_noise(sd, B_TEX1, max(4, S // 2), max(2, S // 12), AR / F(2 * k), AR / F(12 * k))
            patch = grid_noise(sd, B_TEX2, 4, 4, AR * F(4 / S), AR * F(4 / S))
            tint = np.stack([patch * F(0.18), patch * F(0.08), patch * F(0)], 1)
            img = base * (F(0.55) + F(0.75) * blades[:, None]) + tint - F(0.06)
        elif name == "water":
            warp = grid_noise(sd, B_TEX1, 4, 4, AR * F(4 / S), AR * F(4 / S))
            freq = _col(between(sd, B_PAR1, 5.0, 8.0)) * F(2 * math.pi / S)
            waves = np.sin(ys_b * freq + warp * F(5.0) + xs_b * F(0.15 / k)) * F(0.5) + F(0.5)
            spark = (waves > 0.93).astype(np.float32) * F(0.25)
            depth = grid_noise(sd, B_TEX2, 3, 3, AR * F(3 / S), AR * F(3 / S))
            img = base * (F(0.7) + F(0.35) * waves[:, None] + F(0.2) * depth[:, None]) + spark[:, None]
        elif name == "sand":
            grain = uniform(sd, B_TEX1, (S, S)) - F(0.5)
            ang = _col(between(sd, B_PAR1, -0.6, 0.6))
            ripple = np.sin((ys_b + xs_b * ang + grid_noise(sd, B_TEX2, 4, 4, AR * F(4 / S), AR * F(4 / S)) * F(4 * k))
                            * F(2 * math.pi / (4.5 * k)))
            img = base * (F(1) + F(0.07) * ripple[:, None] + F(0.12) * grain[:, None])
        elif name == "snow":
            shade = grid_noise(sd, B_TEX1, 3, 3, AR * F(3 / S), AR * F(3 / S))
            spark = (uniform(sd, B_TEX2, (S, S)) > 0.97).astype(np.float32) * F(0.08)
            blue = np.asarray([0.16, 0.11, 0.03], np.float32).reshape(1, 3, 1, 1)
            img = base - shade[:, None] * blue + spark[:, None] + (uniform(sd, B_TEX3, (S, S))[:, None] - F(0.5)) * F(0.03)
        elif name == "indoor":
            wall_h = between(sd, B_PAR1, 0.0, 1.0)
            wall = hsv2rgb(wall_h, between(sd, B_PAR2, 0.05, 0.25), between(sd, B_PAR3, 0.78, 0.95))
            wood = np.asarray([0.52, 0.34, 0.19], np.float32)[None, :] + between(sd, B_COL, -0.08, 0.08, (3,))
            horizon = _col(between(sd, B_TEX4, 0.45, 0.7) * S)
            floor = (ys_b[None] >= horizon)
            plank = F(max(3.0, 4 * k))
            lines = (np.mod(ys_b[None] - horizon, plank) < F(1.0)) & floor
            grain = grid_noise(sd, B_TEX1, 3, max(4, S // 2), AR * F(3 / S), AR / F(2 * k))
            fl = _rgb(wood) * (F(0.8) + F(0.4) * grain[:, None]) * (1 - F(0.35) * lines[:, None])
            grad = F(1.0) - F(0.15) * (ys_b / F(S))
            wl = _rgb(wall) * grad[None, None]
            base_board = (np.abs(ys_b[None] - horizon) < F(0.8 * k))[:, None]
            img = np.where(floor[:, None], fl, wl) * np.where(base_board, F(0.7), F(1.0))
        elif name == "rock":
            o1 = grid_noise(sd, B_TEX1, 4, 4, AR * F(4 / S), AR * F(4 / S))
            o2 = grid_noise(sd, B_TEX2, 8, 8, AR * F(8 / S), AR * F(8 / S))
            cr = grid_noise(sd, B_TEX3, 5, 5, AR * F(5 / S), AR * F(5 / S))
            crack = (np.abs(cr - F(0.5)) < F(0.035)).astype(np.float32)
            img = base * (F(0.6) + F(0.5) * o1[:, None] + F(0.35) * o2[:, None]) * (1 - F(0.45) * crack[:, None])
        elif name == "forest":
            # dark foliage with vertical brown trunks
            trunks = grid_noise(sd, B_TEX1, max(4, S // 4), 2, AR / F(4 * k), AR * F(2 / S))
            trunk = np.clip((trunks - F(0.68)) * F(8), 0, 1)
            leaves = grid_noise(sd, B_TEX2, 8, 8, AR * F(8 / S), AR * F(8 / S))
            bark = np.asarray([0.30, 0.20, 0.12], np.float32).reshape(1, 3, 1, 1)
            fol = base * (F(0.6) + F(0.9) * leaves[:, None])
            img = fol + (bark - fol) * trunk[:, None]
        elif name == "sky":
            # blue gradient, lighter towards the horizon, soft white clouds
            grad = (F(0.75) + F(0.35) * (ys_b / F(S)))[None, None]
            cl = grid_noise(sd, B_TEX1, 4, 3, AR * F(4 / S), AR * F(3 / S))
            cloud = np.clip((cl - F(0.55)) * F(4), 0, 1)[:, None]
            sky = base * grad
            img = sky + (F(0.97) - sky) * cloud
        elif name == "autumn":
            # fallen leaves: orange / red / yellow blotches with dark gaps
            hue = grid_noise(sd, B_TEX1, 8, 8, AR * F(8 / S), AR * F(8 / S))
            gaps = grid_noise(sd, B_TEX2, 10, 10, AR * F(10 / S), AR * F(10 / S))
            leaf = _chw(hsv2rgb(F(0.01) + F(0.11) * hue, np.full(hue.shape, 0.85, np.float32),
                                (F(0.6) + F(0.35) * gaps).astype(np.float32)))
            dark = (gaps < F(0.25)).astype(np.float32)[:, None]
            img = leaf * (1 - F(0.6) * dark) * (base / np.asarray(BG_COLOURS["autumn"], np.float32).reshape(1, 3, 1, 1))
        else:  # night
            stars = (uniform(sd, B_TEX1, (S, S)) > 0.965).astype(np.float32) * between(sd, B_PAR1, 0.4, 0.8).reshape(-1, 1, 1)
            glow = grid_noise(sd, B_TEX2, 3, 3, AR * F(3 / S), AR * F(3 / S))
            img = base * (F(0.7) + F(0.8) * glow[:, None]) + stars[:, None]
        out[m] = img
    return out


# ------------------------------------------------------------------ styles


def _object_colour(seeds, S_lo=0.35, S_hi=0.95, V_lo=0.35, V_hi=0.95):
    return hsv2rgb(uniform(seeds, C_H), between(seeds, C_S, S_lo, S_hi), between(seeds, C_V, V_lo, V_hi))


def _photo(g: Geometry, seeds: np.ndarray, bgs: list[str], perturb: np.ndarray,
           sat: tuple[float, float] = (0.35, 0.95), val: tuple[float, float] = (0.35, 0.95)) -> np.ndarray:
    S = g.size
    k = S / 32.0
    img = background(bgs, seeds, S)
    img = _clutter(img, g, seeds)
    phi = between(seeds, L_DIR, 0, 2 * math.pi)
    lx, ly = np.cos(phi).astype(np.float32), np.sin(phi).astype(np.float32)
    cov = coverage(g.d)
    # soft cast shadow, away from the light
    slen = between(seeds, SH_LEN, 1.0, 2.6) * F(k)
    sdx = np.round(-lx * slen).astype(np.int64)
    sdy = np.round(-ly * slen).astype(np.int64)
    shadow = F(1) - blur3(_shift(cov, sdx, sdy)) * F(0.5)
    img *= shadow[:, None]
    # shaded object: diffuse term towards the light, rim darkening, specular spot
    col = _object_colour(seeds, *sat, *val)
    # camouflage: pull the object's colour part-way towards the background's mean
    camo = between(seeds, CAMO, 0.0, 0.3).reshape(-1, 1)
    col = col + (img.mean(axis=(2, 3)) - col) * camo
    if (perturb != 0).any():
        dup = perturb != 0
        col[dup] = np.clip(col[dup] + between(perturb[dup], P_COL, -0.03, 0.03, (3,)), 0, 1)
    rx = (g.X - _col(g.cx)) / _col(g.r)
    ry = (g.Y - _col(g.cy)) / _col(g.r)
    diffuse = F(0.78) + F(0.3) * (rx * _col(lx) + ry * _col(ly))
    rim = F(0.72) + F(0.28) * np.clip(-g.d / F(2.5 * k), 0, 1)
    hx, hy = rx - _col(lx) * F(0.45), ry - _col(ly) * F(0.45)
    spec = np.exp(-(hx * hx + hy * hy) * F(9.0)) * _col(between(seeds, L_SPEC, 0.1, 0.45))
    AR = _ar(S)
    tex = grid_noise(seeds, O_TEX, 8, 8, AR * F(8 / S), AR * F(8 / S))
    shade = diffuse * rim * (F(0.9) + F(0.2) * tex)
    obj = _rgb(col) * shade[:, None]
    obj += spec[:, None]
    obj -= img
    obj *= cov[:, None]
    img += obj
    # global lighting gradient
    gain = _col(between(seeds, L_GAIN, 0.08, 0.3))
    light = F(1) + gain * (g.X * _col(lx) + g.Y * _col(ly))
    img *= light[:, None]
    return img


def _clutter(img: np.ndarray, g: Geometry, seeds: np.ndarray, max_items: int = 2) -> np.ndarray:
    """Up to ``max_items`` small pebbles/blobs of random colour scattered on the
    background (the object is drawn over them), so the object must be found."""
    S = g.size
    n_items = np.minimum((uniform(seeds, CL_N) * (max_items + 1)).astype(np.int64), max_items)
    sd = seeds
    for j in range(max_items):
        on = (n_items > j).astype(np.float32).reshape(-1, 1, 1)
        px = _col(between(sd, CL_X + 100 * j, -0.9, 0.9))
        py = _col(between(sd, CL_Y + 100 * j, -0.9, 0.9))
        rad = _col(between(sd, CL_R + 100 * j, 0.08, 0.2))
        d = (np.sqrt((g.X - px) ** 2 + ((g.Y - py) * F(1.4)) ** 2) - rad) * F(S / 2)
        cov = (coverage(d) * on)[:, None]
        col = _rgb(hsv2rgb(uniform(sd, CL_H + 100 * j), between(sd, CL_S + 100 * j, 0.1, 0.7),
                           between(sd, CL_V + 100 * j, 0.2, 0.9)))
        img += (col - img) * cov
    return img


def _sensor_noise(img: np.ndarray, seeds: np.ndarray, amp_lo=0.01, amp_hi=0.045) -> np.ndarray:
    S = img.shape[-1]
    amp = between(seeds, N_AMP, amp_lo, amp_hi).reshape(-1, 1, 1, 1)
    noise = uniform(seeds, N_PIX, (3, S, S))
    noise -= F(0.5)
    noise *= amp * F(3.4)
    img += noise
    return img


def _natural(g, seeds, bgs, perturb):
    return _sensor_noise(_photo(g, seeds, bgs, perturb), seeds)


def _sketch(g, seeds, bgs, perturb):
    S = g.size
    k = S / 32.0
    xs, ys = _grid(S)
    AR = _ar(S)
    paper = hsv2rgb(between(seeds, SK_PAPER, 0.08, 0.14), between(seeds, SK_HS, 0.0, 0.08), between(seeds, B_PAR3, 0.9, 1.0))
    grain = (uniform(seeds, SK_GRAIN, (S, S)) - F(0.5)) * F(0.05)
    img = _rgb(paper) + grain[:, None]
    w1 = grid_noise(seeds, SK_W1, 4, 4, AR * F(4 / S), AR * F(4 / S))
    w2 = grid_noise(seeds, SK_W2, 4, 4, AR * F(4 / S), AR * F(4 / S))
    line1 = stroke(g.d + (w1 - F(0.5)) * F(1.4 * k), 0.9 * k)
    line2 = stroke(g.d + (w2 - F(0.5)) * F(2.0 * k) + F(0.9 * k), 0.6 * k) * F(0.6)
    # hatching inside the shape
    ang = between(seeds, SK_HA, 0.5, 1.1)
    period = between(seeds, SK_HP, 2.6, 3.6) * F(k)
    t = (xs[None] * _col(np.cos(ang).astype(np.float32)) + ys[None] * _col(np.sin(ang).astype(np.float32))) / _col(period)
    hatch = (np.mod(t, F(1)) < F(0.38)).astype(np.float32) * F(0.45) * coverage(g.d + F(1.2 * k))
    ink = np.maximum(np.maximum(line1, line2), hatch)
    graphite = _col(between(seeds, SK_INK, 0.12, 0.32))
    img = img * (1 - ink[:, None]) + (graphite * ink)[:, None]
    return img


CLIPART_LINE_ART = 0.4  # share of clipart drawn as line art


def _clipart(g, seeds, bgs, perturb):
    S = g.size
    k = S / 32.0
    white = uniform(seeds, CA_BG) < 0.4
    bgc = hsv2rgb(uniform(seeds, CA_BGH), np.where(white, F(0), F(0.22)), np.where(white, F(1), F(0.97)).astype(np.float32))
    img = np.broadcast_to(_rgb(bgc), (len(seeds), 3, S, S)).astype(np.float32)
    fill = hsv2rgb(uniform(seeds, CA_H), between(seeds, CA_S, 0.8, 1.0), between(seeds, C_V, 0.85, 1.0))
    cov = coverage(g.d)
    # line art: the outline alone, no fill or shadow (DomainNet's clipart has outline icons too); with
    # every doodle a symbol, it is the one domain besides sketch that draws a class's outline
    line_art = (uniform(seeds, CA_LINE) < F(CLIPART_LINE_ART)).astype(np.float32).reshape(-1, 1, 1)
    # flat drop shadow
    sh = _shift(cov, np.full(len(seeds), int(round(1.5 * k))), np.full(len(seeds), int(round(1.5 * k))))
    img = img * (1 - F(0.3) * (sh * (1 - line_art))[:, None])
    # cel highlight: the upper-left part of the shape is lighter
    hi = ((g.u + g.v) < F(-0.35)).astype(np.float32) * _col(between(seeds, CA_HI, 0.15, 0.3))
    obj = _rgb(fill) + (1 - _rgb(fill)) * hi[:, None]
    obj = obj * (1 - line_art[:, None]) + img * line_art[:, None]
    img = img + (obj - img) * cov[:, None]
    ow = between(seeds, CA_OW, 1.4, 2.2) * F(k)
    line = stroke(g.d, _col(ow))
    outline = _col(between(seeds, CA_SH, 0.0, 0.12))
    img = img * (1 - line[:, None]) + (outline * line)[:, None]
    return img


def _painting(g, seeds, bgs, perturb):
    S = g.size
    k = S / 32.0
    xs, ys = _grid(S)
    AR = _ar(S)
    # wobbly, soft-edged geometry
    wob = grid_noise(seeds, PA_WOB, 5, 5, AR * F(5 / S), AR * F(5 / S))
    g2 = Geometry(d=g.d + (wob - F(0.5)) * F(1.5 * k), u=g.u, v=g.v, cx=g.cx, cy=g.cy, r=g.r, X=g.X, Y=g.Y, size=S)
    img = _photo(g2, seeds, bgs, perturb, sat=(0.65, 1.0), val=(0.55, 1.0))
    # colour patches over the whole canvas
    blob = grid_noise(seeds, PA_BLOB, 4, 4, AR * F(4 / S), AR * F(4 / S))
    tint = hsv2rgb(uniform(seeds, PA_OBJ), np.full(len(seeds), 0.6, np.float32), np.ones(len(seeds), np.float32))
    img = img * (F(0.85) + F(0.3) * blob[:, None] * _rgb(tint))
    img = blur3(img, passes=2 if S >= 48 else 1)
    # directional brush strokes: noise stretched along a random angle
    ang = between(seeds, PA_ANG, 0, math.pi)
    ca, sa = _col(np.cos(ang).astype(np.float32)), _col(np.sin(ang).astype(np.float32))
    along = (xs[None] * ca + ys[None] * sa) / F(5 * k)
    across = (-xs[None] * sa + ys[None] * ca) / F(1.2 * k)
    brush = value_noise(seeds, PA_BRUSH, 16, 16, along, across)
    img = img * (F(0.86) + F(0.28) * brush[:, None])
    # saturation boost + canvas weave
    mean = img.mean(1, keepdims=True)
    img = mean + (img - mean) * _col(between(seeds, PA_SAT, 1.3, 1.7))[..., None]
    weave = (np.mod(xs + ys * 0, F(2)) + np.mod(ys + xs * 0, F(2)) == 1).astype(np.float32) * F(0.05)
    img = img * (1 - weave[None, None]) + F(0.02)
    # the painter's palette: the whole canvas, scene included, turned by 0.2-0.8 of the hue circle and
    # laid on in five tones per channel. Without it a painting kept the photo's colours, so a model that
    # never saw a painting read it like a photo (0.73-0.77 top-1, photos 0.82), and a few paintings in
    # training lowered that: painting did not behave like a rendition domain
    img = rotate_hue(img, between(seeds, PA_HUE, 0.2, 0.8) * F(2 * math.pi))
    return posterise(img, PA_LEVELS)


PA_LEVELS = 5
YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_INV = np.linalg.inv(YIQ).astype(np.float32)


def rotate_hue(img: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Turn the hue of every pixel of image ``i`` (N, 3, H, W; RGB) by ``theta[i]`` radians: a rotation
    of the chroma plane of YIQ, brightness kept."""
    c, s = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    rot = np.zeros((len(theta), 3, 3), np.float32)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    return np.einsum("nij,njhw->nihw", _YIQ_INV[None] @ rot @ YIQ[None], img)


def posterise(img: np.ndarray, levels: int) -> np.ndarray:
    """Clip to [0, 1] and round every channel to ``levels`` evenly spaced tones."""
    step = F(levels - 1)
    return np.round(np.clip(img, 0, 1) * step) / step


def _quickdraw(g, seeds, bgs, perturb):
    S = g.size
    k = S / 32.0
    AR = _ar(S)
    # g.d: unsigned distance to the doodle's strokes, already drawn by an unsteady hand
    w = _col(between(seeds, QD_W, 0.9, 1.25) * F(k))
    line = (g.d < w * F(0.5)).astype(np.float32)
    gaps = grid_noise(seeds, QD_GAP, 6, 6, AR * F(6 / S), AR * F(6 / S))
    line *= (gaps > F(0.12)).astype(np.float32)
    img = np.ones((len(seeds), 3, S, S), np.float32) - line[:, None]
    return img


STYLE_FUNCS = {"natural": _natural, "sketch": _sketch, "clipart": _clipart, "painting": _painting, "quickdraw": _quickdraw}


def render(class_names: list[str], cls: np.ndarray, domains: list[str], backgrounds: list[str],
           seeds: np.ndarray, perturb: np.ndarray, size: int) -> np.ndarray:
    """Draw ``len(seeds)`` images; returns uint8 ``(n, size, size, 3)``."""
    seeds = np.asarray(seeds, dtype=np.uint64)
    perturb = np.asarray(perturb, dtype=np.uint64)
    cls = np.asarray(cls, dtype=np.int64)
    doms = np.asarray(domains)
    # near-duplicates move by a fraction of a pixel, except one-pixel doodle strokes,
    # which a sub-pixel move would redraw elsewhere (they only get pixel noise)
    geo_perturb = np.where(doms == "quickdraw", np.uint64(0), perturb)
    g = geometry(class_names, cls, seeds, geo_perturb, size, doodle=doms == "quickdraw")
    out = np.empty((len(seeds), 3, size, size), dtype=np.float32)
    bgs = np.asarray(backgrounds)
    for name, fn in STYLE_FUNCS.items():
        m = doms == name
        if not m.any():
            continue
        gm = Geometry(d=g.d[m], u=g.u[m], v=g.v[m], cx=g.cx[m], cy=g.cy[m], r=g.r[m], X=g.X, Y=g.Y, size=size)
        out[m] = fn(gm, seeds[m], list(bgs[m]), perturb[m])
    dup = perturb != 0
    if dup.any():
        ps = perturb[dup]
        gain = between(ps, P_GAIN, 0.96, 1.04).reshape(-1, 1, 1, 1)
        noise = (uniform(ps, P_NOISE, (3, size, size)) - F(0.5)) * F(0.05)
        out[dup] = out[dup] * gain + noise
    out *= F(255)
    out += F(0.5)
    np.clip(out, 0, 255, out=out)
    return np.ascontiguousarray(out.astype(np.uint8).transpose(0, 2, 3, 1))
