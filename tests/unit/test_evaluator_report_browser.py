"""The HTML report renders in a real headless Chromium and is not blank.

Fails (never skips) when chromium is missing: `make test` installs it."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from services.evaluator.report import render_comparison_html, render_report_html

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _report() -> dict:
    def acc(n, t):
        if n == 0:
            return {"n": 0, "top1": None, "top5": None, "mean_per_class_recall": None, "classes": 0}
        return {"n": n, "top1": t, "top5": min(1.0, t + 0.2), "mean_per_class_recall": t, "classes": 5}

    sets = []
    for name, t in [("test_natural", 0.8), ("test_sketch", 0.45)]:
        sets.append({"name": name, "location": f"/x/{name}", "classes": list("abcde"), "n": 40, "skipped": 0,
                     "templates": "openai_imagenet", "n_templates": 80, "overall": acc(40, t),
                     "breakdowns": {"domain": {name[5:]: acc(40, t)}, "group": {"common": acc(30, t), "counter": acc(0, None)}},
                     "label_subsets": {"held": {**acc(12, t - 0.1), "class_names": ["a", "b"]}},
                     "one_vs_k": [{"k": 3, "n": 40, "top1": t}], "groups": None,
                     "similarity_bins": None})
    bins = [{"lo": float(lo), "hi": float(lo + 0.1), "n": 10, "top1": float(lo)} for lo in np.arange(0.3, 0.9, 0.1)]
    layers = [{"layer": f"layer{i}", "units": 64, "cka_linear": 0.9 - 0.1 * i, "cka_rbf": 0.8 - 0.1 * i,
               "neuron_sharing": 0.5} for i in range(1, 5)]
    return {"schema": "clipaudit.evaluator.report/v1", "created": "2026-01-01T00:00:00+00:00", "n": 80,
            "model": {"checkpoint": "clipaudit-tiny", "model_id": "clipaudit-tiny@init0", "kind": "clip",
                      "arch": "clipaudit-tiny", "family": "clip", "label": "tiny"},
            "spec": {}, "test_sets": sets,
            "groups": {"common": {"n": 30, "top1": 0.8}, "counter": {"n": 25, "top1": 0.5}, "drop_points": 30.0},
            "similarity_bins": bins,
            "mechanistic": {"column": "domain", "domains": ["natural", "sketch"], "neuron_sharing_rule": "top 10%",
                            "pairs": [{"domains": ["natural", "sketch"], "classes": list("abcde"),
                                       "n": {"natural": 40, "sketch": 40}, "layers": layers}]}}


def _screenshot(html_path, tmp_path) -> np.ndarray:
    from PIL import Image

    assert os.path.exists(CHROMIUM), "chromium is not installed (make tools installs it)"
    png = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1280,2000",
           f"file://{html_path}"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, capture_output=True, timeout=180, env=env)
    assert png.exists(), f"no screenshot; chromium said: {proc.stderr.decode(errors='replace')[-800:]}"
    return np.asarray(Image.open(png).convert("L"), dtype=np.float64)


@pytest.mark.browser
def test_report_renders_in_chromium(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_report_html(_report()))
    assert "Mechanistic similarity: natural vs sketch" in page.read_text()   # one section per domain pair
    img = _screenshot(page, tmp_path)
    assert img.shape[1] == 1280
    assert img.var() > 200, "screenshot is blank"
    # plots are drawn (not just text): a good share of the page is non-white
    assert (img < 200).mean() > 0.02
    # the page continues below the fold: the lower half has content too (images loaded)
    assert img[1000:].var() > 100


@pytest.mark.browser
def test_comparison_renders_in_chromium(tmp_path):
    rows = [{"model": m, "family": f, "kind": "clip", "test_set": s, "n": 40, "top1": t, "top5": t,
             "mean_per_class_recall": t, "common": c, "counter": k, "drop_points": 100 * (c - k)}
            for m, f, c, k in [("a", "clip", 0.8, 0.5), ("b", "clip", 0.6, 0.35), ("r", "supervised", 0.7, 0.6)]
            for s, t in [("test_natural", 0.7)]]
    from services.evaluator.logic import effective_robustness
    import pandas as pd

    er = effective_robustness(pd.DataFrame([{k: r[k] for k in ("model", "family", "common", "counter")} for r in rows]))
    page = tmp_path / "comparison.html"
    page.write_text(render_comparison_html({"rows": rows, "effective_robustness": er}, [{}, {}, {}]))
    img = _screenshot(page, tmp_path)
    assert img.var() > 200
