"""`clipaudit evaluate` / `clipaudit compare` on real WebDataset shards of the synthetic
collection: a CLIP checkpoint (trainer format), a supervised timm classifier whose
predictions are recomputed here as an oracle, mechanistic similarity, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipaudit.cli import main


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from clipaudit.synth import generate

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate("tiny", str(out), seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory):
    import torch

    from clipaudit.models import load_clip

    m = load_clip("clipaudit-tiny", seed=3)
    p = tmp_path_factory.mktemp("ckpt") / "clip.pt"
    torch.save({"model": m.model.state_dict(), "arch": "clipaudit-tiny", "step": 7}, p)
    return p


@pytest.fixture(scope="module")
def supervised_ckpt(tmp_path_factory, collection):
    import timm
    import torch

    classes = json.loads((collection / "collection.json").read_text())["classes"]
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(classes))
    p = tmp_path_factory.mktemp("ckpt") / "sup.pt"
    torch.save({"model": model.state_dict(), "arch": "test_resnet", "classes": classes, "kind": "supervised",
                "image_size": 32}, p)
    return p, model, classes


def test_evaluate_clip_checkpoint_with_mechanistic_similarity(collection, clip_ckpt, tmp_path, capsys):
    tests = ",".join(str(collection / s) for s in ("test_natural", "test_sketch", "test_common", "test_counter"))
    rc = main(["evaluate", "--checkpoint", str(clip_ckpt), "--test", tests, "--mechanistic", "natural,sketch,painting",
               "--mechanistic-classes", "four=circle,square,triangle,star",
               "--mechanistic-classes", "two=circle,square",
               "--subset", "held=circle,square,triangle", "--one-vs-k", "5", "--templates", "a photo of a {c}.",
               "--out", str(tmp_path / "rep"), "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert printed["images"] == rep["n"] == 160
    assert rep["model"]["kind"] == "clip" and rep["model"]["arch"] == "clipaudit-tiny"
    assert rep["model"]["model_id"].startswith("clipaudit-tiny@") and "init" not in rep["model"]["model_id"]
    names = [s["name"] for s in rep["test_sets"]]
    assert names == ["test_natural", "test_sketch", "test_common", "test_counter"]
    for s in rep["test_sets"]:
        assert s["n"] == 40 and s["n_templates"] == 1 and len(s["classes"]) == 10
        assert 0.0 <= s["overall"]["top1"] <= s["overall"]["top5"] <= 1.0
        assert sum(v["n"] for v in s["breakdowns"]["class"].values()) == 40
    g = rep["groups"]
    assert g["common"]["n"] + g["counter"]["n"] == sum(
        v["n"] for s in rep["test_sets"] for k, v in s["breakdowns"]["group"].items() if k in ("common", "counter"))
    mech = rep["mechanistic"]
    assert [p["domains"] for p in mech["pairs"]] == [["natural", "sketch"], ["natural", "painting"],
                                                      ["sketch", "painting"]]
    pair = mech["pairs"][0]
    assert [l["layer"] for l in pair["layers"]] == ["stages0", "stages1", "stages2", "stages3"]
    for l in pair["layers"]:
        assert -1.0 <= l["cka_linear"] <= 1.0 + 1e-9 and 0.0 <= l["neuron_sharing"] <= 1.0
    assert len(pair["classes"]) >= 4
    for l in pair["layers"]:    # the jackknife's replicates: one per class left out, from 5 classes on
        loo = l["cka_linear_leave_one_out"]
        assert len(loo) == (len(pair["classes"]) if len(pair["classes"]) >= 5 else 0)
        assert all(-1.0 - 1e-9 <= v <= 1.0 + 1e-9 for v in loo)
    # painting appears only as test_natural's planted contamination (2 images): too few classes, said so
    assert mech["pairs"][2]["layers"] == [] and "at least 4 classes" in mech["pairs"][2]["undefined"]
    # a class subset: the same pairs on those classes alone (rows of other classes left out)
    four = mech["class_subsets"]["four"]
    assert four["classes"] == ["circle", "square", "triangle", "star"]
    sub = four["pairs"][0]
    assert sub["domains"] == ["natural", "sketch"] and set(sub["classes"]) <= set(four["classes"])
    assert sub["n"]["natural"] < pair["n"]["natural"] and sub["n"]["sketch"] < pair["n"]["sketch"]
    if len(sub["classes"]) == 4:       # 4 classes: defined, but too few for the leave-one-out
        assert sub["layers"] and all(l["cka_linear_leave_one_out"] == [] for l in sub["layers"])
    assert all("at least 4 classes" in p["undefined"] for p in mech["class_subsets"]["two"]["pairs"])


def test_supervised_classifier_matches_a_direct_forward_pass(collection, supervised_ckpt, tmp_path, capsys):
    import torch

    from clipaudit.images import decode_image
    from clipaudit.shards import iter_samples
    from services.evaluator.checkpoints import timm_preprocess

    path, model, classes = supervised_ckpt
    rc = main(["evaluate", "--checkpoint", str(path), "--test", str(collection / "test_sketch"),
               "--out", str(tmp_path / "sup"), "--quiet"])
    assert rc == 0
    rep = json.loads((tmp_path / "sup" / "report.json").read_text())
    assert rep["model"]["kind"] == "supervised" and rep["model"]["family"] == "supervised"
    # oracle: the same weights, our own loop
    model.eval()
    pre = timm_preprocess(model, 32)
    right = []
    for tar in sorted((collection / "test_sketch").glob("*.tar")):
        for s in iter_samples(tar):
            with torch.no_grad():
                logits = model(pre(decode_image(s["jpg"]))[None])[0]
            right.append(int(logits.argmax()) == classes.index(s["json"]["class"]))
    assert rep["test_sets"][0]["overall"]["top1"] == pytest.approx(np.mean(right))

    # CLIP and classifier side by side
    capsys.readouterr()
    rc = main(["compare", str(tmp_path / "sup" / "report.json"), str(tmp_path / "sup" / "report.json"),
               "--out", str(tmp_path / "cmp")])
    assert rc == 0
    cmp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert len([r for r in cmp["rows"] if r["test_set"] == "test_sketch"]) == 2


@pytest.mark.parametrize("args, code, words", [
    (["--templates", "a photo of a thing|another thing"], 2, "placeholder"),
    (["--checkpoint", "clipaudit-tiny@/nonexistent/ckpt.pt"], 3, "does not exist"),
    (["--test", "/nonexistent/test_set"], 3, "does not exist"),
    (["--subset", "held=circle,unicorn"], 2, "unicorn"),
    (["--subset", "circle,square"], 2, "expected NAME=class1,class2"),
    (["--mechanistic-classes", "held=circle,square"], 2, "--mechanistic-classes needs --mechanistic"),
    (["--mechanistic", "natural,sketch", "--mechanistic-classes", "held=circle,unicorn"], 2, "['unicorn'] not among"),
])
def test_bad_input_is_one_line_and_an_exit_code(collection, tmp_path, capsys, args, code, words):
    base = {"--checkpoint": "clipaudit-tiny", "--test": str(collection / "test_natural"), "--out": str(tmp_path / "o")}
    argv = ["evaluate", "--quiet"]
    given = dict(zip(args[::2], args[1::2]))
    for k, v in {**base, **given}.items():
        argv += [k, v]
    assert main(argv) == code
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and err[0].startswith("clipaudit evaluate: error:") and words in err[0]


def test_clip_benchmark_wds_layout_reads_like_the_original_split(collection, clip_ckpt, tmp_path, capsys):
    """A split exported to CLIP_benchmark's wds/ layout (cls labels, classnames.txt,
    zeroshot_classification_templates.txt) scores exactly like the split itself."""
    import io
    import tarfile

    from clipaudit.shards import iter_samples

    classes = json.loads((collection / "collection.json").read_text())["classes"]
    templates = ["a photo of a {c}.", "a drawing of the {c}."]
    wds = tmp_path / "wds"
    (wds / "test").mkdir(parents=True)
    with tarfile.open(wds / "test" / "0.tar", "w") as tar:
        for shard in sorted((collection / "test_sketch").glob("*.tar")):
            for s in iter_samples(shard):
                for ext, data in (("jpg", s["jpg"]), ("cls", str(classes.index(s["json"]["class"])).encode())):
                    info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (wds / "test" / "nshards.txt").write_text("1\n")
    (wds / "classnames.txt").write_text("\n".join(classes) + "\n")
    (wds / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")

    assert main(["evaluate", "--checkpoint", str(clip_ckpt), "--test", str(wds), "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    assert main(["evaluate", "--checkpoint", str(clip_ckpt), "--test", str(collection / "test_sketch"),
                 "--templates", "|".join(templates), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    a = json.loads((tmp_path / "a" / "report.json").read_text())["test_sets"][0]
    b = json.loads((tmp_path / "b" / "report.json").read_text())["test_sets"][0]
    assert a["templates"] == "zeroshot_classification_templates.txt" and a["n_templates"] == 2
    assert a["classes"] == classes and a["n"] == b["n"] == 40
    assert a["overall"] == b["overall"]
    assert a["breakdowns"]["class"] == b["breakdowns"]["class"]

    (wds / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\nno placeholder\n")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(clip_ckpt), "--test", str(wds), "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2
    assert "line 2" in capsys.readouterr().err
