"""The synthetic multi-domain collection: layout, metadata, determinism, planted
contamination and near-duplicates, background groups, errors."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from clipaudit.errors import InvalidInput, NotFound
from clipaudit.shards import iter_samples
from clipaudit.store import open_store
from clipaudit.synth import (
    PRESETS,
    SAMPLE_FIELDS,
    Collection,
    Preset,
    contact_sheet,
    format_summary,
    generate,
    summarize,
)
from clipaudit.synth.noise import sample_seeds
from clipaudit.synth.render import CLIPART_LINE_ART, PA_LEVELS, YIQ, geometry, posterise, render, rotate_hue
from clipaudit.synth.shapes import DOODLES, doodle_distance, shape_sdf

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "tiny"
    report = generate("tiny", out, seed=0, workers=1, progress=False)
    return out, report


@pytest.fixture(scope="module")
def samples(tiny):
    coll = Collection.load(tiny[0])
    return coll, {split: list(coll.iter_samples(split)) for split in coll.splits}


def decode(jpg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"), dtype=np.float32) / 255.0


def test_layout_and_counts_match_collection_json(tiny, samples):
    out, report = tiny
    coll, by_split = samples
    preset = PRESETS["tiny"]
    assert report.total == sum(report.counts.values()) == sum(s.count for s in coll.splits.values())
    assert list(coll.splits) == ["train", "reference", "test_natural", "test_sketch", "test_clipart",
                                 "test_painting", "test_quickdraw", "test_common", "test_counter", "test_domains"]
    assert coll.splits["train"].count == preset.n_train and coll.splits["reference"].count == preset.n_reference
    store = open_store(out)
    for name, info in coll.splits.items():
        got = by_split[name]
        assert len(got) == info.count == report.counts[name]
        assert Counter(s["json"]["domain"] for s in got) == {d: n for d, n in info.domains.items() if n}
        assert Counter(s["json"]["group"] for s in got) == {g: n for g, n in info.groups.items() if n}
        for shard in info.shards:
            assert shard.key.startswith(f"{name}/{name}-") and shard.key.endswith(".tar")
            blob = store.get_bytes(shard.key)
            assert hashlib.sha256(blob).hexdigest() == shard.sha256 and len(blob) == shard.bytes
        assert sum(s.count for s in info.shards) == info.count
    raw = json.loads((out / "collection.json").read_text())
    assert raw["classes"] == preset.classes and raw["image_size"] == 32 and raw["seed"] == 0
    assert set(raw["common_background"]) == set(preset.classes)
    assert len(raw["held_out_classes"]) == preset.n_held_out
    assert raw["generator_version"]


def test_sample_metadata_and_captions(samples):
    coll, by_split = samples
    keys = set()
    for split, got in by_split.items():
        for s in got:
            meta = s["json"]
            assert sorted(meta) == sorted(SAMPLE_FIELDS)
            assert meta["key"] == s["__key__"] and meta["split"] == split
            assert meta["class"] == coll.classes[meta["class_id"]]
            assert meta["domain"] in coll.domains
            assert meta["domain_group"] == ("natural" if meta["domain"] == "natural" else "rendition")
            assert meta["background"] in [*coll.backgrounds, "none"]
            assert (meta["background"] == "none") == (meta["domain"] not in ("natural", "painting"))
            assert isinstance(meta["seed"], int) and 0 <= meta["seed"] < 2**63
            assert meta["class"] in s["txt"]
            word = {"natural": ("photo", "picture", "snapshot"), "sketch": ("sketch",), "clipart": ("clipart", "clip art"),
                    "painting": ("painting",), "quickdraw": ("doodle",)}[meta["domain"]]
            assert any(w in s["txt"] for w in word), s["txt"]
            img = decode(s["jpg"])
            assert img.shape == (32, 32, 3)
            keys.add(meta["key"])
    assert len(keys) == sum(len(v) for v in by_split.values())  # keys unique across the collection
    train_domains = Counter(s["json"]["domain"] for s in by_split["train"])
    assert set(train_domains) == set(coll.domains)


def test_deterministic_and_independent_of_workers(tiny, tmp_path):
    out, _ = tiny
    first = Collection.load(out)
    again = generate("tiny", tmp_path / "again", seed=0, workers=2, progress=False)
    second = Collection.load(again.location)
    for name in first.splits:
        assert [s.sha256 for s in first.splits[name].shards] == [s.sha256 for s in second.splits[name].shards]
    assert (out / "collection.json").read_bytes() == (tmp_path / "again" / "collection.json").read_bytes()
    other = Collection.load(generate("tiny", tmp_path / "other", seed=1, progress=False).location)
    assert all(first.splits[n].shards[0].sha256 != other.splits[n].shards[0].sha256 for n in first.splits)


def test_render_depends_only_on_the_row():
    classes = PRESETS["tiny"].classes
    n = 12
    seeds = sample_seeds(3, "x", np.arange(n))
    cls = np.arange(n) % len(classes)
    doms = ["natural", "sketch", "clipart", "painting", "quickdraw", "natural"] * 2
    bgs = ["grass", "none", "none", "water", "none", "indoor"] * 2
    full = render(classes, cls, doms, bgs, seeds, np.zeros(n, np.uint64), 32)
    part = render(classes, cls[3:8], doms[3:8], bgs[3:8], seeds[3:8], np.zeros(5, np.uint64), 32)
    np.testing.assert_array_equal(full[3:8], part)


def test_quickdraw_draws_every_default_class_as_a_stick_figure_and_other_shapes_as_outlines():
    u, v = np.meshgrid(np.linspace(-1, 1, 81, dtype=np.float32), np.linspace(-1, 1, 81, dtype=np.float32))
    # a doodled cross is two strokes through the centre, not the outline of a thick plus
    assert doodle_distance("cross", np.float32([0.0]), np.float32([0.0]))[0] == pytest.approx(0.0)
    assert doodle_distance("cross", np.float32([0.27]), np.float32([0.6]))[0] == pytest.approx(0.27, abs=1e-5)
    # the star's spokes meet at its centre; a square is a hash whose middle is open; a heart a "V"
    # whose tip is at the bottom; a diamond an "X" crossing at the centre; a circle three bars, one
    # through the centre; a triangle three posts; an arrow an "N"; a moon an "L"
    assert doodle_distance("star", np.float32([0.0]), np.float32([0.08]))[0] == pytest.approx(0.0, abs=1e-6)
    assert doodle_distance("square", np.float32([0.0]), np.float32([0.0]))[0] == pytest.approx(0.35, abs=1e-5)
    assert doodle_distance("heart", np.float32([0.0]), np.float32([0.8]))[0] == pytest.approx(0.0, abs=1e-6)
    assert doodle_distance("diamond", np.float32([0.0]), np.float32([0.0]))[0] == pytest.approx(0.0, abs=1e-6)
    assert doodle_distance("circle", np.float32([0.5, 0.5]), np.float32([0.0, 0.3]))[:2] == pytest.approx([0.0, 0.25], abs=1e-6)
    assert doodle_distance("triangle", np.float32([0.55, 0.3]), np.float32([0.5, 0.0]))[:2] == pytest.approx([0.0, 0.25], abs=1e-6)
    assert doodle_distance("arrow", np.float32([-0.7, 0.0, 0.7]), np.float32([0.0, 0.0, 0.0])) == pytest.approx([0, 0, 0], abs=1e-6)
    assert doodle_distance("moon", np.float32([0.0, 0.3]), np.float32([0.75, 0.0]))[:2] == pytest.approx([0.0, 0.75], abs=1e-6)
    # no doodle is its class's outline: somewhere on the outline the doodle is far away
    for name in DOODLES:
        on_outline = np.abs(shape_sdf(name, u, v)) < 0.02
        assert doodle_distance(name, u, v)[on_outline].max() > 0.25, name
    # shapes beyond the default ten keep their outline (unsigned)
    assert set(DOODLES) == set(PRESETS["small"].classes)
    np.testing.assert_allclose(doodle_distance("hexagon", u, v), np.abs(shape_sdf("hexagon", u, v)), atol=1e-6)


def test_quickdraw_images_are_strokes_on_white_and_differ_from_the_outline():
    classes = [*PRESETS["small"].classes[:-1], "hexagon"]  # the hexagon has no stick figure: its outline
    n = 40
    seeds = sample_seeds(5, "q", np.arange(n))
    cls = np.arange(n) % len(classes)
    img = render(classes, cls, ["quickdraw"] * n, ["none"] * n, seeds, np.zeros(n, np.uint64), 32).astype(int)
    dark = img.max(axis=3) < 128
    assert ((dark | (img.min(axis=3) > 200)).mean()) == 1.0            # black ink on white, nothing else
    assert 0.02 < dark.mean() < 0.2
    # at the object's centre pixel a doodled cross has a stroke (within the hand's wobble),
    # an outlined hexagon is far from any stroke; other domains keep the signed outline
    g = geometry(classes, cls, seeds, np.zeros(n, np.uint64), 32, doodle=np.ones(n, bool))
    signed = geometry(classes, cls, seeds, np.zeros(n, np.uint64), 32)
    px = np.clip(np.round((g.cx + 1) / 2 * 32 - 0.5).astype(int), 0, 31)
    py = np.clip(np.round((g.cy + 1) / 2 * 32 - 0.5).astype(int), 0, 31)
    at_centre = g.d[np.arange(n), py, px]
    crosses, hexagons = cls == classes.index("cross"), cls == classes.index("hexagon")
    assert (at_centre[crosses] < 2.5).all() and (at_centre[hexagons] > 3.0).all()
    assert (signed.d[np.arange(n), py, px][crosses | hexagons] < 0).all()     # inside the filled shape
    assert (g.d >= 0).all()


def test_planted_contamination_matches_preset(samples):
    coll, by_split = samples
    preset = PRESETS["tiny"]
    expected = int(round(preset.test_contamination * preset.n_test))
    assert expected > 0
    nat = Counter(s["json"]["domain_group"] for s in by_split["test_natural"])
    assert nat["rendition"] == expected == coll.splits["test_natural"].contaminated
    for style in preset.rendition_styles:
        got = Counter(s["json"]["domain"] for s in by_split[f"test_{style}"])
        assert got == {style: preset.n_test - expected, "natural": expected}
        assert coll.splits[f"test_{style}"].contaminated == expected
    for split in ("test_common", "test_counter"):
        assert {s["json"]["domain"] for s in by_split[split]} == {"natural"}
    # the reference (ImageNet-train's role) carries the ID test set's rendition share: one distribution
    ref_expected = int(round(preset.test_contamination * preset.n_reference))
    ref = Counter(s["json"]["domain_group"] for s in by_split["reference"])
    assert ref["rendition"] == ref_expected == coll.splits["reference"].contaminated > 0
    n_rend = sum(1 for s in by_split["train"] if s["json"]["domain"] != "natural" and not s["json"]["near_duplicate_of"])
    n_reg = sum(1 for s in by_split["train"] if not s["json"]["near_duplicate_of"])
    assert n_rend == round(preset.train_rendition_share * n_reg)


def test_near_duplicates_point_at_test_images_and_look_alike(samples):
    coll, by_split = samples
    preset = PRESETS["tiny"]
    tests = {s["__key__"]: s for split in coll.test_splits for s in by_split[split]}
    dups = [s for s in by_split["train"] if s["json"]["near_duplicate_of"]]
    per_set = int(round(preset.near_duplicate_rate * preset.n_test))
    assert len(dups) == per_set * (1 + len(preset.rendition_styles)) == coll.splits["train"].near_duplicates
    assert len({d["json"]["near_duplicate_of"] for d in dups}) == len(dups)
    for d in dups:
        src = tests[d["json"]["near_duplicate_of"]]
        for field in ("class", "domain", "background"):
            assert d["json"][field] == src["json"][field]
        a, b = decode(d["jpg"]), decode(src["jpg"])
        mse = float(((a - b) ** 2).mean())
        # unrelated images of the same class and domain are far further apart
        others = [decode(t["jpg"]) for t in tests.values()
                  if t["json"]["class"] == src["json"]["class"] and t["json"]["domain"] == src["json"]["domain"]
                  and t["__key__"] != src["__key__"]][:5]
        assert mse < 0.01, (d["__key__"], mse)
        assert all(mse * 4 < float(((a - o) ** 2).mean()) for o in others)


def test_domains_probe_balances_every_class_over_every_background(samples):
    """test_domains (study 3's mechanistic probe): every domain alike, no contamination, and a
    class's photos and paintings on each background equally often, so no background is part
    of a class mean."""
    coll, by_split = samples
    preset = PRESETS["tiny"]
    rows = [s["json"] for s in by_split["test_domains"]]
    info = coll.splits["test_domains"]
    assert info.nominal_domain is None and info.contaminated == 0 and info.near_duplicates == 0
    assert Counter(r["domain"] for r in rows) == {d: preset.probe_size for d in preset.domains}
    for d in preset.domains:
        per_class = Counter(r["class"] for r in rows if r["domain"] == d)
        assert set(per_class) == set(preset.classes) and max(per_class.values()) - min(per_class.values()) <= 1
        for c in preset.classes:
            bgs = Counter(r["background"] for r in rows if r["domain"] == d and r["class"] == c)
            if d in ("natural", "painting"):
                # tiny: 80 per domain, 8 per class: eight different backgrounds
                assert set(bgs) <= set(coll.backgrounds) and set(bgs.values()) == {1}
            else:
                assert set(bgs) == {"none"}


def test_domains_probe_plan_puts_each_class_on_every_background_alike():
    from clipaudit.synth.plan import DOMAINS_PROBE, make_plan
    from clipaudit.synth.presets import Preset

    preset = Preset(name="probe", n_train=100, n_reference=20, n_test=40, n_probe=200)
    sp = make_plan(preset, seed=3).splits[DOMAINS_PROBE]
    B = len(preset.backgrounds)
    for d in ("natural", "painting"):
        di = preset.domains.index(d)
        for k in range(len(preset.classes)):
            bg = sp.background[(sp.domain == di) & (sp.cls == k)]
            assert len(bg) == 20 and np.bincount(bg, minlength=B).tolist() == [2] * B
    assert (sp.background[~np.isin(sp.domain, [0, preset.domains.index("painting")])] == -1).all()
    assert (sp.perturb == 0).all() and all(x is None for x in sp.dup_of)
    # the other splits do not depend on it: their rows are drawn from streams of their own
    other = make_plan(preset.model_copy(update={"n_probe": 50}), seed=3)
    for name, split in make_plan(preset, seed=3).splits.items():
        if name != DOMAINS_PROBE:
            assert (split.seed == other.splits[name].seed).all() and (split.cls == other.splits[name].cls).all()


def test_backgrounds_follow_the_class_mapping(samples):
    coll, by_split = samples
    preset = PRESETS["tiny"]
    common = coll.common_background
    assert set(common.values()) <= set(coll.backgrounds)
    assert max(Counter(common.values()).values()) <= preset.classes_per_common_background
    for s in by_split["test_common"]:
        assert s["json"]["background"] == common[s["json"]["class"]] and s["json"]["group"] == "common"
    for s in by_split["test_counter"]:
        assert s["json"]["background"] != common[s["json"]["class"]] and s["json"]["group"] == "counter"
        assert s["json"]["background"] in coll.backgrounds
    for split in ("train", "reference", "test_natural"):
        for s in by_split[split]:
            m = s["json"]
            if m["domain"] == "natural":
                assert m["group"] == ("common" if m["background"] == common[m["class"]] else "counter")
            else:
                assert m["group"] == "none"
    # in the training pool each class's regular natural photos are on the common background with p_common
    per_class: dict[str, list[bool]] = {}
    for s in by_split["train"]:
        m = s["json"]
        if m["domain"] == "natural" and not m["near_duplicate_of"]:
            per_class.setdefault(m["class"], []).append(m["group"] == "common")
    for flags in per_class.values():
        assert sum(flags) == round(preset.p_common * len(flags))
    # test_natural (in-distribution) is drawn like the pool: per class, p_common of its photos on the common background
    per_class = {}
    for s in by_split["test_natural"]:
        m = s["json"]
        if m["domain"] == "natural":
            per_class.setdefault(m["class"], []).append(m["group"] == "common")
    for flags in per_class.values():
        assert sum(flags) == round(preset.p_common * len(flags))

    # a painting repaints a photo scene: on its class's common background about as often as a photo
    paintings = [s["json"] for split in ("train", "test_painting") for s in by_split[split]
                 if s["json"]["domain"] == "painting"]
    share = np.mean([m["background"] == common[m["class"]] for m in paintings])
    assert len(paintings) >= 40 and abs(share - preset.p_common) < 0.12


def test_summary_and_contact_sheet(tiny, tmp_path):
    out, report = tiny
    summary = summarize(out)
    assert summary["total"] == report.total
    assert summary["splits"]["test_sketch"]["domains"]["sketch"] == 38
    assert summary["near_duplicates"] == 10
    text = format_summary(summary)
    assert "test_counter" in text and "near-duplicates" in text
    json.dumps(summary)
    png = contact_sheet(out, tmp_path / "sheet.png", per_domain=4)
    with Image.open(png) as im:
        assert im.size[0] > 4 * 32 and im.size[1] > 5 * 32


def test_unknown_preset_and_bad_arguments(tmp_path):
    with pytest.raises(InvalidInput, match=r"^unknown preset 'x'; choose tiny, small or paper$"):
        generate("x", tmp_path / "o", progress=False)
    with pytest.raises(InvalidInput, match="seed"):
        generate("tiny", tmp_path / "o", seed=-1, progress=False)
    with pytest.raises(ValidationError):
        Preset(name="p", n_train=10, n_reference=10, n_test=10, bogus=1)
    with pytest.raises(ValidationError, match="unknown classes"):
        Preset(name="p", n_train=10, n_reference=10, n_test=10, classes=["circle", "unicorn"])


def test_unwritable_output(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(InvalidInput, match="is a file"):
        generate("tiny", f / "sub" / "out", progress=False)
    with pytest.raises(InvalidInput):
        generate("tiny", f, progress=False)


def test_load_missing_collection(tmp_path):
    with pytest.raises(NotFound):
        Collection.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="collection.json"):
        Collection.load(tmp_path / "empty")


def test_regenerating_a_smaller_collection_removes_stale_shards(tmp_path):
    preset = PRESETS["tiny"].model_copy(update={"shard_maxcount": 50})
    generate(preset, tmp_path / "c", progress=False)
    assert (tmp_path / "c" / "train" / "train-000005.tar").exists()
    generate("tiny", tmp_path / "c", progress=False)
    coll = Collection.load(tmp_path / "c")
    on_disk = sorted(p.relative_to(tmp_path / "c").as_posix() for p in (tmp_path / "c").rglob("*.tar"))
    assert on_disk == sorted(k for s in coll.splits.values() for k in s.shard_keys)
    assert len(list(iter_samples(tmp_path / "c" / coll.shard_keys("train")[0]))) == coll.splits["train"].shards[0].count


def test_a_painting_turns_the_scene_hues_and_lays_them_on_in_five_tones():
    # the same rows as photos and as paintings: same class, background, geometry and colours before the palette
    classes = PRESETS["small"].classes
    n = 30
    seeds = sample_seeds(7, "palette", np.arange(n))
    cls = np.arange(n) % len(classes)
    photo, painting = (render(classes, cls, [d] * n, ["grass"] * n, seeds, np.zeros(n, np.uint64), 32)
                       .astype(np.float32) / 255 for d in ("natural", "painting"))

    def mean_hue(img):  # angle of the mean chroma (YIQ's I, Q) of each image, in turns
        iq = (img.reshape(n, -1, 3) @ YIQ.T).mean(1)[:, 1:]
        return np.arctan2(iq[:, 1], iq[:, 0]) / (2 * np.pi)

    turn = np.abs(np.mod(mean_hue(painting) - mean_hue(photo) + 0.5, 1.0) - 0.5)
    assert turn.min() > 0.15  # the palette turns by 0.2-0.8 of the circle: grass is no longer green
    assert all(len(np.unique(painting[i][..., c])) <= PA_LEVELS for i in range(n) for c in range(3))
    assert max(len(np.unique(photo[i])) for i in range(n)) > 50

    # the turn keeps brightness and is undone by the opposite turn
    img = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    theta = np.float32([0.0, 1.0, 2.5, -2.0])
    turned = rotate_hue(img, theta)
    np.testing.assert_allclose(np.einsum("j,njhw->nhw", YIQ[0], turned), np.einsum("j,njhw->nhw", YIQ[0], img),
                               atol=1e-5)
    np.testing.assert_allclose(rotate_hue(turned, -theta), img, atol=1e-5)
    np.testing.assert_allclose(turned[0], img[0], atol=1e-6)
    assert posterise(np.float32([-0.2, 0.1, 0.13, 0.9, 1.4]), 5).tolist() == [0.0, 0.0, 0.25, 1.0, 1.0]


def test_some_clipart_is_line_art_the_outline_on_the_plain_background():
    classes = PRESETS["small"].classes
    n = 200
    seeds = sample_seeds(11, "line-art", np.arange(n))
    cls = np.full(n, classes.index("circle"))
    img = render(classes, cls, ["clipart"] * n, ["none"] * n, seeds, np.zeros(n, np.uint64), 32).astype(np.float32)
    g = geometry(classes, cls, seeds, np.zeros(n, np.uint64), 32)
    interior = g.d < -2.5                                   # pixels well inside the circle
    assert interior.sum(axis=(1, 2)).min() > 10
    inside = np.array([img[i][interior[i]].mean(0) for i in range(n)])
    paper = img[:, 0, 0]                                    # a corner: the plain background
    unfilled = np.abs(inside - paper).max(1) < 8
    assert abs(unfilled.mean() - CLIPART_LINE_ART) < 0.1
