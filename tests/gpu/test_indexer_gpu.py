"""The indexer's exact kernels on CUDA give the same answers as the numpy oracle and
as the CPU path (ties included). Skipped without CUDA; never run on CPU instead."""

from __future__ import annotations

import numpy as np
import pytest

from services.indexer import logic
from tests.unit.test_indexer_logic import blocks, lattice, matched_oracle, oracle_topk, planted, unit

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("k", [1, 4])
def test_nn_similarity_cuda_equals_oracle_and_cpu(k):
    rng = np.random.default_rng(k)
    pool = lattice(rng, 150, 64)
    q, r = pool[:50], pool[rng.integers(0, 150, 3000)]
    sims, pos = logic.nn_similarity(q, blocks(r, 512), k, device="cuda", query_block=16)
    osims, opos = oracle_topk(q, r, k)
    assert (pos == opos).all() and (sims == osims).all()
    qf, rf = unit(rng, 200, 128), unit(rng, 20_000, 128)
    gs, gp = logic.nn_similarity(qf, blocks(rf, 4096), k, device="cuda")
    cs, cp = logic.nn_similarity(qf, blocks(rf, 4096), k, device="cpu")
    np.testing.assert_allclose(gs, cs, atol=1e-6)
    assert (gp == cp).mean() > 0.99


def test_matched_prune_cuda_equals_exact_oracle():
    rng = np.random.default_rng(11)
    train, tests, ref = planted(rng)
    thr = [logic.matched_thresholds(t, blocks(ref, 64), device="cuda", test_block=16) for t in tests]
    removed = np.concatenate(list(logic.matched_prune_masks(blocks(train, 256), tests, thr, device="cuda",
                                                            test_block=16)))
    othr, oremoved = matched_oracle(train, tests, ref)
    assert all((a == b).all() for a, b in zip(thr, othr))
    assert (removed == oremoved).all()


def test_auto_device_picks_cuda():
    import torch

    assert torch.cuda.is_available()
    assert logic.resolve_device("auto").type == "cuda"
