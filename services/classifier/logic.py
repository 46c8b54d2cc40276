"""Pure algorithms of the domain classifier: arrays in, arrays out.

Study 2 (Mayilvahanan, Zimmermann et al., ICLR 2025) labels every image *natural* or
*rendition* with linear heads on L2-normalised CLIP image embeddings, keeps only
confident decisions (a threshold per target precision) and measures how much of a
"rendition" test set is really natural and vice versa. This module holds the maths:

* :func:`map_labels` — label strings to class indices (the mapping rule is below).
* :func:`stratified_split` — the seeded 75/12.5/12.5 train/validation/test split.
* :func:`fit_heads` — one-vs-rest heads (linear, or a small MLP), full-batch Adam, seeded.
* :func:`select_threshold` — the smallest score threshold whose precision reaches a target.
* :func:`decide` — per-row decision: of the classes whose head passes its threshold
  the one of highest score, *ambiguous* (-1) when none passes.
* :func:`wilson_interval`, :func:`rogan_gladen` — a share with its 95% CI, and the
  share corrected for the classifier's own error rates.
* :func:`zero_shot_labels` — bootstrap labels from text-prompt embeddings.

No transport, storage or metrics here (numpy only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from clipaudit.errors import FailedPrecondition, InvalidInput

AMBIGUOUS = -1
AMBIGUOUS_NAME = "ambiguous"
DEFAULT_CLASSES = ("natural", "rendition")


# -- labels ------------------------------------------------------------------------------

def map_labels(values: Sequence[str], classes: Sequence[str]) -> tuple[np.ndarray, dict[str, str]]:
    """Class indices of ``values`` and the mapping used (value -> class).

    Rule: a value equal to a class name maps to that class. With exactly two classes
    of which one is ``natural``, every other value maps to the other class (so
    ``domain`` values sketch/clipart/painting/quickdraw become ``rendition``).
    Otherwise an unknown value is an error, and so is a label set with one class only.
    """
    classes = list(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise InvalidInput(f"need at least two distinct classes, got {classes}")
    if AMBIGUOUS_NAME in classes:
        raise InvalidInput(f"{AMBIGUOUS_NAME!r} is reserved for undecided rows; it cannot be a class")
    arr = np.asarray([str(v) for v in values], dtype=object)
    uniques = sorted(set(arr.tolist()))
    catch_all = None
    if len(classes) == 2 and "natural" in classes:
        catch_all = classes[1 - classes.index("natural")]
    mapping: dict[str, str] = {}
    unknown = []
    for u in uniques:
        if u in classes:
            mapping[u] = u
        elif catch_all is not None and u not in ("", "None", "nan"):
            mapping[u] = catch_all
        else:
            unknown.append(u)
    if unknown:
        raise InvalidInput(f"label values {unknown[:5]} are not among the classes {classes} "
                           f"(only with two classes, one of them 'natural', are other values mapped to the other)")
    index = {c: i for i, c in enumerate(classes)}
    y = np.fromiter((index[mapping[v]] for v in arr), dtype=np.int64, count=len(arr))
    present = np.bincount(y, minlength=len(classes))
    if (present == 0).any():
        missing = [c for c, n in zip(classes, present) if n == 0]
        raise InvalidInput(f"labels hold no example of class(es) {missing}: a domain classifier needs every class "
                           f"(counts {dict(zip(classes, present.tolist()))})")
    return y, mapping


def stratified_split(y: np.ndarray, seed: int, fractions=(0.75, 0.125, 0.125)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/validation/test indices, split class by class so each part holds
    every class in the same proportions. Each class needs at least 8 examples."""
    if not math.isclose(sum(fractions), 1.0) or min(fractions) <= 0:
        raise InvalidInput(f"split fractions must be positive and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 8:
            raise InvalidInput(f"class {int(c)} has {len(idx)} labelled examples; at least 8 are needed for a "
                               f"75/12.5/12.5 split")
        idx = idx[rng.permutation(len(idx))]
        n_val = max(1, round(len(idx) * fractions[1]))
        n_test = max(1, round(len(idx) * fractions[2]))
        n_train = len(idx) - n_val - n_test
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train:n_train + n_val])
        parts[2].append(idx[n_train + n_val:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def check_embeddings(x: np.ndarray, dim: int | None = None, what: str = "embeddings") -> np.ndarray:
    """A finite 2-D float matrix of the right width, rows L2-normalised (re-normalised
    here when they are not: the heads are trained and applied on unit vectors)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InvalidInput(f"{what}: expected a 2-D array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InvalidInput(f"{what}: dimension {x.shape[1]} does not match the classifier's {dim}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InvalidInput(f"{what}: expected floats, got {x.dtype}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise InvalidInput(f"{what}: {int(bad.sum())} row(s) contain NaN or inf (first at row {int(np.argmax(bad))})")
    x = x.astype(np.float32, copy=False)
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise InvalidInput(f"{what}: {int((norms == 0).sum())} zero vector(s) have no direction")
    if not np.allclose(norms, 1.0, atol=1e-2):
        x = x / norms[:, None]
    return x


# -- heads ---------------------------------------------------------------------------------

@dataclass
class DomainHeads:
    """One-vs-rest heads: ``scores = sigmoid(f(x))``, one column per class.

    ``kind="linear"``: f(x) = x W + b (W: dim x K). ``kind="mlp"``: f(x) =
    relu(x W1 + b1) W2 + b2 with one hidden layer.
    """

    kind: str
    weights: dict[str, np.ndarray]

    @property
    def dim(self) -> int:
        return int(self.weights["W" if self.kind == "linear" else "W1"].shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.weights["b" if self.kind == "linear" else "b2"].shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        w = self.weights
        if self.kind == "linear":
            out = x @ w["W"]
            out += w["b"]
            return out
        h = x @ w["W1"]
        h += w["b1"]
        np.maximum(h, 0, out=h)
        out = h @ w["W2"]
        out += w["b2"]
        return out

    def scores(self, x: np.ndarray, block_rows: int = 1 << 16, *, check: bool = False,
               what: str = "vectors") -> np.ndarray:
        """Per-class probabilities (float32, n x K), computed block by block so a
        float16 set larger than memory in float32 streams through.

        ``check=True`` validates each block on the way (one float32 conversion for both):
        a non-finite squared norm means a NaN/inf row, a zero norm a zero row (both
        refused with the row index); rows off unit norm by more than 1e-2 are re-normalised.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidInput(f"{what}: expected rows of dimension {self.dim}, got shape {x.shape}")
        if check and not np.issubdtype(x.dtype, np.floating):
            raise InvalidInput(f"{what}: expected floats, got {x.dtype}")
        out = np.empty((len(x), self.n_classes), dtype=np.float32)
        for s in range(0, len(x), block_rows):
            xb = np.asarray(x[s:s + block_rows], dtype=np.float32)
            if check:
                sq = np.einsum("ij,ij->i", xb, xb)
                bad = ~np.isfinite(sq)
                if bad.any():
                    raise InvalidInput(f"{what}: row {s + int(np.argmax(bad))} contains NaN or inf")
                if (sq == 0).any():
                    raise InvalidInput(f"{what}: row {s + int(np.argmax(sq == 0))} is a zero vector (no direction)")
                if np.abs(sq - 1).max() > 2e-2:
                    xb = xb / np.sqrt(sq)[:, None]
            z = self.logits(xb)
            np.negative(z, out=z)
            np.exp(z, out=z)
            z += 1.0
            np.reciprocal(z, out=z)
            out[s:s + block_rows] = z
        return out

    def to_lists(self) -> dict:
        return {k: np.asarray(v, dtype=np.float32).tolist() for k, v in self.weights.items()}

    @classmethod
    def from_lists(cls, kind: str, weights: dict) -> "DomainHeads":
        if kind not in ("linear", "mlp"):
            raise InvalidInput(f"unknown head kind {kind!r} (linear | mlp)")
        need = {"linear": ("W", "b"), "mlp": ("W1", "b1", "W2", "b2")}[kind]
        try:
            w = {k: np.asarray(weights[k], dtype=np.float32) for k in need}
        except KeyError as e:
            raise InvalidInput(f"classifier weights lack {e.args[0]!r}") from e
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"classifier weights are not numeric arrays: {e}") from e
        heads = cls(kind, w)
        pairs = [("W", "b")] if kind == "linear" else [("W1", "b1"), ("W2", "b2")]
        for wk, bk in pairs:
            if w[wk].ndim != 2 or w[bk].ndim != 1 or w[wk].shape[1] != w[bk].shape[0]:
                raise InvalidInput(f"classifier weights {wk}{w[wk].shape}/{bk}{w[bk].shape} do not fit together")
        if kind == "mlp" and w["W2"].shape[0] != w["W1"].shape[1]:
            raise InvalidInput("classifier weights W1/W2 do not fit together")
        if not all(np.isfinite(v).all() for v in w.values()):
            raise InvalidInput("classifier weights contain NaN or inf")
        return heads


def fit_heads(x: np.ndarray, y: np.ndarray, n_classes: int, *, kind: str = "linear", seed: int = 0,
              l2: float = 1e-4, hidden: int = 64, steps: int = 400, lr: float = 0.05,
              balanced: bool = True) -> DomainHeads:
    """Train one-vs-rest heads (class c vs every other class) by full-batch Adam on the
    binary cross-entropy summed over heads and averaged over rows, + ``l2``/2 * ||W||^2.

    Features are standardised on the training rows (CLIP embeddings of one model are
    often nearly collinear: the domain signal lives in directions of tiny variance) and
    the standardisation is folded back into the first layer, so the stored heads apply
    to raw unit vectors. ``balanced``: each head weighs its positives and negatives
    equally (so a score of 0.5 means "as likely as not" whatever the class mix).

    Plain numpy (no torch.optim, whose first use imports the whole compiler stack):
    seeded and deterministic on CPU. The linear head starts at zero, the MLP's first
    layer from ``default_rng(seed)``. Stops early once the gradient's largest entry is
    below 1e-5.
    """
    if kind not in ("linear", "mlp"):
        raise InvalidInput(f"unknown head kind {kind!r} (linear | mlp)")
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    mu = x.mean(axis=0)
    sigma = np.maximum(x.std(axis=0), 1e-6)
    x = (x - mu) / sigma
    target = np.eye(n_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64)]
    if balanced:
        pos = target.sum(axis=0)
        row_w = np.where(target > 0, n / (2 * np.maximum(pos, 1)), n / (2 * np.maximum(n - pos, 1))).astype(np.float32)
    else:
        row_w = np.ones_like(target)
    if kind == "linear":
        params = {"W": np.zeros((d, n_classes), np.float32), "b": np.zeros(n_classes, np.float32)}
    else:
        params = {"W1": (rng.standard_normal((d, hidden)) * math.sqrt(2.0 / d)).astype(np.float32),
                  "b1": np.zeros(hidden, np.float32),
                  "W2": (rng.standard_normal((hidden, n_classes)) * math.sqrt(1.0 / hidden)).astype(np.float32),
                  "b2": np.zeros(n_classes, np.float32)}
    m1 = {k: np.zeros_like(v) for k, v in params.items()}
    m2 = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        if kind == "linear":
            z = x @ params["W"] + params["b"]
        else:
            h = np.maximum(x @ params["W1"] + params["b1"], 0)
            z = h @ params["W2"] + params["b2"]
        g_z = (1.0 / (1.0 + np.exp(-z)) - target) * row_w / n
        if kind == "linear":
            grads = {"W": x.T @ g_z + l2 * params["W"], "b": g_z.sum(axis=0)}
        else:
            g_h = (g_z @ params["W2"].T) * (h > 0)
            grads = {"W2": h.T @ g_z + l2 * params["W2"], "b2": g_z.sum(axis=0),
                     "W1": x.T @ g_h + l2 * params["W1"], "b1": g_h.sum(axis=0)}
        if max(float(np.abs(g).max()) for g in grads.values()) < 1e-5:
            break
        for k, g in grads.items():
            m1[k] = beta1 * m1[k] + (1 - beta1) * g
            m2[k] = beta2 * m2[k] + (1 - beta2) * g * g
            step = lr * (m1[k] / (1 - beta1 ** t)) / (np.sqrt(m2[k] / (1 - beta2 ** t)) + eps)
            params[k] = (params[k] - step).astype(np.float32)
    # fold the standardisation into the first layer: ((x - mu) / sigma) W + b = x W' + b'
    first, bias = ("W", "b") if kind == "linear" else ("W1", "b1")
    w_raw = params[first] / sigma[:, None]
    params[bias] = (params[bias] - mu @ w_raw).astype(np.float32)
    params[first] = w_raw.astype(np.float32)
    return DomainHeads(kind, params)


# -- thresholds ------------------------------------------------------------------------------

@dataclass
class ThresholdChoice:
    """A threshold chosen on held-out scores for a target precision."""

    target_precision: float
    threshold: float
    precision: float          # achieved on the held-out split
    recall: float
    predicted_positive: int
    positives: int
    reachable: bool           # False: no threshold reaches the target; `threshold` is the best reachable one

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def precision_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall, predicted_positive) for every distinct score t,
    with the rule "predict positive iff score >= t", thresholds in decreasing order."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    tp = np.cumsum(p)
    last = np.flatnonzero(np.r_[s[1:] < s[:-1], True])  # last index of each run of equal scores
    k = last + 1
    n_pos = max(int(p.sum()), 1)
    return s[last], tp[last] / k, tp[last] / n_pos, k


def select_threshold(scores: np.ndarray, positive: np.ndarray, target_precision: float, *,
                     min_threshold: float = 0.5) -> ThresholdChoice:
    """The smallest threshold t >= ``min_threshold`` (rule: positive iff score >= t) whose
    precision on these scores is >= ``target_precision``: of all thresholds meeting the
    target it keeps the most positives. If none meets it, the threshold of the best
    reachable precision (the smallest such threshold) with ``reachable=False``.

    Candidates are the distinct scores. ``min_threshold`` (default 0.5: a head must at
    least find its class more likely than not) keeps a small, clean validation split
    from pulling the threshold deep into the other class's scores, where the target
    precision is met only by spending the whole false-positive budget at once.
    """
    if not 0 < target_precision < 1 or math.isnan(target_precision):
        raise InvalidInput(f"target precision must be in (0, 1), got {target_precision}")
    if not 0 <= min_threshold < 1:
        raise InvalidInput(f"min_threshold must be in [0, 1), got {min_threshold}")
    positive = np.asarray(positive, dtype=bool)
    if len(scores) == 0 or not positive.any():
        raise InvalidInput("threshold selection needs held-out scores with at least one positive")
    t, prec, rec, k = precision_curve(scores, positive)
    allowed = t >= min_threshold
    if not allowed.any():
        return ThresholdChoice(float(target_precision), float(min_threshold), 0.0, 0.0, 0, int(positive.sum()), False)
    t, prec, rec, k = t[allowed], prec[allowed], rec[allowed], k[allowed]
    ok = np.flatnonzero(prec >= target_precision - 1e-12)
    reachable = len(ok) > 0
    if reachable:
        i = ok[-1]
    else:
        best = prec.max()
        i = np.flatnonzero(prec >= best - 1e-12)[-1]
    return ThresholdChoice(float(target_precision), float(t[i]), float(prec[i]), float(rec[i]), int(k[i]),
                           int(positive.sum()), bool(reachable))


def check_threshold(value: float, what: str = "threshold") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} must be a number in (0, 1), got {value!r}") from e
    if not 0 < v < 1 or math.isnan(v):
        raise InvalidInput(f"{what} must be in (0, 1), got {value!r}")
    return v


def decide(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Class index per row: among the classes whose score passes their threshold
    (score >= threshold) the one of highest score; -1 (ambiguous) when none passes."""
    passed = scores >= np.asarray(thresholds, dtype=scores.dtype)[None, :]
    out = np.argmax(np.where(passed, scores, -np.inf), axis=1).astype(np.int64)
    out[~passed.any(axis=1)] = AMBIGUOUS
    return out


def decision_rates(decisions: np.ndarray, y: np.ndarray, n_classes: int) -> dict[int, dict]:
    """Per class c: precision, recall (= sensitivity, P(decide c | true c)), false
    positive rate (P(decide c | true not c)) and ambiguous share of the true class."""
    out = {}
    for c in range(n_classes):
        pred, true = decisions == c, y == c
        tp = int((pred & true).sum())
        out[c] = {
            "precision": tp / int(pred.sum()) if pred.any() else float("nan"),
            "recall": tp / int(true.sum()) if true.any() else float("nan"),
            "false_positive_rate": int((pred & ~true).sum()) / int((~true).sum()) if (~true).any() else float("nan"),
            "ambiguous_share": float((decisions[true] == AMBIGUOUS).mean()) if true.any() else float("nan"),
            "support": int(true.sum()),
            "negatives": int((~true).sum()),
            "decided": int(pred.sum()),
        }
    return out


# -- shares ----------------------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rogan_gladen(observed: float, sensitivity: float, false_positive_rate: float) -> float | None:
    """True prevalence from the observed share of decisions for a class:
    ``observed = pi * sensitivity + (1 - pi) * fpr`` solved for pi, clipped to [0, 1].
    None when the classifier is no better than chance (sensitivity <= fpr)."""
    if not (np.isfinite(sensitivity) and np.isfinite(false_positive_rate)) or sensitivity - false_positive_rate <= 1e-9:
        return None
    return float(min(1.0, max(0.0, (observed - false_positive_rate) / (sensitivity - false_positive_rate))))


@dataclass
class Share:
    count: int
    n: int
    share: float
    ci95: tuple[float, float]
    corrected: float | None = None              # Rogan-Gladen
    corrected_ci95: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        d = {"count": self.count, "n": self.n, "share": self.share, "ci95": list(self.ci95)}
        if self.corrected is not None:
            d["corrected"] = self.corrected
            d["corrected_ci95"] = list(self.corrected_ci95) if self.corrected_ci95 else None
        return d


def share_of(k: int, n: int, rates: dict | None = None, z: float = 1.959963984540054) -> Share:
    """The share k/n with its Wilson 95% CI.

    With the classifier's held-out rates for the class (``recall`` = sensitivity,
    ``false_positive_rate``, and the counts they were measured on, ``support`` true
    members and ``negatives`` others) also the Rogan–Gladen corrected share
    pi = (q - fpr) / (sens - fpr), with a delta-method CI that includes the
    uncertainty of all three estimates:
    Var(pi) ~ [Var(q) + pi^2 Var(sens) + (1 - pi)^2 Var(fpr)] / (sens - fpr)^2,
    each binomial variance taken at Agresti–Coull-adjusted rates ((x + 2) / (m + 4)) so a
    rate measured as exactly 0 or 1 still carries its uncertainty.
    """
    n, k = int(n), int(k)
    s = Share(k, n, k / n if n else float("nan"), wilson_interval(k, n))
    if not rates or not n:
        return s
    sens, fpr = rates.get("recall"), rates.get("false_positive_rate")
    n_pos, n_neg = rates.get("support") or 0, rates.get("negatives") or 0
    if sens is None or fpr is None:
        return s
    pi = rogan_gladen(s.share, sens, fpr)
    if pi is None:
        return s

    def ac_var(p: float, m: int) -> float:
        adj = (p * m + 2) / (m + 4)
        return adj * (1 - adj) / (m + 4)

    var = (ac_var(s.share, n) + pi * pi * ac_var(sens, n_pos) + (1 - pi) ** 2 * ac_var(fpr, n_neg)) / (sens - fpr) ** 2
    half = z * math.sqrt(var)
    s.corrected = pi
    s.corrected_ci95 = (max(0.0, pi - half), min(1.0, pi + half))
    return s


# -- zero-shot bootstrap ------------------------------------------------------------------------

NATURAL_PROMPTS = ("a photo of {}.", "a photograph of {}.", "a close-up photo of {}.", "a real photo of {}.",
                   "a snapshot of {}.")
RENDITION_PROMPTS = ("a sketch of {}.", "a drawing of {}.", "a painting of {}.", "clipart of {}.",
                     "a cartoon of {}.", "a doodle of {}.", "a rendering of {}.")
PROMPTS = {"natural": NATURAL_PROMPTS, "rendition": RENDITION_PROMPTS}


def domain_prompts(classes: Sequence[str], objects: Sequence[str] = ("an object",)) -> dict[str, list[str]]:
    """Prompt texts per domain class (each template filled with each object name)."""
    out = {}
    for c in classes:
        if c not in PROMPTS:
            raise InvalidInput(f"no zero-shot prompts for class {c!r} (known: {', '.join(PROMPTS)})")
        out[c] = [t.format(o) for t in PROMPTS[c] for o in objects]
    return out


@dataclass
class ZeroShotLabels:
    indices: np.ndarray        # rows kept (the most confident per pseudo-class)
    labels: np.ndarray         # their pseudo-labels
    confidence: np.ndarray     # softmax probability of the pseudo-label, all rows
    counts: dict = field(default_factory=dict)


def zero_shot_labels(x: np.ndarray, prompt_embeddings: list[np.ndarray], *, keep_fraction: float = 0.5,
                     temperature: float = 100.0) -> ZeroShotLabels:
    """Pseudo-labels from text prompts: each class is the normalised mean of its
    prompts' embeddings; a row's label is the class of highest cosine; per class only
    the ``keep_fraction`` most confident rows (softmax over ``temperature`` * cosine)
    are kept for training."""
    if not 0 < keep_fraction <= 1:
        raise InvalidInput(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    protos = []
    for i, e in enumerate(prompt_embeddings):
        e = check_embeddings(np.asarray(e, dtype=np.float32), dim=x.shape[1], what=f"prompt embeddings of class {i}")
        m = e.mean(axis=0)
        protos.append(m / max(np.linalg.norm(m), 1e-12))
    z = temperature * (x @ np.stack(protos, axis=1))
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    lab = p.argmax(axis=1)
    conf = p[np.arange(len(p)), lab]
    keep = []
    for c in range(len(protos)):
        idx = np.flatnonzero(lab == c)
        n_keep = int(math.ceil(len(idx) * keep_fraction))
        keep.append(idx[np.argsort(-conf[idx], kind="stable")[:n_keep]])
    kept = np.sort(np.concatenate(keep))
    counts = {int(c): int((lab == c).sum()) for c in range(len(protos))}
    if sum(1 for v in counts.values() if v > 0) < 2:
        raise FailedPrecondition(f"zero-shot prompts put every vector in one class ({counts}); "
                                 f"cannot bootstrap a classifier (is the text model the image model?)")
    return ZeroShotLabels(kept, lab[kept], conf, counts)


def iter_blocks(n: int, block: int) -> Iterator[slice]:
    for s in range(0, n, block):
        yield slice(s, min(n, s + block))
