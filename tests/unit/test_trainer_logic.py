"""Pure trainer logic with known answers: mixtures, data order, LR schedule, spec parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipaudit.errors import InvalidInput
from services.trainer.data import round_robin_taken
from services.trainer.logic import (
    MixtureError, apportion, intra_op_threads, lr_at, rank_indices, resolve_mixture, shard_plan, shuffled,
    streaming_batches_per_slot,
)
from services.trainer.spec import JobSpec, parse_spec

NATURAL = [f"n{i:04d}" for i in range(1000)]
RENDITION = [f"r{i:04d}" for i in range(300)]


def test_apportion_is_exact_largest_remainder():
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(20_000, [3, 1]) == [15_000, 5_000]
    assert apportion(7, [1, 2]) == [2, 5]          # 2.33 -> 2, 4.67 -> 5
    assert sum(apportion(12_345, [0.1, 0.7, 0.2, 1e-3])) == 12_345


def test_mixture_fixed_counts_are_exact_and_disjoint():
    nat, ren = resolve_mixture([NATURAL, RENDITION], [150, 50], [None, None], None, seed=0)
    assert (len(nat), len(ren)) == (150, 50)
    assert set(nat) <= set(NATURAL) and set(ren) <= set(RENDITION)
    assert len(set(nat) | set(ren)) == 200


def test_mixture_ratio_at_fixed_total():
    nat, ren = resolve_mixture([NATURAL, RENDITION], [None, None], [3, 1], 400, seed=1)
    assert (len(nat), len(ren)) == (300, 100)


def test_mixture_fixed_natural_plus_k_renditions():
    nat, ren = resolve_mixture([NATURAL, RENDITION], [None, 7], [None, None], None, seed=2)
    assert len(nat) == 1000 and len(ren) == 7      # no count, no weight: all of it


def test_mixture_is_deterministic_by_seed():
    a = resolve_mixture([NATURAL], [10], [None], None, seed=5)
    b = resolve_mixture([NATURAL], [10], [None], None, seed=5)
    c = resolve_mixture([NATURAL], [10], [None], None, seed=6)
    assert a == b and a != c


def test_mixture_overlapping_manifests_do_not_double_count():
    both = NATURAL[:100]
    first, second = resolve_mixture([both, NATURAL[:150]], [100, 50], [None, None], None, seed=0)
    assert set(first).isdisjoint(second) and len(second) == 50
    with pytest.raises(MixtureError, match="already taken"):
        resolve_mixture([both, NATURAL[:150]], [100, 51], [None, None], None, seed=0)


def test_mixture_refuses_count_larger_than_manifest():
    with pytest.raises(MixtureError, match="asks for 301 samples but its manifest has 300"):
        resolve_mixture([RENDITION], [301], [None], None, seed=0)
    with pytest.raises(MixtureError, match="more than total"):
        resolve_mixture([NATURAL, RENDITION], [500, None], [None, 1], 400, seed=0)


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.5)
    assert lr_at(110, 1.0, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(5, 2.0, 0, 10) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_intra_op_threads_one_per_idle_cpu():
    assert intra_op_threads(3, 2, 0.0) == 3              # asked for: given
    assert intra_op_threads(0, 2, 1.9) == 2
    assert intra_op_threads(0, 2, 1.2) == 1              # a busy core would stall the team
    assert intra_op_threads(0, 2, 0.0) == 1              # never fewer than one
    assert intra_op_threads(0, 4, 7.5) == 4              # never more than available
    assert intra_op_threads(0, 4, None) == 4             # unknown idleness: all


def test_shard_plan_deals_every_shard_once_and_reshuffles_per_epoch():
    slots = [shard_plan(10, 0, 3, s, 4) for s in range(4)]
    assert sorted(i for s in slots for i in s) == list(range(10))
    assert shard_plan(10, 0, 0, 0, 1) != shard_plan(10, 0, 1, 0, 1)
    counts = [5, 7, 9, 11]
    per_slot = streaming_batches_per_slot(counts, 4, 0, 0, 2)
    expect = [sum(counts[i] for i in shard_plan(4, 0, 0, s, 2)) // 4 for s in range(2)]
    assert per_slot == expect


def test_rank_indices_are_disjoint_and_equal_length():
    parts = [set(rank_indices(103, 0, 2, r, 4).tolist()) for r in range(4)]
    assert all(len(p) == 25 for p in parts)
    assert len(set().union(*parts)) == 100


def test_shuffle_buffer_is_a_permutation_and_shuffles():
    out = list(shuffled(range(100), 10, np.random.default_rng(0)))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    again = list(shuffled(range(100), 10, np.random.default_rng(0)))
    assert out == again


def test_round_robin_taken_matches_dataloader_order():
    # workers deliver 0,1,2,0,1,2,0,2,... once worker 1 (2 batches) is exhausted
    assert round_robin_taken([3, 2, 4], 0) == [0, 0, 0]
    assert round_robin_taken([3, 2, 4], 5) == [2, 2, 1]
    assert round_robin_taken([3, 2, 4], 8) == [3, 2, 3]
    assert round_robin_taken([3, 2, 4], 50) == [3, 2, 4]


def test_spec_refuses_bad_input_with_one_line():
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_spec("{nope")
    with pytest.raises(InvalidInput, match="batch_sise"):
        parse_spec({"data": ["x"], "batch_sise": 3})
    with pytest.raises(InvalidInput, match="weights need a total"):
        parse_spec({"data": ["x"], "mixture": [{"manifest": "a", "weight": 1}]})
    with pytest.raises(InvalidInput, match="manifest or mixture"):
        parse_spec({"data": ["x"], "manifest": "a", "mixture": [{"manifest": "b"}]})
    with pytest.raises(InvalidInput, match="count or weight"):
        parse_spec({"data": ["x"], "mixture": [{"manifest": "b", "count": 1, "weight": 2}], "total": 3})


def test_spec_round_trips_through_json():
    spec = JobSpec(data="coll", mixture=[{"manifest": "s3://b/m/nat", "weight": 3}, {"manifest": "m/ren", "weight": 1}],
                   total=100)
    assert parse_spec(spec.model_dump_json()) == spec
    assert [c.label for c in spec.components] == ["nat", "ren"]


def test_header_index_reads_ustar_names_and_leaves_pax_to_tarfile():
    import io
    import tarfile

    from services.trainer.data import _ustar_members

    def tar(names, fmt):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for n in names:
                ti = tarfile.TarInfo(n)
                ti.size = 700
                tf.addfile(ti, io.BytesIO(b"a" * 700))
        return buf.getvalue()

    names = ["d/k1.txt", "d/k1.jpg", "k2.txt", "p" * 120 + "/k3.txt"]   # the last needs the ustar prefix
    raw = tar(names, tarfile.USTAR_FORMAT)
    assert [m[0] for m in _ustar_members(raw)] == [m.name for m in tarfile.open(fileobj=io.BytesIO(raw))] == names
    assert _ustar_members(tar(["ü" * 120 + ".txt"], tarfile.PAX_FORMAT)) is None
    bad = bytearray(raw)
    bad[3] ^= 1
    with pytest.raises(tarfile.HeaderError):
        _ustar_members(bytes(bad))
    with pytest.raises(tarfile.ReadError):
        _ustar_members(raw[:1000])


def test_model_size_jpegs_decode_to_the_same_pixels_as_pil_and_others_take_pil():
    import io

    from PIL import Image

    from clipaudit.errors import InvalidInput as Bad
    from clipaudit.images import decode_image
    from services.trainer.data import SampleDecoder, _jpeg_frame

    rng = np.random.default_rng(0)

    def jpeg(w, h, mode="RGB", **kw):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(buf, "JPEG", **kw)
        return buf.getvalue()

    dec = SampleDecoder(32)
    for data in [jpeg(32, 32), jpeg(32, 32, quality=30), jpeg(32, 32, progressive=True), jpeg(32, 32, "L"),
                 jpeg(48, 40), jpeg(20, 20)]:
        pil = np.array(decode_image(data, draft_size=32), dtype=np.uint8)
        got = dec._decode(data)
        assert got.shape == (32, 32, 3) and got.dtype == np.uint8
        if pil.shape == (32, 32, 3):
            np.testing.assert_array_equal(got, pil)
    assert _jpeg_frame(jpeg(32, 24)) == (24, 32, 3) and _jpeg_frame(jpeg(32, 32, "L"))[2] == 1
    assert _jpeg_frame(b"\x89PNG....") is None
    with pytest.raises(Bad):                      # a truncated model-size JPEG: PIL's one clear line
        dec._decode(jpeg(32, 32)[:300])


def test_a_rewritten_shard_is_indexed_again(tmp_path):
    import io
    import os
    import tarfile

    from clipaudit.store import LocalStore
    from services.trainer.data import ShardRef, shard_sample_keys

    def write(keys, mtime_ns):
        with tarfile.open(tmp_path / "s.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
            for k in keys:
                ti = tarfile.TarInfo(f"{k}.txt")
                ti.size = 1
                tf.addfile(ti, io.BytesIO(b"x"))
        os.utime(tmp_path / "s.tar", ns=(mtime_ns, mtime_ns))

    ref = ShardRef(LocalStore(tmp_path), "s.tar")
    write(["a", "b"], 10**18)
    assert shard_sample_keys(ref) == shard_sample_keys(ref) == ["a", "b"]
    write(["c", "d"], 2 * 10**18)                 # same size, another mtime
    assert shard_sample_keys(ref) == ["c", "d"]
