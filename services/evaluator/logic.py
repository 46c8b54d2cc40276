"""Pure evaluation algorithms: arrays in, numbers out.

Nothing here knows about models, files or transports. Every function is tested with
hand-built inputs whose answers are known (``tests/unit/test_evaluator_logic.py``).

* prompts: templates with a ``{c}`` (CLIP_benchmark) or ``{}`` placeholder;
* zero-shot: class embeddings = mean over templates of normalised text embeddings,
  renormalised (as CLIP and CLIP_benchmark do); logits = images @ classes.T;
* accuracy: top-1, top-5, mean per-class recall, breakdowns by a label column,
  restriction to a label subset (1-vs-k), accuracy per similarity bin;
* group robustness: common vs counter accuracy and the drop in points; an
  effective-robustness fit per model family;
* mechanistic similarity: CKA with the unbiased HSIC estimator (Song et al. 2012),
  linear and RBF kernels, and neuron sharing (Jaccard of top-fraction units).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from clipaudit.errors import InvalidInput

TEMPLATE_DIR = Path(__file__).parent / "templates"
PLACEHOLDER = "{c}"


# --------------------------------------------------------------------------- prompts


def parse_templates(text: str, *, source: str = "templates") -> list[str]:
    """One template per non-empty line; ``{}`` is accepted as a synonym of ``{c}``.
    A template without a placeholder is refused (it would give every class the same text)."""
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        t = line.strip()
        if not t:
            continue
        out.append(normalise_template(t, where=f"{source} line {i}"))
    if not out:
        raise InvalidInput(f"{source}: no templates")
    return out


def normalise_template(template: str, *, where: str = "template") -> str:
    t = template.replace("{}", PLACEHOLDER)
    if PLACEHOLDER not in t:
        raise InvalidInput(f"{where}: template {template!r} has no class placeholder {{c}} (or {{}})")
    return t


def builtin_templates(name: str) -> list[str]:
    """Named template sets shipped with the service (``openai_imagenet``: the 80 prompts)."""
    p = TEMPLATE_DIR / f"{name}.txt"
    if not p.is_file():
        known = sorted(q.stem for q in TEMPLATE_DIR.glob("*.txt"))
        raise InvalidInput(f"unknown template set {name!r} (known: {', '.join(known)})")
    return parse_templates(p.read_text(), source=str(p))


def fill_templates(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """``prompts[c][t]`` = template t filled with class name c."""
    return [[t.replace(PLACEHOLDER, c) for t in templates] for c in classnames]


# --------------------------------------------------------------------------- zero-shot


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    if (n == 0).any():
        raise InvalidInput("cannot normalise a zero vector")
    return x / n


def class_embeddings(text_embeddings: np.ndarray) -> np.ndarray:
    """``[C, T, D]`` per-template text embeddings -> ``[C, D]`` zero-shot classifier:
    normalise each, average over templates, renormalise."""
    e = np.asarray(text_embeddings)
    if e.ndim != 3:
        raise InvalidInput(f"text embeddings must be [classes, templates, dim], got {e.shape}")
    return l2_normalise(l2_normalise(e).mean(axis=1))


def zeroshot_logits(image_embeddings: np.ndarray, classifier: np.ndarray) -> np.ndarray:
    """Cosine similarities ``[N, C]`` (rows of both are normalised here)."""
    return l2_normalise(image_embeddings) @ l2_normalise(classifier).T


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean per row: is the true label among the k highest logits (k clipped to C)?
    Ties are broken by class index (stable sort), as torch.topk does on CPU in practice."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    k = min(k, logits.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(axis=1)


def accuracy_summary(logits: np.ndarray, labels: np.ndarray, *, n_classes: int | None = None) -> dict:
    """top-1, top-5 (as fractions), mean per-class recall over the classes present, and n.
    An empty selection reports n=0 and None for every accuracy (never a division by zero)."""
    labels = np.asarray(labels)
    n = int(len(labels))
    if n == 0:
        return {"n": 0, "top1": None, "top5": None, "mean_per_class_recall": None, "classes": 0}
    top1 = topk_correct(logits, labels, 1)
    top5 = topk_correct(logits, labels, 5)
    present = np.unique(labels)
    recalls = [float(top1[labels == c].mean()) for c in present]
    return {"n": n, "top1": float(top1.mean()), "top5": float(top5.mean()),
            "mean_per_class_recall": float(np.mean(recalls)), "classes": int(len(present))}


def breakdown(logits: np.ndarray, labels: np.ndarray, values: Sequence, *, order: Iterable | None = None) -> dict:
    """Accuracy summary per distinct value of a label column (domain, group, background...).
    Values named in ``order`` but absent get an n=0 entry."""
    values = np.asarray(pd.Series(values).astype(str))
    keys = list(dict.fromkeys([*(str(o) for o in (order or [])), *sorted(set(values))]))
    return {k: accuracy_summary(logits[values == k], labels[values == k]) for k in keys}


def restrict_to_subset(logits: np.ndarray, labels: np.ndarray, subset: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep only images whose label is in ``subset`` and only those candidate classes.
    Returns (logits [M, k], labels re-indexed into the subset [M], row mask [N])."""
    subset = np.asarray(list(subset), dtype=np.int64)
    if len(subset) == 0:
        raise InvalidInput("label subset is empty")
    if len(np.unique(subset)) != len(subset):
        raise InvalidInput("label subset repeats a class")
    if subset.min() < 0 or subset.max() >= logits.shape[1]:
        raise InvalidInput(f"label subset names class ids outside 0..{logits.shape[1] - 1}")
    mask = np.isin(labels, subset)
    remap = {int(c): i for i, c in enumerate(subset)}
    new_labels = np.array([remap[int(y)] for y in labels[mask]], dtype=np.int64)
    return logits[mask][:, subset], new_labels, mask


def one_vs_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int, *, seed: int = 0) -> dict:
    """CounterAnimal's 1-vs-k protocol: each image is classified among its true class and
    k-1 other classes drawn at random (seeded) — top-1 over that candidate set."""
    rng = np.random.default_rng(seed)
    n, c = logits.shape
    if k < 2 or k > c:
        raise InvalidInput(f"1-vs-k needs 2 <= k <= {c}, got {k}")
    correct = np.zeros(n, dtype=bool)
    for i in range(n):
        others = rng.choice(np.delete(np.arange(c), labels[i]), size=k - 1, replace=False)
        correct[i] = logits[i, labels[i]] > logits[i, others].max()
    return {"k": k, "n": int(n), "top1": float(correct.mean()) if n else None}


def similarity_binned_accuracy(correct: np.ndarray, similarity: np.ndarray, edges: Sequence[float]) -> list[dict]:
    """Accuracy per similarity bin ``[e_i, e_{i+1})`` (the last bin is closed). Images
    whose similarity is NaN (not found in the similarity table) are not binned."""
    correct = np.asarray(correct, dtype=bool)
    sim = np.asarray(similarity, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise InvalidInput("similarity bin edges must be at least two increasing numbers")
    out = []
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        last = i == len(edges) - 2
        m = (sim >= lo) & ((sim <= hi) if last else (sim < hi))
        n = int(m.sum())
        out.append({"lo": float(lo), "hi": float(hi), "n": n, "top1": float(correct[m].mean()) if n else None})
    return out


# --------------------------------------------------------------------------- group robustness


def group_robustness(correct: np.ndarray, groups: Sequence, *, common: str = "common", counter: str = "counter") -> dict:
    """Common vs counter top-1 and drop = common - counter in percentage points.
    A group with no images reports n=0, accuracy None and an undefined drop."""
    correct = np.asarray(correct, dtype=bool)
    g = np.asarray(pd.Series(groups).astype(str))
    out = {}
    for name in (common, counter):
        m = g == name
        n = int(m.sum())
        out[name] = {"n": n, "top1": float(correct[m].mean()) if n else None}
    a, b = out[common]["top1"], out[counter]["top1"]
    out["drop_points"] = None if a is None or b is None else 100.0 * (a - b)
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def effective_robustness(models: pd.DataFrame, *, space: str = "logit") -> dict:
    """Per model family, fit ``counter = a * common + b`` and report each model's residual.

    ``models`` has columns model, family, common, counter (accuracies as fractions).
    ``space="logit"`` fits in logit space (Taori et al. 2020; residuals are reported back
    in accuracy points: counter - sigmoid(a*logit(common)+b)); ``space="linear"`` fits
    the raw accuracies. A family with fewer than 2 models (or all at one common accuracy)
    has an undefined fit: slope/intercept None and residuals None, never an error.
    """
    if space not in ("logit", "linear"):
        raise InvalidInput(f"effective-robustness space must be 'logit' or 'linear', got {space!r}")
    need = {"model", "family", "common", "counter"}
    if not need <= set(models.columns):
        raise InvalidInput(f"effective robustness needs columns {sorted(need)}")
    fwd = _logit if space == "logit" else (lambda p: np.asarray(p, dtype=np.float64))
    families, rows = {}, []
    df = models.dropna(subset=["common", "counter"])
    for fam, g in df.groupby("family", sort=True):
        x, y = fwd(g["common"].to_numpy()), fwd(g["counter"].to_numpy())
        if len(g) >= 2 and np.ptp(x) > 0:
            a, b = np.polyfit(x, y, 1)
            pred = a * x + b
            if space == "logit":
                pred = 1 / (1 + np.exp(-pred))
            resid = 100.0 * (g["counter"].to_numpy() - pred)
            families[fam] = {"n_models": int(len(g)), "slope": float(a), "intercept": float(b), "defined": True}
        else:
            resid = [None] * len(g)
            families[fam] = {"n_models": int(len(g)), "slope": None, "intercept": None, "defined": False,
                             "reason": "needs at least 2 models with different common accuracy"}
        for (_, r), res in zip(g.iterrows(), resid):
            rows.append({"model": r["model"], "family": fam, "common": float(r["common"]),
                         "counter": float(r["counter"]),
                         "residual_points": None if res is None else float(res)})
    return {"space": space, "families": families, "models": rows}


# --------------------------------------------------------------------------- CKA


def linear_kernel(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x @ x.T


def rbf_kernel(x: np.ndarray, *, sigma: float | None = None) -> np.ndarray:
    """Gaussian kernel exp(-d^2 / (2 sigma^2)); sigma defaults to the median heuristic
    (median of the non-zero pairwise distances), which makes CKA-RBF scale-invariant."""
    x = np.asarray(x, dtype=np.float64)
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    if sigma is None:
        iu = np.triu_indices(len(x), k=1)
        d = np.sqrt(d2[iu])
        d = d[d > 0]
        sigma = float(np.median(d)) if len(d) else 1.0
    return np.exp(-d2 / (2 * sigma ** 2))


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC estimator of Song et al. (2012); needs n >= 4."""
    n = k.shape[0]
    if n < 4:
        raise InvalidInput(f"unbiased HSIC needs at least 4 samples, got {n}")
    k = np.array(k, dtype=np.float64)
    l = np.array(l, dtype=np.float64)
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    kl = k @ l
    term1 = np.trace(kl)
    term2 = (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ kl @ one)
    return float((term1 + term2 - term3) / (n * (n - 3)))


def cka(x: np.ndarray, y: np.ndarray, *, kernel: str = "linear") -> float:
    """Centred kernel alignment between two representations of the same n items
    (rows), each ``[n, features]`` (feature counts may differ)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise InvalidInput(f"CKA needs two 2-D arrays with the same rows, got {x.shape} and {y.shape}")
    if kernel == "linear":
        k, l = linear_kernel(x), linear_kernel(y)
    elif kernel == "rbf":
        k, l = rbf_kernel(x), rbf_kernel(y)
    else:
        raise InvalidInput(f"CKA kernel must be 'linear' or 'rbf', got {kernel!r}")
    kl = hsic_unbiased(k, l)
    kk = hsic_unbiased(k, k)
    ll = hsic_unbiased(l, l)
    if kk <= 0 or ll <= 0:
        return float("nan")
    return float(kl / math.sqrt(kk * ll))


def top_units(mean_activation: np.ndarray, fraction: float = 0.1) -> set[int]:
    """Indices of the top ``fraction`` of units (at least one) by mean activation;
    ties at the cut are broken by unit index."""
    a = np.asarray(mean_activation, dtype=np.float64).ravel()
    if not 0 < fraction <= 1:
        raise InvalidInput(f"top-unit fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(fraction * len(a))))
    return set(np.argsort(-a, kind="stable")[:k].tolist())


def jaccard(a: set, b: set) -> float:
    u = a | b
    return len(a & b) / len(u) if u else float("nan")


def neuron_sharing(mean_act_a: np.ndarray, mean_act_b: np.ndarray, fraction: float = 0.1) -> float:
    """Jaccard overlap of the two domains' top-``fraction`` units of one layer."""
    if np.shape(mean_act_a) != np.shape(mean_act_b):
        raise InvalidInput("neuron sharing needs the same units in both domains")
    return jaccard(top_units(mean_act_a, fraction), top_units(mean_act_b, fraction))


def cka_leave_one_out(x: np.ndarray, y: np.ndarray, *, kernel: str = "linear") -> list[float]:
    """CKA of ``x`` and ``y`` with each row (item) left out in turn: ``n`` values, the
    replicates of a jackknife over items (``clipaudit.studies.context.jackknife_interval``)."""
    x, y = np.asarray(x), np.asarray(y)
    keep = ~np.eye(len(x), dtype=bool)
    return [cka(x[k], y[k], kernel=kernel) for k in keep]


def class_means(activations: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``[len(classes), units]``: mean activation of each class (rows in ``classes`` order)."""
    labels = np.asarray(labels)
    rows = []
    for c in classes:
        m = labels == c
        if not m.any():
            raise InvalidInput(f"class {c} has no images")
        rows.append(np.asarray(activations[m], dtype=np.float64).mean(axis=0))
    return np.stack(rows)
