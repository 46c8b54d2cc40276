"""The evaluator's handler on a hand-built "model" whose accuracies are known.

The test set is an embedding set made for the tiny CLIP (random init, seed 0): each
image vector *is* the text embedding of the class we want it predicted as, so which
images are right (and every accuracy, drop and bin) is decided by the test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from clipaudit.embeddings import EmbeddingSetWriter
from clipaudit.errors import FailedPrecondition, InvalidInput, NotFound
from services.evaluator.handler import Evaluator
from services.evaluator.metrics import EvaluatorMetrics

CLASSES = ["cat", "dog", "fox", "owl", "bee", "emu"]
TEMPLATE = "a photo of a {c}."


@pytest.fixture(scope="module")
def tiny():
    from services.evaluator.checkpoints import load_model

    return load_model("clipaudit-tiny")


@pytest.fixture(scope="module")
def text_classifier(tiny):
    import torch

    with torch.no_grad():
        e = tiny.model.encode_text(tiny.tokenizer([TEMPLATE.replace("{c}", c) for c in CLASSES])).float().numpy()
    w = e / np.linalg.norm(e, axis=1, keepdims=True)
    cos = w @ w.T
    assert cos[~np.eye(len(CLASSES), dtype=bool)].max() < 0.9999, "text embeddings too close for a known answer"
    return w


def _plan():
    """60 images: natural (common group) 24/30 right, sketch (counter group) 12/30 right.
    A wrong image is predicted as its partner class (0<->1, 2<->3, 4<->5)."""
    rows = []
    for i in range(60):
        y = i % 6
        natural = i < 30
        j = i if natural else i - 30
        right = j < 24 if natural else j < 12
        rows.append({"key": f"img{i:03d}", "class": CLASSES[y], "class_id": y,
                     "domain": "natural" if natural else "sketch", "group": "common" if natural else "counter",
                     "right": right, "pred": y if right else y ^ 1})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def known_set(tmp_path_factory, tiny, text_classifier):
    root = tmp_path_factory.mktemp("known")
    plan = _plan()
    vectors = text_classifier[plan["pred"].to_numpy()]
    w = EmbeddingSetWriter(root / "emb", model_id=tiny.model_id, dim=tiny.model.text_projection.shape[1],
                           dtype="float32")
    w.write_part("0", vectors, plan[["key", "class", "class_id", "domain", "group"]])
    sim = pd.DataFrame({"key": plan["key"], "nn_similarity": np.where(plan["domain"] == "natural", 0.9, 0.2)})
    sim.to_parquet(root / "sim.parquet")
    # the indexer's `nn` output layout: key, sim, ref_key
    sim.rename(columns={"nn_similarity": "sim"}).assign(ref_key="train-0").astype({"key": "string"}).to_parquet(
        root / "sim_indexer.parquet")
    # a second set with the common group only: counter must report n=0
    only = plan[plan["group"] == "common"]
    w2 = EmbeddingSetWriter(root / "common_only", model_id=tiny.model_id, dim=vectors.shape[1], dtype="float32")
    w2.write_part("0", text_classifier[only["pred"].to_numpy()], only[["key", "class", "class_id", "domain", "group"]])
    return root, plan


def _evaluate(root, out, **spec):
    spec.setdefault("templates", [TEMPLATE])
    spec.setdefault("classnames", CLASSES)
    reg = CollectorRegistry()
    ev = Evaluator(metrics=EvaluatorMetrics(reg))
    ref = ev.evaluate({"checkpoint": "clipaudit-tiny", "test_sets": [str(root / "emb")], "out": str(out), "spec": spec})
    return ref, json.loads((out / "report.json").read_text()), reg


def test_known_accuracies(known_set, text_classifier, tmp_path):
    root, plan = known_set
    ref, rep, reg = _evaluate(root, tmp_path / "r", similarity=str(root / "sim.parquet"), similarity_bins=[0.0, 0.5, 1.0],
                              label_subsets={"pair": ["cat", "dog"]}, family="toy", label="hand-built")
    s = rep["test_sets"][0]
    assert s["n"] == 60 and ref.rows == 60
    assert s["overall"]["top1"] == pytest.approx(36 / 60)
    per_class = plan.groupby("class_id")["right"].mean()
    assert s["overall"]["mean_per_class_recall"] == pytest.approx(per_class.mean())
    cos = text_classifier[plan["pred"].to_numpy()] @ text_classifier.T
    rank = (cos > cos[np.arange(60), plan["class_id"].to_numpy()][:, None]).sum(axis=1)
    assert s["overall"]["top5"] == pytest.approx((rank < 5).mean())
    assert s["breakdowns"]["domain"]["natural"]["top1"] == pytest.approx(0.8)
    assert s["breakdowns"]["domain"]["sketch"]["top1"] == pytest.approx(0.4)
    for c in CLASSES:
        assert s["breakdowns"]["class"][c]["top1"] == pytest.approx(plan[plan["class"] == c]["right"].mean())
    pair = plan[plan["class_id"] < 2]
    assert s["label_subsets"]["pair"]["top1"] == pytest.approx(pair["right"].mean())
    assert s["label_subsets"]["pair"]["n"] == len(pair)
    g = rep["groups"]
    assert g["common"] == {"n": 30, "top1": pytest.approx(0.8)}
    assert g["counter"] == {"n": 30, "top1": pytest.approx(0.4)}
    assert g["drop_points"] == pytest.approx(40.0)
    bins = rep["similarity_bins"]
    assert [b["n"] for b in bins] == [30, 30]
    assert bins[0]["top1"] == pytest.approx(0.4) and bins[1]["top1"] == pytest.approx(0.8)
    assert rep["model"]["family"] == "toy" and rep["model"]["label"] == "hand-built"
    assert rep["schema"] == "clipaudit.evaluator.report/v1"
    html = (tmp_path / "r" / "report.html").read_text()
    assert "data:image/png;base64," in html and "drop (points)" in html
    preds = pd.read_parquet(tmp_path / "r" / "predictions.parquet")
    assert preds["correct"].tolist() == plan["right"].tolist()
    # the predicted class of every image (a confusion matrix needs no re-run)
    assert preds["pred"].tolist() == plan["pred"].tolist()
    assert preds["pred_class"].tolist() == [CLASSES[i] for i in plan["pred"]]
    assert reg.get_sample_value("clipaudit_evaluator_evaluations_total", {"outcome": "ok"}) == 1
    assert reg.get_sample_value("clipaudit_evaluator_images_total") == 60


def test_indexer_similarity_layout_is_read(known_set, tmp_path):
    root, _ = known_set
    _, rep, _ = _evaluate(root, tmp_path, similarity=str(root / "sim_indexer.parquet"), similarity_bins=2)
    bins = rep["similarity_bins"]
    assert [b["n"] for b in bins] == [30, 30]
    assert bins[0]["lo"] == pytest.approx(0.2) and bins[-1]["hi"] == pytest.approx(0.9)
    assert bins[0]["top1"] == pytest.approx(0.4) and bins[1]["top1"] == pytest.approx(0.8)
    assert rep["test_sets"][0]["similarity_found"] == 60


def test_group_with_zero_images_reports_n0(known_set, tmp_path):
    root, _ = known_set
    ev = Evaluator()
    ev.evaluate({"checkpoint": "clipaudit-tiny", "test_sets": [str(root / "common_only")], "out": str(tmp_path),
                 "spec": {"templates": [TEMPLATE], "classnames": CLASSES}})
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["groups"]["counter"] == {"n": 0, "top1": None}
    assert rep["groups"]["drop_points"] is None
    assert rep["test_sets"][0]["breakdowns"]["domain"]["natural"]["top1"] == pytest.approx(0.8)
    assert "n/a" in (tmp_path / "report.html").read_text()


def test_compare_effective_robustness(known_set, tmp_path):
    root, _ = known_set
    refs = []
    for name, fam in [("m1", "toy"), ("m2", "toy"), ("m3", "solo")]:
        ref, _, _ = _evaluate(root, tmp_path / name, family=fam, label=name)
        refs.append(ref.uri)
    ref, cmp = Evaluator().compare(refs, str(tmp_path / "cmp"), space="linear")
    fams = cmp["effective_robustness"]["families"]
    assert fams["toy"]["defined"] is False          # two models at the same common accuracy: no line
    assert fams["solo"]["defined"] is False and fams["solo"]["n_models"] == 1
    rows = [r for r in cmp["rows"] if r["test_set"] == "emb"]
    assert [r["model"] for r in rows] == ["m1", "m2", "m3"]
    assert all(r["drop_points"] == pytest.approx(40.0) for r in rows)
    assert (tmp_path / "cmp" / "comparison.html").read_text().count("data:image/png;base64,") >= 2


@pytest.mark.parametrize("spec, error, match", [
    ({"classnames": ["cat", "dog"]}, InvalidInput, "missing from the class names"),
    ({"templates": ["a photo of something"]}, InvalidInput, "placeholder"),
    ({"label_subsets": {"x": ["cat", "unicorn"]}}, InvalidInput, "unicorn"),
    ({"similarity": "/nonexistent/sim.parquet"}, NotFound, "similarity"),
    ({"no_such_option": 1}, InvalidInput, "no_such_option"),
    ({"mechanistic": {"domains": ["natural", "natural"]}}, InvalidInput, "domains must be distinct"),
    ({"mechanistic": {"domains": ["natural"]}}, InvalidInput, "domains"),
    ({"mechanistic": {"domains": ["natural", "sketch"], "class_subsets": {"held": []}}}, InvalidInput,
     "class subset 'held' must list distinct classes"),
])
def test_bad_specs_are_one_clear_error(known_set, tmp_path, spec, error, match):
    root, _ = known_set
    reg = CollectorRegistry()
    spec = {"templates": [TEMPLATE], "classnames": CLASSES, **spec}
    with pytest.raises(error, match=match):
        Evaluator(metrics=EvaluatorMetrics(reg)).evaluate(
            {"checkpoint": "clipaudit-tiny", "test_sets": [str(root / "emb")], "out": str(tmp_path), "spec": spec})
    assert reg.get_sample_value("clipaudit_evaluator_rejected_total", {"error": error.__name__}) == 1
    assert not (tmp_path / "report.json").exists()


def test_bad_checkpoints_and_locations(known_set, tmp_path):
    root, _ = known_set
    ev = Evaluator()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    base = {"test_sets": [str(root / "emb")], "out": str(tmp_path / "o")}
    with pytest.raises(InvalidInput, match="could not be read"):
        ev.evaluate({**base, "checkpoint": str(junk)})
    with pytest.raises(NotFound):
        ev.evaluate({**base, "checkpoint": f"clipaudit-tiny@{tmp_path / 'missing.pt'}"})
    with pytest.raises(NotFound):
        ev.evaluate({**base, "checkpoint": "clipaudit-tiny", "test_sets": [str(tmp_path / "nowhere")]})
    # an embedding set made by another model is refused, not silently mixed
    with pytest.raises(FailedPrecondition, match="not by the evaluated model"):
        ev.evaluate({**base, "checkpoint": "clipaudit-tiny", "spec": {"seed": 1, "classnames": CLASSES}})
    with pytest.raises(InvalidInput):
        ev.evaluate({**base, "checkpoint": "clipaudit-tiny", "out": ""})
