"""Pure logic of the domain classifier against hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipaudit.errors import FailedPrecondition, InvalidInput
from services.classifier import logic


# -- threshold selection against a hand-computed precision curve ----------------------------

SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
LABELS = np.array([1, 1, 0, 1, 0, 0], bool)
# rule "positive iff score >= t":  t=0.9: 1/1  0.8: 2/2  0.7: 2/3  0.6: 3/4  0.5: 3/5  0.4: 3/6


def test_precision_curve_matches_hand_computation():
    t, prec, rec, k = logic.precision_curve(SCORES, LABELS)
    assert t.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert np.allclose(prec, [1, 1, 2 / 3, 3 / 4, 3 / 5, 3 / 6])
    assert np.allclose(rec, [1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert k.tolist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("target, threshold, precision, recall", [
    (0.75, 0.6, 0.75, 1.0),        # the smallest threshold with precision >= 0.75 (not 0.8, not 0.9)
    (0.70, 0.6, 0.75, 1.0),
    (0.95, 0.8, 1.0, 2 / 3),       # 0.6 gives only 0.75
    (0.55, 0.5, 0.6, 1.0),
    (0.5, 0.4, 0.5, 1.0),
])
def test_select_threshold_picks_the_smallest_threshold_meeting_the_target(target, threshold, precision, recall):
    ch = logic.select_threshold(SCORES, LABELS, target, min_threshold=0.0)
    assert ch.reachable
    assert (ch.threshold, ch.precision) == (threshold, pytest.approx(precision))
    assert ch.recall == pytest.approx(recall)


def test_tied_scores_are_one_threshold():
    scores = np.array([0.9, 0.7, 0.7, 0.7, 0.2])
    labels = np.array([1, 1, 0, 1, 0], bool)
    # t=0.9: 1/1; t=0.7: (1+2)/4 = 0.75 (the three tied rows go in together); t=0.2: 3/5
    ch = logic.select_threshold(scores, labels, 0.7, min_threshold=0.0)
    assert (ch.threshold, ch.precision, ch.predicted_positive) == (0.7, 0.75, 4)
    ch = logic.select_threshold(scores, labels, 0.8, min_threshold=0.0)
    assert (ch.threshold, ch.precision, ch.predicted_positive) == (0.9, 1.0, 1)


def test_unreachable_target_reports_the_best_reachable():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([0, 1, 1, 0], bool)
    # t=0.9: 0/1  0.8: 1/2  0.7: 2/3  0.6: 2/4 -> best 2/3 at 0.7
    ch = logic.select_threshold(scores, labels, 0.9, min_threshold=0.0)
    assert not ch.reachable
    assert ch.threshold == 0.7 and ch.precision == pytest.approx(2 / 3)


def test_min_threshold_keeps_thresholds_out_of_the_other_class():
    # without the floor, target 0.5 is met at t=0.4 (precision 3/6); with the default
    # floor 0.5 only t in {0.9 .. 0.5} are candidates: smallest meeting 0.5 is 0.5 (3/5)
    assert logic.select_threshold(SCORES, LABELS, 0.5, min_threshold=0.0).threshold == 0.4
    ch = logic.select_threshold(SCORES, LABELS, 0.5)
    assert (ch.threshold, ch.precision) == (0.5, pytest.approx(0.6))
    ch = logic.select_threshold(SCORES, LABELS, 0.5, min_threshold=0.95)   # no score reaches the floor
    assert not ch.reachable and ch.threshold == 0.95 and ch.predicted_positive == 0


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan")])
def test_target_precision_outside_unit_interval_is_refused(bad):
    with pytest.raises(InvalidInput):
        logic.select_threshold(SCORES, LABELS, bad)
    with pytest.raises(InvalidInput):
        logic.check_threshold(bad)


# -- decisions -------------------------------------------------------------------------------

def test_decide_is_ambiguous_only_when_no_head_passes():
    scores = np.array([[0.9, 0.1], [0.4, 0.3], [0.8, 0.85], [0.2, 0.7]], np.float32)
    d = logic.decide(scores, np.array([0.6, 0.6]))
    assert d.tolist() == [0, logic.AMBIGUOUS, 1, 1]   # both pass -> the higher score


def test_decision_rates():
    d = np.array([0, 0, 1, -1, 1, 0])
    y = np.array([0, 1, 1, 1, 0, 0])
    r = logic.decision_rates(d, y, 2)
    assert r[0]["precision"] == pytest.approx(2 / 3) and r[0]["recall"] == pytest.approx(2 / 3)
    assert r[0]["false_positive_rate"] == pytest.approx(1 / 3)
    assert r[1]["recall"] == pytest.approx(1 / 3) and r[1]["ambiguous_share"] == pytest.approx(1 / 3)


# -- labels ----------------------------------------------------------------------------------

def test_two_classes_with_natural_map_every_style_to_the_other_class():
    y, mapping = logic.map_labels(["natural", "sketch", "clipart", "natural", "quickdraw"], ["natural", "rendition"])
    assert y.tolist() == [0, 1, 1, 0, 1]
    assert mapping == {"natural": "natural", "sketch": "rendition", "clipart": "rendition", "quickdraw": "rendition"}


def test_unknown_values_are_an_error_without_the_natural_rule():
    with pytest.raises(InvalidInput, match="not among the classes"):
        logic.map_labels(["sketch", "painting", "photo"], ["sketch", "painting"])
    with pytest.raises(InvalidInput, match="not among the classes"):
        logic.map_labels(["natural", "sketch", "x"], ["natural", "sketch", "painting"])


def test_one_class_only_is_refused():
    with pytest.raises(InvalidInput, match="no example of class"):
        logic.map_labels(["natural"] * 10, ["natural", "rendition"])
    with pytest.raises(InvalidInput):
        logic.map_labels(["a", "b"], ["natural"])


def test_split_is_seeded_stratified_75_125_125():
    y = np.array([0] * 800 + [1] * 200)
    a = logic.stratified_split(y, seed=3)
    b = logic.stratified_split(y, seed=3)
    c = logic.stratified_split(y, seed=4)
    assert all((p == q).all() for p, q in zip(a, b)) and not (a[0] == c[0]).all()
    tr, va, te = a
    assert (len(tr), len(va), len(te)) == (750, 125, 125)
    assert len(set(tr) | set(va) | set(te)) == 1000
    assert (y[va] == 1).sum() == 25 and (y[te] == 1).sum() == 25


def test_nan_vectors_are_refused():
    x = np.ones((3, 4), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        logic.check_embeddings(x)


# -- shares ----------------------------------------------------------------------------------

def test_wilson_interval_known_values():
    lo, hi = logic.wilson_interval(5, 100)          # textbook: 0.0215 .. 0.1118
    assert (round(lo, 4), round(hi, 4)) == (0.0215, 0.1118)
    lo, hi = logic.wilson_interval(0, 20)           # 0 .. 0.1611
    assert lo == 0 and round(hi, 4) == 0.1611
    assert logic.wilson_interval(0, 0) == (0.0, 1.0)


def test_rogan_gladen_inverts_the_observation_model():
    pi, sens, fpr = 0.05, 0.9, 0.02
    observed = pi * sens + (1 - pi) * fpr
    assert logic.rogan_gladen(observed, sens, fpr) == pytest.approx(pi)
    assert logic.rogan_gladen(0.5, 0.3, 0.3) is None        # a chance-level classifier corrects nothing
    s = logic.share_of(int(observed * 100000), 100000, {"recall": sens, "false_positive_rate": fpr,
                                                        "support": 5000, "negatives": 5000})
    assert s.corrected == pytest.approx(pi, abs=1e-4)
    assert s.corrected_ci95[0] < pi < s.corrected_ci95[1]


# -- heads -----------------------------------------------------------------------------------

def _clusters(n, seed, noise=0.3, dim=16):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.eye(dim, dtype=np.float32)[y] + rng.normal(0, noise, (n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_heads_learn_separable_domains_deterministically(kind):
    x, y = _clusters(300, 0)
    h1 = logic.fit_heads(x, y, 2, kind=kind, seed=1, steps=150)
    h2 = logic.fit_heads(x, y, 2, kind=kind, seed=1, steps=150)
    for k in h1.weights:
        assert np.array_equal(h1.weights[k], h2.weights[k])
    xt, yt = _clusters(400, 1)
    s = h1.scores(xt)
    assert ((s[:, 1] > s[:, 0]) == (yt == 1)).mean() > 0.97
    # round trip through plain lists
    h3 = logic.DomainHeads.from_lists(kind, h1.to_lists())
    assert np.array_equal(h3.scores(xt), s)


def test_scores_stream_in_blocks_like_one_pass():
    x, y = _clusters(300, 2)
    h = logic.fit_heads(x, y, 2, seed=0)
    assert np.allclose(h.scores(x.astype(np.float16), block_rows=7), h.scores(x.astype(np.float16)), atol=1e-6)


def test_zero_shot_labels_follow_the_prompt_prototypes():
    x, y = _clusters(500, 3, noise=0.2)
    dim = x.shape[1]
    nat = np.tile(np.eye(dim, dtype=np.float32)[0], (3, 1))
    ren = np.tile(np.eye(dim, dtype=np.float32)[1], (4, 1))
    zs = logic.zero_shot_labels(x, [nat, ren], keep_fraction=0.5)
    assert (zs.labels == y[zs.indices]).mean() > 0.99
    assert len(zs.indices) == pytest.approx(250, abs=2)
    both = np.tile((np.eye(dim, dtype=np.float32)[0] + np.eye(dim, dtype=np.float32)[1]) / math.sqrt(2), (2, 1))
    neither = -both[:1]   # every row is nearer to `both` than to its opposite
    with pytest.raises(FailedPrecondition, match="one class"):
        logic.zero_shot_labels(x, [both, neither], keep_fraction=0.5)
