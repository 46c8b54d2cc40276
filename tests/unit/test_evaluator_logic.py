"""Known-answer tests of the evaluator's pure algorithms (services/evaluator/logic.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipaudit.errors import InvalidInput
from services.evaluator import logic


# ------------------------------------------------------------------ templates

def test_openai_templates_are_the_80_exact_ones():
    # oracle from another source: open_clip ships the same list as lambdas
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    ours = logic.builtin_templates("openai_imagenet")
    assert len(ours) == 80
    assert ours == [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert ours[0] == "a bad photo of a {c}." and ours[1] == "a photo of many {c}."


def test_template_placeholders():
    assert logic.parse_templates("a {} photo\n\nitap of a {c}.\n") == ["a {c} photo", "itap of a {c}."]
    with pytest.raises(InvalidInput, match="no class placeholder"):
        logic.parse_templates("a photo of a {c}\na photo of something")
    with pytest.raises(InvalidInput):
        logic.builtin_templates("no_such_set")
    assert logic.fill_templates(["cat", "dog"], ["a {c}.", "{c}!"]) == [["a cat.", "cat!"], ["a dog.", "dog!"]]


# ------------------------------------------------------------------ zero-shot accuracy

def test_class_embeddings_average_normalised_templates():
    e = np.array([[[2.0, 0.0], [0.0, 5.0]],      # class 0: normalised -> (1,0),(0,1): mean (0.5,0.5)
                  [[0.0, -3.0], [0.0, -1.0]]])   # class 1: (0,-1) twice
    w = logic.class_embeddings(e)
    np.testing.assert_allclose(w, [[1 / np.sqrt(2), 1 / np.sqrt(2)], [0.0, -1.0]])


LOGITS = np.array([
    [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],   # label 0 -> top1 right
    [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # label 0 -> wrong, rank 2 -> top5 right
    [0.0, 0.0, 0.9, 0.1, 0.0, 0.0],   # label 2 -> right
    [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],   # label 5 -> rank 6: wrong in top-5 too
])
LABELS = np.array([0, 0, 2, 5])


def test_accuracy_summary_known_answers():
    s = logic.accuracy_summary(LOGITS, LABELS)
    assert s["n"] == 4
    assert s["top1"] == pytest.approx(0.5)
    assert s["top5"] == pytest.approx(0.75)
    # per-class recall: class 0 -> 1/2, class 2 -> 1, class 5 -> 0 ; mean 0.5
    assert s["mean_per_class_recall"] == pytest.approx(0.5)
    assert s["classes"] == 3


def test_breakdown_and_empty_selection_reports_n0():
    out = logic.breakdown(LOGITS, LABELS, ["a", "a", "b", "b"], order=["a", "b", "c"])
    assert out["a"]["top1"] == pytest.approx(0.5) and out["a"]["n"] == 2
    assert out["b"]["top1"] == pytest.approx(0.5)
    assert out["c"] == {"n": 0, "top1": None, "top5": None, "mean_per_class_recall": None, "classes": 0}


def test_label_subset_restricts_candidates():
    # restrict to classes {0, 5}: row 3 (label 5) now competes with class 0 only: 0.6 > 0.1 -> wrong
    # rows 0,1 (label 0): row 0 right (0.9 > 0), row 1: 0.1 > 0.0 -> right now
    lg, lb, mask = logic.restrict_to_subset(LOGITS, LABELS, [0, 5])
    assert mask.tolist() == [True, True, False, True]
    assert lb.tolist() == [0, 0, 1]
    assert logic.accuracy_summary(lg, lb)["top1"] == pytest.approx(2 / 3)
    with pytest.raises(InvalidInput):
        logic.restrict_to_subset(LOGITS, LABELS, [0, 9])


def test_one_vs_k_with_k_equal_to_all_classes_is_top1():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 6))
    labels = rng.integers(0, 6, 50)
    assert logic.one_vs_k_accuracy(logits, labels, 6)["top1"] == pytest.approx(
        logic.accuracy_summary(logits, labels)["top1"])
    # 1-vs-2 is never harder than 1-vs-all
    assert logic.one_vs_k_accuracy(logits, labels, 2)["top1"] >= logic.accuracy_summary(logits, labels)["top1"]


def test_similarity_bins():
    correct = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    sim = np.array([0.1, 0.2, 0.5, 0.6, 0.9, np.nan])
    bins = logic.similarity_binned_accuracy(correct, sim, [0.0, 0.5, 1.0])
    assert bins[0] == {"lo": 0.0, "hi": 0.5, "n": 2, "top1": 0.5}
    assert bins[1]["n"] == 3 and bins[1]["top1"] == pytest.approx(2 / 3)   # NaN row not binned
    empty = logic.similarity_binned_accuracy(correct, sim, [2.0, 3.0])
    assert empty == [{"lo": 2.0, "hi": 3.0, "n": 0, "top1": None}]


# ------------------------------------------------------------------ groups

def test_group_robustness_drop_and_zero_group():
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    groups = ["common"] * 4 + ["counter"] * 4
    g = logic.group_robustness(correct, groups)
    assert g["common"] == {"n": 4, "top1": 0.75}
    assert g["counter"] == {"n": 4, "top1": 0.25}
    assert g["drop_points"] == pytest.approx(50.0)
    only_common = logic.group_robustness(correct[:4], groups[:4])
    assert only_common["counter"] == {"n": 0, "top1": None}
    assert only_common["drop_points"] is None


def test_effective_robustness_linear_fit_and_residuals():
    df = pd.DataFrame({
        "model": ["a", "b", "c", "d", "lonely"],
        "family": ["clip", "clip", "clip", "imagenet", "other"],
        "common": [0.5, 0.7, 0.9, 0.8, 0.6],
        "counter": [0.3, 0.5, 0.7, 0.7, 0.4],
    })
    er = logic.effective_robustness(df, space="linear")
    clip = er["families"]["clip"]
    assert clip["slope"] == pytest.approx(1.0) and clip["intercept"] == pytest.approx(-0.2)
    res = {r["model"]: r["residual_points"] for r in er["models"]}
    assert res["a"] == pytest.approx(0.0, abs=1e-9)
    # one model in a family: undefined, not a crash
    assert er["families"]["imagenet"]["defined"] is False and res["d"] is None
    assert er["families"]["other"]["defined"] is False


def test_effective_robustness_logit_space_recovers_a_logit_line():
    common = np.array([0.3, 0.5, 0.7, 0.9])
    lc = np.log(common / (1 - common))
    counter = 1 / (1 + np.exp(-(0.8 * lc - 0.5)))
    df = pd.DataFrame({"model": list("abcd"), "family": "clip", "common": common, "counter": counter})
    er = logic.effective_robustness(df, space="logit")
    assert er["families"]["clip"]["slope"] == pytest.approx(0.8)
    assert er["families"]["clip"]["intercept"] == pytest.approx(-0.5)
    assert all(abs(r["residual_points"]) < 1e-6 for r in er["models"])
    with pytest.raises(InvalidInput):
        logic.effective_robustness(df, space="cubic")


# ------------------------------------------------------------------ CKA

def _hsic_unbiased_reference(k, l):
    """Direct transcription of Song et al. (2012), eq. 5, with explicit sums."""
    n = k.shape[0]
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    a = np.sum(kt * lt.T)                       # tr(Kt Lt)
    b = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
    c = 2.0 / (n - 2) * np.sum(kt.sum(axis=0) * lt.sum(axis=1))
    return (a + b - c) / (n * (n - 3))


def _cka_reference_linear(x, y):
    k, l = x @ x.T, y @ y.T
    return _hsic_unbiased_reference(k, l) / np.sqrt(_hsic_unbiased_reference(k, k) * _hsic_unbiased_reference(l, l))


def test_cka_matches_direct_numpy_implementation():
    rng = np.random.default_rng(1)
    for n, p, q in [(6, 3, 5), (20, 8, 8), (50, 30, 10)]:
        x = rng.normal(size=(n, p))
        y = 0.5 * x[:, :min(p, q)] @ rng.normal(size=(min(p, q), q)) + rng.normal(size=(n, q))
        assert logic.cka(x, y) == pytest.approx(_cka_reference_linear(x, y), rel=1e-10)
        k = logic.rbf_kernel(x)
        l = logic.rbf_kernel(y)
        assert logic.hsic_unbiased(k, l) == pytest.approx(_hsic_unbiased_reference(k, l), rel=1e-10)


def test_cka_leave_one_out_drops_each_item_in_turn():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 5))
    loo = logic.cka_leave_one_out(x, y)
    assert len(loo) == 7
    for i, v in enumerate(loo):
        rest = [j for j in range(7) if j != i]
        assert v == pytest.approx(logic.cka(x[rest], y[rest]), rel=1e-12)
    with pytest.raises(InvalidInput, match="at least 4"):     # 4 items leave 3: too few for unbiased HSIC
        logic.cka_leave_one_out(x[:4], y[:4])


def test_cka_invariances():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    for kernel in ("linear", "rbf"):
        assert logic.cka(x, x, kernel=kernel) == pytest.approx(1.0)
        assert logic.cka(x, x @ q, kernel=kernel) == pytest.approx(1.0)          # orthogonal transform
        assert logic.cka(x, 7.5 * x, kernel=kernel) == pytest.approx(1.0)        # isotropic scaling
    y = rng.normal(size=(30, 12))
    assert abs(logic.cka(x, y)) < 0.3                                            # independent: near 0
    with pytest.raises(InvalidInput, match="at least 4"):
        logic.cka(x[:3], x[:3])
    with pytest.raises(InvalidInput):
        logic.cka(x, x[:10])


def test_rbf_median_heuristic():
    x = np.array([[0.0], [1.0], [3.0]])   # distances 1, 2, 3 -> median 2
    k = logic.rbf_kernel(x)
    assert k[0, 1] == pytest.approx(np.exp(-1 / 8))
    assert k[0, 2] == pytest.approx(np.exp(-9 / 8))


def test_neuron_sharing_jaccard_of_top_units():
    a = np.arange(20, dtype=float)          # top 10% = units 19, 18
    b = np.arange(20, dtype=float)[::-1]    # top 10% = units 0, 1
    assert logic.top_units(a) == {18, 19}
    assert logic.neuron_sharing(a, a) == 1.0
    assert logic.neuron_sharing(a, b) == 0.0
    c = a.copy()
    c[0] = 100.0                            # top = {0, 19}: overlap {19} of union {0, 18, 19}
    assert logic.neuron_sharing(a, c) == pytest.approx(1 / 3)


def test_class_means():
    acts = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    m = logic.class_means(acts, np.array([0, 0, 1]), [1, 0])
    np.testing.assert_allclose(m, [[5, 5], [2, 1]])
    with pytest.raises(InvalidInput):
        logic.class_means(acts, np.array([0, 0, 1]), [2])
