"""Study configs, statistics, and every study end to end on the tiny preset (embedded):
the report's schema, lineage, verdicts computed from data, and the HTML page."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clipaudit.errors import InvalidInput, NotFound
from clipaudit.studies.config import load_config
from clipaudit.studies.context import paired_difference, proportion
from clipaudit.studies.demo import PRESET_OVERRIDES

TINY = {"data.synth.preset": "tiny", "training.device": "cpu", **PRESET_OVERRIDES["tiny"]}


def test_builtin_configs_validate():
    assert load_config("demo").studies == ["similarity", "domains", "dg_cg", "backgrounds"]
    assert load_config("laion-example").training.model == "ViT-B-32"


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntraining: {sampels: 3}\n")
    with pytest.raises(InvalidInput, match="training.sampels"):
        load_config(bad)
    with pytest.raises(NotFound):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(InvalidInput, match="at least 4"):
        load_config("demo", **{"domains.ratios": [0.0, 0.5]})
    for study in ("domains", "dg_cg"):   # a repeated training seed would count one run twice
        with pytest.raises(InvalidInput, match=f"{study}.training_seeds: .*distinct"):
            load_config("demo", **{f"{study}.training_seeds": [0, 1, 0]})


def test_wilson_interval_known_values():
    r = proportion(50, 100)
    assert r["acc"] == 0.5 and r["ci"][0] == pytest.approx(0.4038, abs=1e-3) and r["ci"][1] == pytest.approx(0.5962, abs=1e-3)
    assert proportion(0, 0) == {"acc": None, "n": 0, "ci": [None, None]}


def test_paired_difference_is_paired():
    keys = [f"k{i}" for i in range(200)]
    a = pd.DataFrame({"test_set": "t", "key": keys, "correct": [True] * 150 + [False] * 50})
    b = pd.DataFrame({"test_set": "t", "key": keys, "correct": [True] * 100 + [False] * 100})
    d = paired_difference(a, b)
    assert d["diff_points"] == pytest.approx(25.0) and d["n"] == 200
    assert d["ci"][0] > 15 and d["ci"][1] < 35


def test_independent_difference_adds_both_variances():
    from clipaudit.studies.context import independent_difference

    d = independent_difference(proportion(60, 100), proportion(30, 100))
    half = 1.96 * 100 * np.sqrt(0.6 * 0.4 / 100 + 0.3 * 0.7 / 100)
    assert d["diff_points"] == pytest.approx(30.0) and d["ci"] == pytest.approx([30.0 - half, 30.0 + half])
    assert independent_difference(proportion(1, 2), proportion(0, 0))["diff_points"] is None


def test_quickdraw_fails_verdict_compares_with_the_lowest_other_domain():
    from clipaudit.studies.dg_cg import _quickdraw_fails_finding

    def row(dom, k, n=400):
        return {"domain": dom, "heldout_classes": proportion(k, n), "natural_only_heldout_classes": proportion(40, n),
                "heldout_per_class": {"star": 0.02, "moon": 0.4}}

    yes = _quickdraw_fails_finding([row("sketch", 200), row("clipart", 160), row("quickdraw", 60)], n_classes=10)
    assert yes["reproduced"] is True and yes["value"] == pytest.approx(25.0) and "clipart" in yes["detail"]
    assert "quickdraw per held-out class: star 2.0%, moon 40.0%" in yes["detail"]
    # quickdraw well above another domain: the opposite; close to it: undetermined
    assert _quickdraw_fails_finding([row("sketch", 60), row("quickdraw", 200)], 10)["reproduced"] is False
    assert _quickdraw_fails_finding([row("sketch", 100), row("quickdraw", 95)], 10)["reproduced"] is None
    assert _quickdraw_fails_finding([row("sketch", 100)], 10) is None
    assert _quickdraw_fails_finding([row("sketch", 100), row("quickdraw", 0, n=0)], 10) is None


def test_direction_is_decided_by_the_interval():
    from clipaudit.studies.context import direction

    assert direction([0.5, 3.0]) is True and direction([-3.0, -0.1]) is False
    assert direction([-0.3, 3.7]) is None and direction([None, None]) is None and direction(None) is None


def test_within_set_slope_ignores_differences_between_test_sets():
    from clipaudit.studies.similarity import within_set_slope

    rng = np.random.default_rng(0)
    rows, sims = [], []
    # set "easy": far from train but accurate; set "hard": close to train but inaccurate. Pooled
    # naively, accuracy *falls* with similarity; within each set it rises.
    for name, base_sim, base_acc in (("easy", 0.5, 0.8), ("hard", 0.9, 0.2)):
        for i in range(400):
            s_ = base_sim + rng.uniform(0, 0.05)
            p = base_acc + (s_ - base_sim) * 4          # +4 accuracy per unit sim = 0.04 per 0.01
            rows.append({"test_set": name, "key": f"{name}{i}", "correct": rng.random() < p})
            sims.append({"key": f"{name}{i}", "sim": s_})
    pred, sim = pd.DataFrame(rows), pd.DataFrame(sims)
    pooled = np.polyfit(sim["sim"], pred["correct"].astype(float), 1)[0]
    assert pooled < 0
    t = within_set_slope(pred, sim, resamples=300)
    assert t["n"] == 800 and t["ci"][0] < 4 < t["ci"][1] and t["ci"][0] > 0


def test_drop_difference_pairs_images_within_groups():
    from types import SimpleNamespace

    from clipaudit.studies.backgrounds import drop_difference

    d = SimpleNamespace(common="test_common", counter="test_counter")
    keys = [f"k{i}" for i in range(100)]
    def frame(common_right, counter_right):
        return pd.DataFrame({"test_set": ["test_common"] * 100 + ["test_counter"] * 100, "key": keys + keys,
                             "correct": [True] * common_right + [False] * (100 - common_right)
                             + [True] * counter_right + [False] * (100 - counter_right)})
    g = drop_difference(frame(80, 20), frame(70, 50), d)     # drops 60 vs 20
    assert g["points"] == pytest.approx(40.0) and 25 < g["ci"][0] < 40 < g["ci"][1] < 55


def test_stratified_near_pruning_keeps_each_domains_share_and_drops_its_nearest():
    from clipaudit.studies.similarity import _stratified_keep

    rng = np.random.default_rng(0)
    domains = ["natural"] * 60 + ["sketch"] * 20 + ["painting"] * 20
    x = pd.DataFrame({"key": [f"k{i:03d}" for i in range(100)], "sim": rng.random(100), "domain": domains,
                      "domain_group": ["natural" if d == "natural" else "rendition" for d in domains]})
    kept = x[x["key"].isin(_stratified_keep(x, 0.5, "near"))]
    assert kept["domain"].value_counts().to_dict() == {"natural": 30, "sketch": 10, "painting": 10}
    for dom, g in x.groupby("domain"):   # near: within each domain the least similar half stays
        assert set(kept[kept["domain"] == dom]["key"]) == set(g.nsmallest(len(g) // 2, "sim")["key"])
    by_group = x[x["key"].isin(_stratified_keep(x, 0.5, "near", by="domain_group"))]
    assert by_group["domain_group"].value_counts().to_dict() == {"natural": 30, "rendition": 20}
    with pytest.raises(InvalidInput, match="'style' label"):
        _stratified_keep(x, 0.5, "near", by="style")


def test_seed_summary_counts_directions_and_renders_every_finding():
    from clipaudit.studies.demo import summarise_seeds
    from clipaudit.studies.report import render_seeds_html

    def report(seed, a, b):
        return {"seed": seed, "timings": {"total_s": 700.0 + seed},
                "findings": [{"study": "s", "claim": "effect A > 0", "reproduced": a > 0, "value": a, "detail": f"A={a}"},
                             {"study": "s", "claim": "effect B > 0", "reproduced": None, "value": b, "detail": f"B={b}"}]}

    summary = summarise_seeds([report(0, 2.0, -1.0), report(1, 4.0, 1.0), report(2, -3.0, 0.0)])
    a, b = summary["findings"]
    assert (a["reproduced_in"], a["seeds"], b["reproduced_in"]) == (2, 3, 0)
    assert a["mean"] == pytest.approx(1.0)
    se = np.std([2.0, 4.0, -3.0], ddof=1) / np.sqrt(3)
    assert a["ci"] == pytest.approx([1.0 - 4.303 * se, 1.0 + 4.303 * se])
    assert [p["seed"] for p in a["per_seed"]] == [0, 1, 2] and a["per_seed"][2]["reproduced"] is False
    page = render_seeds_html(summary)
    assert "effect A &gt; 0" in page and "<b>2/3</b>" in page and "<b>0/3</b>" in page
    assert 'href="seed-2/report.html"' in page and "A=-3.0" in page and "702 s" in page
    assert summary["training_noise"] == [] and "Training noise" not in page
    noisy = report(0, 2.0, -1.0) | {"training_noise": {"summary": "2 runs ... up to 7.5 points", "max_range_points": 7.5,
                                                       "max_range_test": "t", "ood_range_points": 3.0,
                                                       "sets_beyond_image_ci": ["t"], "rows": []}}
    summary = summarise_seeds([noisy, report(1, 4.0, 1.0)])
    assert summary["training_noise"] == [{"seed": 0, "summary": "2 runs ... up to 7.5 points", "max_range_points": 7.5,
                                          "max_range_test": "t", "ood_range_points": 3.0, "sets_beyond_image_ci": ["t"]}]
    assert "seed 0: 2 runs ... up to 7.5 points" in render_seeds_html(summary)


def test_training_noise_measures_the_spread_between_reruns():
    """Two runs on the same images: one set where the rerun is 30 points better (beyond what
    sampling 200 images allows), one where both runs agree; pooled groups and the HTML table."""
    from clipaudit.studies.noise import noise_seeds, summarise
    from clipaudit.studies.report import _noise_html

    def preds(correct_a, correct_b):
        rows = [("test_a", f"a{i}", c) for i, c in enumerate(correct_a)] + \
               [("test_b", f"b{i}", c) for i, c in enumerate(correct_b)]
        return pd.DataFrame(rows, columns=["test_set", "key", "correct"])

    first = preds([1] * 100 + [0] * 100, [1] * 150 + [0] * 50)
    rerun = preds([1] * 160 + [0] * 40, [1] * 150 + [0] * 50)   # test_a: +30 points; test_b: the same images right
    out = summarise({"full": first, "full-t7919": rerun},
                    {"test_a": ["test_a"], "test_b": ["test_b"], "OOD (pooled)": ["test_a", "test_b"]})
    a, b, pooled = out["rows"]
    assert a["acc"]["full"]["acc"] == 0.5 and a["acc"]["full-t7919"]["acc"] == 0.8
    assert a["range_points"] == pytest.approx(30.0) and a["vs_first"]["full-t7919"]["diff_points"] == pytest.approx(30.0)
    assert a["beyond_image_ci"] and not b["beyond_image_ci"] and b["range_points"] == 0.0
    assert pooled["range_points"] == pytest.approx(15.0)
    assert (out["max_range_points"], out["max_range_test"]) == (pytest.approx(30.0), "test_a")
    assert out["ood_range_points"] == pytest.approx(15.0) and out["sets_beyond_image_ci"] == ["test_a"]
    assert "up to 30.0 points on one test set (test_a), 15.0 on the pooled OOD sets" in out["summary"]
    assert "on 1 of 2 test sets" in out["summary"]
    page = _noise_html({"seeds": [0, 7919], **out})
    assert "full-t7919 (seed 7919)" in page and "+30.0 (" in page and page.count('class="no"') == 2   # test_a and the pooled row
    assert noise_seeds(2, 2) == [2 + 7919, 2 + 2 * 7919] and _noise_html(None) == ""


def test_imagenet_style_subset_has_the_asked_common_share():
    from clipaudit.studies.backgrounds import _common_share, _imagenet_style

    nat = pd.DataFrame({"key": [f"k{i:03d}" for i in range(100)],
                        "group": ["common"] * 90 + ["counter"] * 10})
    keys, share = _imagenet_style(nat, 0.5, seed=0)
    assert share == 0.5 and len(keys) == 20 and len(set(keys)) == 20
    assert set(nat.loc[nat["group"] == "counter", "key"]) <= set(keys)       # every counter image is kept
    assert _imagenet_style(nat, 0.5, seed=0)[0] == keys                       # seeded
    assert _imagenet_style(nat, None, seed=0) == (nat["key"].tolist(), 0.9)   # null: the pool as it is
    assert _imagenet_style(nat, 0.95, seed=0)[0] == nat["key"].tolist()       # the pool is already below the share
    assert _common_share(nat.assign(group="none")) is None


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_all_four_studies_end_to_end_tiny(tmp_path):
    from clipaudit.studies.runner import run_study

    cfg = load_config("demo", **TINY)
    report = run_study(cfg, tmp_path / "run")
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    assert data["schema"] == "clipaudit.study-report/1"
    assert set(data["studies"]) == {"similarity", "domains", "dg_cg", "backgrounds"}
    # every verdict is a boolean or undetermined, with the measured detail beside it
    assert data["findings"] and all(f["reproduced"] in (True, False, None) and f["detail"] for f in data["findings"])
    assert {f["study"] for f in data["findings"]} == {"similarity", "domains", "dg_cg", "backgrounds"}
    s1 = data["studies"]["similarity"]
    assert {r["rule"] for r in s1["pruning_sweep"]} >= {"near", "far", "random"}
    assert len({r["keep_fraction"] for r in s1["pruning_sweep"]}) == 3
    assert any(m["name"] == "combined" for m in s1["matched"]["subsets"])
    for m in s1["matched"]["subsets"]:   # what matched pruning took, per domain, adds up to what it removed
        assert sum(r for r, _ in m["removed_by_domain"].values()) == m["removed"]
        assert sum(n for _, n in m["removed_by_domain"].values()) == m["kept"] + m["removed"]
    # the similarity model is its own, longer run (config similarity_model), not the full model
    assert s1["similarity_model"] != data["models"]["full"]["checkpoint"] and s1["similarity_model_samples"] == 512
    assert s1["similarity_model"] == data["models"]["similarity-model"]["checkpoint"]
    assert s1["gallery"] and all(len(g["neighbours"]) == 5 and g["image"] for g in s1["gallery"])
    s2 = data["studies"]["domains"]
    assert len(s2["sweep_a"]) == 4 and len(s2["sweep_b"]) == 4
    # mixture counts are exact: sweep A holds the total fixed
    totals = {sum(r["counts"].values()) for r in s2["sweep_a"]}
    assert len(totals) == 1
    # sweep B holds sweep A's total of natural images fixed; its first run is sweep A's 0% run
    (total,) = totals
    assert {r["counts"]["natural"] for r in s2["sweep_b"]} == {total}
    assert data["models"]["s2-B-k0"]["job_id"] == data["models"]["s2-A-r0"]["job_id"]
    s3 = data["studies"]["dg_cg"]
    sizes = {sum(m["counts"].values()) for m in s3["mixtures"].values()}
    assert len(sizes) == 1, "the four DG/CG mixtures must have equal size"
    # CG high per domain: the test domain's is the study's CG high run, quickdraw's its own, of the same size,
    # without quickdraw's images of the held-out classes
    assert [r["domain"] for r in s3["cg_per_domain"]] == ["sketch", "clipart", "painting", "quickdraw"]
    assert s3["cg_per_domain"][0]["heldout_classes"] == s3["accuracy"]["cg-high"]["D_heldout_classes"]
    assert sum(data["models"]["s3-cg-high-quickdraw"]["resolved_counts"].values()) == s3["size"]
    assert all(set(r["heldout_per_class"]) == set(s3["held_out_classes"]) for r in s3["cg_per_domain"])
    assert any(f["claim"].startswith("quickdraw fails on unseen classes") for f in data["findings"])
    # per held-out class: every mixture's accuracy (the pooled one is a weighted mean of them) and each
    # verdict's difference, also named in the verdict's detail
    pc = s3["per_class"]
    assert pc["classes"] == s3["held_out_classes"] and set(pc["accuracy"]) == set(s3["mixtures"])
    for m, by_class in pc["accuracy"].items():
        pooled = s3["accuracy"][m]["D_heldout_classes"]["acc"]
        assert min(by_class.values()) - 1e-9 <= pooled <= max(by_class.values()) + 1e-9
    cg_effect = pc["effects"]["cg-high - cg-low"]
    assert cg_effect == pytest.approx({c: (pc["accuracy"]["cg-high"][c] - pc["accuracy"]["cg-low"][c]) * 100
                                       for c in pc["classes"]})
    cg_finding = next(f for f in data["findings"] if f["claim"].startswith("more domain diversity helps compositional"))
    assert "per held-out class" in cg_finding["detail"] and f"of {len(pc['classes'])} classes)" in cg_finding["detail"]
    assert "Per held-out class" in (tmp_path / "run" / "report.html").read_text()
    mech = s3["mechanistic"]
    assert len(mech["pairs"]) == 10 and all(p["layers"] for p in mech["pairs"])   # every pair of 5 domains
    # the held-out and the seen classes apart, as the paper's script scores them; the verdict's gap on all
    assert mech["class_subsets"]["held-out"]["classes"] == s3["held_out_classes"]
    assert set(mech["class_subsets"]["seen"]["classes"]).isdisjoint(s3["held_out_classes"])
    gaps = s3["quickdraw_cka_gap"]
    assert set(gaps) == {"all", "held-out", "seen"} and gaps["all"]["n_classes"] == 10
    cka_finding = next(f for f in data["findings"] if f["claim"].startswith("quickdraw shows the lowest"))
    assert cka_finding["value"] == pytest.approx(gaps["all"]["gap"])
    assert "the same gap on the held-out classes alone" in cka_finding["detail"]
    # the demo probes test_domains (backgrounds balanced per class) and reports the test sets' gap beside it
    assert s3["mechanistic_test_sets"] == ["test_domains"]
    assert s3["mechanistic_on_default_test_sets"]["domains"] == mech["domains"]
    assert s3["quickdraw_cka_gap_on_default_test_sets"]["n_classes"] == 10
    assert cka_finding["detail"].startswith("class means of test_domains: ")
    assert "on each domain's test set (test_<domain>) instead: " in cka_finding["detail"]
    s4 = data["studies"]["backgrounds"]
    assert {r["family"] for r in s4["rows"]} == {"CLIP", "supervised"}
    # training noise: the full model rerun with one other training seed, on every standard test set
    noise = data["training_noise"]
    assert noise["seeds"] == [0, 7919] and noise["runs"] == ["full", "full-t7919"]
    assert data["models"]["full-t7919"]["job_id"] != data["models"]["full"]["job_id"]
    assert [r["test"] for r in noise["rows"]][-2:] == ["ID (pooled)", "OOD (pooled)"]
    assert {r["test"] for r in noise["rows"]} >= set(cfg.data.ood_tests) | {cfg.data.common, cfg.data.counter}
    # lineage of subsets: rule, parameters, sizes, hashes
    lin = s2["clean_subsets"]["train-natural"]
    assert lin["rule"] == "domain_filter" and len(lin["keys_sha256"]) == 64 and lin["count"] > 0
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count('class="plot"') >= 9   # the papers' figures: 3 + 3 + 2 + 1 (several with 2 panels)
    # every plot is a real PNG, and the page renders in headless Chromium (not blank)
    import base64
    import io
    import re

    from PIL import Image

    from tests.unit.test_evaluator_report_browser import _screenshot

    plots = re.findall(r'class="plot" src="data:image/png;base64,([^"]+)"', page)
    assert len(plots) >= 9 and all(Image.open(io.BytesIO(base64.b64decode(p))).size[0] > 300 for p in plots)
    shot = _screenshot(tmp_path / "run" / "report.html", tmp_path)
    assert shot.var() > 200 and (shot < 200).mean() > 0.02
    # a re-run skips every step (resume)
    again = run_study(cfg, tmp_path / "run")
    assert again["findings"] == report["findings"]
    assert all(s["cached"] for s in again["timings"]["steps"])
    assert again["reused_from_other_code"] == []      # same code: nothing to warn about
    with pytest.raises(InvalidInput, match="cg_domains"):
        run_study(load_config("demo", **TINY, studies=["dg_cg"], **{"dg_cg.cg_domains": ["sketch", "infograph"]}),
                  tmp_path / "run")
    with pytest.raises(InvalidInput, match=r"mechanistic_test_sets \['test_infograph'\] are not splits"):
        run_study(load_config("demo", **TINY, studies=["dg_cg"],
                              **{"dg_cg.mechanistic_test_sets": ["test_domains", "test_infograph"]}), tmp_path / "run")
    with pytest.raises(InvalidInput, match=r"mechanistic_domains \['clipart', 'painting', 'quickdraw'\] have no images"):
        run_study(load_config("demo", **TINY, studies=["dg_cg"],
                              **{"dg_cg.mechanistic_test_sets": ["test_sketch"]}), tmp_path / "run")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_command_tiny_preset_two_seeds(tmp_path, capsys):
    """`clipaudit demo --preset tiny` runs the smoke-test budget, and --seeds writes the summary."""
    from clipaudit.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--seeds", "2", "--study", "backgrounds", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "smoke-test budget (384 training samples per run)" in printed
    for seed in (0, 1):
        rep = json.loads((out / f"seed-{seed}" / "report.json").read_text())
        assert rep["seed"] == seed and rep["config"]["training"]["samples"] == 384
        assert rep["collection"]["preset"] == "tiny" and list(rep["studies"]) == ["backgrounds"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["findings"]
    assert all(f["seeds"] == 2 for f in summary["findings"])
    assert (out / "summary.html").read_text().count('href="seed-') >= 2


def test_a_step_reused_from_other_code_is_flagged_not_silently_passed_off(tmp_path, monkeypatch):
    from io import StringIO

    from rich.console import Console

    from clipaudit.studies import workspace
    from clipaudit.studies.workspace import Workspace, code_fingerprint

    assert len(code_fingerprint()) == 16 and code_fingerprint() == code_fingerprint()
    calls = []

    def run(ws):
        return ws.step("evaluate/x", lambda: calls.append(1) or {"acc": 0.5}, inputs={"model": "m"})

    first = Workspace(tmp_path, console=Console(file=StringIO()))
    assert run(first) == {"acc": 0.5} and first.reused_from_other_code() == []
    same = Workspace(tmp_path, console=Console(file=StringIO()))
    assert run(same) == {"acc": 0.5} and same.reused_from_other_code() == [] and calls == [1]
    # an upgrade: the inputs still decide reuse, but the step says whose numbers they are
    monkeypatch.setattr(workspace, "code_fingerprint", lambda: "another-version")
    out = StringIO()
    later = Workspace(tmp_path, console=Console(file=out, width=200))
    assert run(later) == {"acc": 0.5} and calls == [1]
    assert later.reused_from_other_code() == ["evaluate/x"] and later.records[0].other_code
    assert "done before by other code, reused" in out.getvalue()


def test_jackknife_interval_of_a_mean_is_the_standard_error():
    from clipaudit.studies.context import jackknife_interval

    vals = np.array([0.3, 0.1, 0.5, 0.2, 0.4, 0.9])
    loo = [float(np.delete(vals, i).mean()) for i in range(len(vals))]
    se, ci = jackknife_interval(float(vals.mean()), loo)
    # for the mean the jackknife standard error is exactly s / sqrt(n)
    assert se == pytest.approx(vals.std(ddof=1) / np.sqrt(len(vals)), rel=1e-12)
    assert ci == pytest.approx([vals.mean() - 1.96 * se, vals.mean() + 1.96 * se])
    assert jackknife_interval(0.5, [0.4]) == (None, [None, None])
    assert jackknife_interval(0.5, [0.4, None, 0.6]) == (None, [None, None])     # a gap is not dropped
    assert jackknife_interval(None, [0.4, 0.6]) == (None, [None, None])


def _mech_with_loo(values: dict, loo: dict, classes: list[str]) -> dict:
    """A mechanistic section with one layer per pair: ``values`` pair -> CKA, ``loo`` pair ->
    the leave-one-class-out CKAs (a list as long as ``classes``)."""
    domains = list(dict.fromkeys(d for pair in values for d in pair))
    return {"domains": domains, "pairs": [
        {"domains": list(pair), "classes": classes,
         "layers": [{"layer": "l0", "cka_linear": v, "cka_linear_leave_one_out": loo[pair]}]}
        for pair, v in values.items()]}


def test_quickdraw_cka_verdict_reads_the_gap_with_a_jackknife_interval_over_classes():
    from clipaudit.studies.dg_cg import _quickdraw_cka_finding, quickdraw_cka_gap

    classes = [f"c{i}" for i in range(6)]
    pairs = [("natural", "sketch"), ("natural", "quickdraw"), ("sketch", "quickdraw")]

    def mech(values, spread):
        # quickdraw's pairs' leave-one-out values scatter by +-spread around their full value
        return _mech_with_loo(dict(zip(pairs, values)),
                              {p: [v + (spread * (-1) ** i if "quickdraw" in p else 0.0) for i in range(len(classes))]
                               for p, v in zip(pairs, values)}, classes)

    # quickdraw: (0.1 + 0.2) / 2 = 0.15; natural (0.7 + 0.1) / 2 = 0.4; sketch (0.7 + 0.2) / 2 = 0.45
    g = quickdraw_cka_gap(mech([0.7, 0.1, 0.2], 0.01))
    assert g["gap"] == pytest.approx(0.25) and g["next_lowest"] == "natural" and g["n_classes"] == 6
    assert g["ci"][0] > 0
    f = _quickdraw_cka_finding(mech([0.7, 0.1, 0.2], 0.01))
    assert f["reproduced"] is True and f["value"] == pytest.approx(0.25)
    assert "the lowest other domain (natural) minus quickdraw: +0.25 linear CKA" in f["detail"]
    assert "jackknife interval over the 6 classes" in f["detail"]
    # the same gap, but one class moves every CKA by 0.5: the data cannot decide
    assert _quickdraw_cka_finding(mech([0.7, 0.1, 0.2], 0.5))["reproduced"] is None
    # quickdraw clearly above another domain: the opposite
    assert _quickdraw_cka_finding(mech([0.1, 0.7, 0.6], 0.01))["reproduced"] is False
    # no leave-one-out values (an evaluator before them, or too few classes): no interval, no verdict
    bare = mech([0.7, 0.1, 0.2], 0.01)
    for p in bare["pairs"]:
        p["layers"][0]["cka_linear_leave_one_out"] = []
    f = _quickdraw_cka_finding(bare)
    assert f["reproduced"] is None and "no interval" in f["detail"] and f["value"] == pytest.approx(0.25)
    assert _quickdraw_cka_finding(_mech_with_loo({("natural", "sketch"): 0.5}, {("natural", "sketch"): []},
                                                 classes)) is None
    # class subsets are reported beside the verdict, never instead of it
    m = mech([0.7, 0.1, 0.2], 0.01)
    m["class_subsets"] = {"held-out": {"classes": classes[:5], "pairs": mech([0.2, 0.6, 0.6], 0.01)["pairs"]},
                          "seen": {"classes": classes[5:], "pairs": [
                              {"domains": list(p), "layers": [], "undefined": "needs at least 4 classes"} for p in pairs]}}
    f = _quickdraw_cka_finding(m)
    assert f["reproduced"] is True and f["value"] == pytest.approx(0.25)
    assert "the same gap on the held-out classes alone: -0.20 (" in f["detail"]
    assert "on the seen classes alone: undefined (too few classes)" in f["detail"]
    assert "test_<domain>" not in f["detail"] and "class means of" not in f["detail"]
    # another probe's gap (the default test sets) is reported beside the verdict, never instead of it
    f = _quickdraw_cka_finding(mech([0.7, 0.1, 0.2], 0.01), mech([0.1, 0.7, 0.6], 0.01), ["probe"])
    assert f["reproduced"] is True and f["value"] == pytest.approx(0.25)
    assert f["detail"].startswith("class means of probe: the lowest other domain (natural)")
    assert "on each domain's test set (test_<domain>) instead: -0.30 (" in f["detail"]


def test_mean_cka_per_domain_averages_each_domains_pairs():
    from clipaudit.studies.dg_cg import mean_cka_per_domain

    def pair(a, b, *vals):
        return {"domains": [a, b], "layers": [{"layer": f"l{i}", "cka_linear": v} for i, v in enumerate(vals)]}

    mech = {"domains": ["natural", "sketch", "quickdraw"],
            "pairs": [pair("natural", "sketch", 0.6, 0.8), pair("natural", "quickdraw", 0.1, 0.1),
                      pair("sketch", "quickdraw", 0.2, 0.4)]}
    got = mean_cka_per_domain(mech)
    assert got == pytest.approx({"natural": (0.7 + 0.1) / 2, "sketch": (0.7 + 0.3) / 2, "quickdraw": (0.1 + 0.3) / 2})
    assert min(got, key=got.get) == "quickdraw"
    # an undefined pair (too few shared classes) would bias its domains' means: no verdict then
    mech["pairs"][2] = {"domains": ["sketch", "quickdraw"], "layers": [], "undefined": "needs at least 4 classes"}
    assert mean_cka_per_domain(mech) == {} and mean_cka_per_domain(None) == {}


def test_replicated_effect_is_decided_over_training_seeds():
    from clipaudit.studies.context import direction, over_replicates, t_interval

    assert t_interval([]) == (None, [None, None]) and t_interval([2.0]) == (2.0, [None, None])
    mean, ci = t_interval([1.0, 2.0, 6.0])
    se = np.std([1.0, 2.0, 6.0], ddof=1) / np.sqrt(3)
    assert mean == pytest.approx(3.0) and ci == pytest.approx([3.0 - 4.303 * se, 3.0 + 4.303 * se])
    assert t_interval([1.0] * 12)[1] == [1.0, 1.0]          # no spread, no width, whatever the table row
    one = {"diff_points": 8.0, "ci": [5.0, 11.0], "n": 500}
    assert over_replicates([one]) == {**one, "replicates": [8.0]}   # one run: its own interval over images
    # three runs whose image intervals each exclude zero but disagree in sign: the verdict is open
    runs = [one, {"diff_points": -10.0, "ci": [-13.0, -7.0], "n": 500}, {"diff_points": 13.0, "ci": [10.0, 16.0], "n": 500}]
    got = over_replicates(runs)
    assert got["diff_points"] == pytest.approx(11.0 / 3) and got["replicates"] == [8.0, -10.0, 13.0]
    assert direction(got["ci"]) is None and got["n"] == 500
    assert over_replicates([one, {"diff_points": None, "ci": [None, None], "n": 0}])["diff_points"] is None


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dg_cg_with_training_seeds_trains_every_mixture_per_seed(tmp_path):
    from clipaudit.studies.runner import run_study

    cfg = load_config("demo", **TINY, studies=["dg_cg"], **{"dg_cg.training_seeds": [0, 1],
                                                           "dg_cg.mechanistic_domains": ["natural", "sketch"]})
    report = run_study(cfg, tmp_path / "run")
    s3 = report["studies"]["dg_cg"]
    assert s3["training_seeds"] == [0, 1]
    # every mixture holds dg_cg.size images (fewer than the pool's natural ones), renditions as without a size
    size = TINY["dg_cg.size"]
    assert s3["size"] == size and all(sum(m["counts"].values()) == size for m in s3["mixtures"].values())
    assert s3["renditions_per_mixture"]["natural-only"] == 0 and s3["renditions_per_mixture"]["cg-high"] > 0
    mixtures = ["natural-only", "leave-out-domain", "cg-low", "cg-high", "seen-in-domain"]
    assert list(s3["replicates"]) == mixtures and all(len(v) == 2 for v in s3["replicates"].values())
    trained = {s["name"] for s in report["timings"]["steps"] if s["name"].startswith("train/")}
    assert {f"train/s3-{m}" for m in mixtures} | {f"train/s3-{m}-t1" for m in mixtures} <= trained
    # the first seed's numbers are the one-seed study's: its table, and the first replicate
    assert [r[0] for r in s3["replicates"].values()] == [s3["accuracy"][m]["D_heldout_classes"]["acc"] for m in mixtures]
    dg = next(f for f in report["findings"] if "domain generalisation" in f["claim"])
    r = s3["replicates"]
    per_seed = [(r["leave-out-domain"][i] - r["natural-only"][i]) * 100 for i in range(2)]
    assert dg["value"] == pytest.approx(np.mean(per_seed))
    assert "t-interval over 2 training seeds" in dg["detail"]
    claims = [f["claim"] for f in report["findings"]]
    assert sum("domain generalisation" in c or "compositional" in c for c in claims) == 3   # DG, CG, CG weaker than DG
    weaker = next(f for f in report["findings"] if f["claim"].startswith("compositional generalisation is weaker"))
    assert weaker["value"] == pytest.approx(np.mean([(r["leave-out-domain"][i] - r["cg-low"][i]) * 100 for i in range(2)]))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sweep_b_with_training_seeds_decides_its_first_step_over_seeds(tmp_path):
    from clipaudit.studies.runner import run_study

    cfg = load_config("demo", **TINY, studies=["domains"], **{"domains.training_seeds": [0, 3]})
    report = run_study(cfg, tmp_path / "run")
    s2, models = report["studies"]["domains"], report["models"]
    assert s2["training_seeds"] == [0, 3]
    rows = s2["sweep_b"]
    # every sweep B mixture once more with the second seed: same data, another run
    for r in rows:
        again = models[f"{r['name']}-t3"]
        assert again["job_id"] != models[r["name"]]["job_id"] and again["resolved_counts"] == r["counts"]
        assert len(r["rendition_by_seed"]) == 2
        assert r["rendition_by_seed"][0] == r["accuracy"]["standard"]["rendition"]["acc"]
    # the first seed is the study's own: its k=0 run is still sweep A's 0% run; sweep A is not replicated
    assert models["s2-B-k0"]["job_id"] == models["s2-A-r0"]["job_id"]
    assert not any(n.startswith("s2-A-") and n.endswith("-t3") for n in models)
    # the verdict is the mean first-step gain over the two seeds, with a t-interval over them
    gain = next(f for f in report["findings"] if f["claim"].startswith("a few renditions give a large gain"))
    per_seed = [(rows[1]["rendition_by_seed"][i] - rows[0]["rendition_by_seed"][i]) * 100 for i in range(2)]
    assert gain["value"] == pytest.approx(np.mean(per_seed))
    assert "t-interval over 2 training seeds" in gain["detail"]


def test_class_folds_hold_out_the_complement_and_reject_what_they_cannot_fold():
    from clipaudit.studies.dg_cg import class_folds

    classes = ["a", "b", "c", "d"]
    assert class_folds(["b", "d"], classes, 1) == [["b", "d"]]
    assert class_folds(["b", "d"], classes, 2) == [["b", "d"], ["a", "c"]]
    with pytest.raises(InvalidInput, match="not classes of the collection"):
        class_folds(["b", "zebra"], classes, 2)
    with pytest.raises(InvalidInput, match="needs classes outside"):
        class_folds(classes, classes, 2)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dg_cg_with_two_class_folds_pools_every_class_of_the_test_domain(tmp_path):
    from clipaudit.studies.runner import run_study
    from clipaudit.synth.collection import Collection

    cfg = load_config("demo", **TINY, studies=["dg_cg"], **{"dg_cg.class_folds": 2,
                                                           "dg_cg.mechanistic_domains": ["natural", "sketch"]})
    report = run_study(cfg, tmp_path / "run")
    s3, models = report["studies"]["dg_cg"], report["models"]
    first, second = s3["class_folds"]
    classes = Collection.load(report["collection"]["location"]).classes
    assert first == s3["held_out_classes"] and sorted(first + second) == sorted(classes) and not set(first) & set(second)
    # the second fold trains its own CG runs; natural-only and leave-out-domain do not depend on the
    # held-out classes, so both folds share those two runs
    for m in ["cg-low", "cg-high", "seen-in-domain", "cg-high-quickdraw"]:
        assert f"s3-{m}-f1" in models and models[f"s3-{m}-f1"]["job_id"] != models[f"s3-{m}"]["job_id"]
    for m in ["natural-only", "leave-out-domain"]:
        assert models[f"s3-{m}-f1"]["job_id"] == models[f"s3-{m}"]["job_id"]
    # with every class held out once, each verdict is paired over every image of the test domain
    n_sketch = report["collection"]["splits"]["test_sketch"]
    for claim in ("more domain diversity helps domain generalisation", "more domain diversity helps compositional",
                  "compositional generalisation is weaker", "generalising to unseen classes"):
        f = next(f for f in report["findings"] if f["claim"].startswith(claim))
        assert f"n={n_sketch})" in f["detail"] and "2 class folds pooled" in f["detail"], f["detail"]
    # the second fold's subsets have their own lineage, holding out its classes
    assert s3["manifests"]["d_minus_c-f1"]["parameters"]["without_classes"] == second
    qd = next(r for r in s3["cg_per_domain"] if r["domain"] == "quickdraw")
    assert set(qd["heldout_per_class"]) == set(first) | set(second)
    assert s3["per_class"]["classes"] == first + second
    assert qd["heldout_classes"]["n"] == report["collection"]["splits"]["test_quickdraw"]
