"""Oracle tests of the indexer's pure algorithms against numpy brute force on seeded
data: random, clustered with planted duplicates (ties at the thresholds), and a
lattice of +-1/4 patterns whose dot products are exact in any arithmetic (massive ties)."""

from __future__ import annotations

import numpy as np
import pytest

from clipaudit.errors import InvalidInput, ResourceExhausted
from services.indexer import logic


def unit(rng, n, d, dtype=np.float32):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def fp16_unit(x):
    """Normalise, then round to float16 (the default storage): dot products of such
    vectors are exact in float64, so the numpy oracle is the exact answer."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)


def clustered(rng, n, d, centers, spread=0.15):
    c = unit(rng, len(centers) if not isinstance(centers, int) else centers, d)
    which = rng.integers(0, len(c), n)
    return fp16_unit(c[which] + spread * rng.standard_normal((n, d)) / np.sqrt(d))


def lattice(rng, n, d, nnz=16):
    """Rows with 16 entries of +-1/4: unit norm, every dot product a multiple of 1/16."""
    x = np.zeros((n, d), np.float32)
    for i in range(n):
        cols = rng.choice(d, nnz, replace=False)
        x[i, cols] = rng.choice([-0.25, 0.25], nnz)
    return x


def blocks(x, rows):
    return (x[s:s + rows] for s in range(0, len(x), rows))


def oracle_topk(q, r, k):
    s = q.astype(np.float64) @ r.astype(np.float64).T
    pos = np.broadcast_to(np.arange(r.shape[0]), s.shape)
    order = np.lexsort((pos, -s), axis=1)[:, :k]      # ties: smaller position first
    return np.take_along_axis(s, order, 1), order


# -- nn_similarity ------------------------------------------------------------------------

@pytest.mark.parametrize("k,ref_rows,query_block", [(1, 700, 128), (1, 5000, 4096), (5, 333, 50), (12, 1024, 7)])
def test_nn_similarity_matches_brute_force(k, ref_rows, query_block):
    rng = np.random.default_rng(k)
    q, r = unit(rng, 300, 64), unit(rng, 5000, 64)
    sims, pos = logic.nn_similarity(q, blocks(r, ref_rows), k, query_block=query_block)
    osims, opos = oracle_topk(q, r, k)
    np.testing.assert_allclose(sims, osims, atol=1e-6)
    # positions agree wherever the oracle has no near-tie at that rank, with the rank
    # above or with the rank below (the (k+1)-th for the last one)
    nxt, _ = oracle_topk(q, r, k + 1)
    gaps = np.abs(np.diff(nxt, axis=1))                       # gap to the next rank
    before = np.concatenate([np.full((len(q), 1), np.inf), gaps[:, :k - 1]], 1)
    clear = (gaps[:, :k] > 1e-5) & (before > 1e-5)
    assert (pos[clear] == opos[clear]).all()


@pytest.mark.parametrize("k", [1, 3, 8])
def test_ties_break_to_smaller_reference_position(k):
    rng = np.random.default_rng(7)
    pool = lattice(rng, 120, 64)
    q = pool[:40]
    r = pool[rng.integers(0, 120, 900)]          # many exact duplicates -> exact ties
    sims, pos = logic.nn_similarity(q, blocks(r, 97), k, query_block=13)
    osims, opos = oracle_topk(q, r, k)
    assert (pos == opos).all()
    assert (sims == osims).all()
    # the same answer whatever the blocking
    sims2, pos2 = logic.nn_similarity(q, blocks(r, 900), k, query_block=4096)
    assert (pos2 == pos).all()


def test_nn_similarity_refuses_bad_requests():
    rng = np.random.default_rng(0)
    q = unit(rng, 5, 8)
    with pytest.raises(InvalidInput, match="larger than the reference"):
        logic.nn_similarity(q, blocks(unit(rng, 3, 8), 2), 4)
    with pytest.raises(InvalidInput, match="empty"):
        logic.nn_similarity(q, iter([]), 1)
    with pytest.raises(InvalidInput, match="dimension"):
        logic.nn_similarity(q, blocks(unit(rng, 3, 9), 2), 1)
    with pytest.raises(InvalidInput, match="k must be"):
        logic.nn_similarity(q, blocks(unit(rng, 3, 8), 2), 0)


def test_max_similarity_streamed_is_nn_of_each_query():
    rng = np.random.default_rng(3)
    x, t = unit(rng, 1000, 32), unit(rng, 77, 32)
    got = np.concatenate(list(logic.max_similarity_streamed(blocks(x, 128), t, ref_block=20, query_block=33)))
    np.testing.assert_allclose(got, (x.astype(np.float64) @ t.T).max(1), atol=1e-6)


# -- near / far / random ---------------------------------------------------------------------

def test_near_far_random_selection():
    sims = np.array([0.5, 0.9, 0.1, 0.5, 0.7, 0.1], np.float32)
    assert logic.select_by_similarity(sims, 3, "near").tolist() == [0, 2, 5]    # 0.1, 0.1, then first 0.5
    assert logic.select_by_similarity(sims, 3, "far").tolist() == [0, 1, 4]     # 0.9, 0.7, then first 0.5
    a = logic.select_random(100, 10, seed=1)
    assert len(set(a)) == 10 and (a == logic.select_random(100, 10, seed=1)).all()
    assert (a != logic.select_random(100, 10, seed=2)).any()
    for bad in (0, 7):
        with pytest.raises(InvalidInput):
            logic.select_by_similarity(sims, bad, "near")
    with pytest.raises(InvalidInput):
        logic.select_random(0, 1, 0)


# -- similarity-matched pruning ----------------------------------------------------------------

def matched_oracle(train, tests, ref):
    thr = [(t.astype(np.float64) @ ref.astype(np.float64).T).max(1) for t in tests]
    removed = np.stack([((t.astype(np.float64) @ train.astype(np.float64).T) > th[:, None]).any(0)
                        for t, th in zip(tests, thr)], axis=1)
    return thr, removed


def planted(rng, d=48):
    """Clustered fp16 data; the training set holds exact copies of reference points
    (ties with thr(t): must stay) and of test points (must go)."""
    ref = clustered(rng, 400, d, 12)
    t1, t2 = clustered(rng, 60, d, 12), clustered(rng, 45, d, 12)
    train = np.concatenate([clustered(rng, 1500, d, 12), ref[:150], t1[:10], t2[:5]])
    train = train[rng.permutation(len(train))]
    return train, [t1, t2], ref


def run_matched(train, tests, ref, train_rows=211, test_block=17, stats=None):
    thr = [logic.matched_thresholds(t, blocks(ref, 53), test_block=test_block) for t in tests]
    removed = np.concatenate(list(logic.matched_prune_masks(blocks(train, train_rows), tests, thr,
                                                            test_block=test_block, stats=stats)))
    return thr, removed


def test_matched_prune_equals_exact_oracle_with_planted_ties():
    rng = np.random.default_rng(11)
    train, tests, ref = planted(rng)
    stats = {}
    thr, removed = run_matched(train, tests, ref, stats=stats)
    othr, oremoved = matched_oracle(train, tests, ref)
    for a, b in zip(thr, othr):
        assert (a == b).all()                 # canonical arithmetic == exact for fp16 data
    assert (removed == oremoved).all()
    assert 0 < removed.any(1).sum() < len(train)
    assert stats["rechecked"] > 0             # the planted ties went through the exact path


def test_matched_prune_invariant_and_ties_on_lattice():
    rng = np.random.default_rng(5)
    pool = lattice(rng, 200, 64)
    ref = pool[rng.integers(0, 200, 300)]
    tests = [pool[rng.integers(0, 200, 40)], pool[rng.integers(0, 200, 25)]]
    train = pool[rng.integers(0, 200, 1200)]
    thr, removed = run_matched(train, tests, ref, train_rows=100, test_block=9)
    othr, oremoved = matched_oracle(train, tests, ref)
    assert (removed == oremoved).all()
    for s, (t, th) in enumerate(zip(tests, thr)):
        kept = train[~removed[:, s]]
        assert (logic.canonical_dot(np.repeat(t, len(kept), 0), np.tile(kept, (len(t), 1))).reshape(len(t), -1)
                .max(1) <= th).all()
    # every test point is in the pool the reference draws from only partly: some t have thr < 1
    assert (removed.any(1)).sum() > 0


def test_matched_prune_invariant_on_float32_data():
    """Not float16-exact data: the invariant holds in the canonical arithmetic, and exact
    copies of the reference neighbour (a tie) are kept."""
    rng = np.random.default_rng(9)
    ref, t = unit(rng, 500, 96), unit(rng, 80, 96)
    nn = (t @ ref.T).argmax(1)
    near_copies = t[:7] * 0.999 + ref[nn[:7]] * 0.001
    near_copies /= np.linalg.norm(near_copies, axis=1, keepdims=True)
    train = np.concatenate([unit(rng, 700, 96), ref[nn], near_copies])   # ref[nn]: bit-exact copies
    thr, removed = run_matched(train, [t], ref, train_rows=128, test_block=32)
    kept = train[~removed[:, 0]]
    sims = np.stack([logic.canonical_dot(np.repeat(t[i:i + 1], len(kept), 0), kept) for i in range(len(t))])
    assert (sims.max(1) <= thr[0]).all()
    assert not removed[700:780, 0].any()     # copies of the reference neighbours tie: kept
    assert removed[780:, 0].all()            # near-copies of test points: removed


def test_matched_prune_never_holds_train_by_test_matrix():
    rng = np.random.default_rng(2)
    train, tests, ref = planted(rng)
    seen = []
    thr = [logic.matched_thresholds(t, blocks(ref, 64)) for t in tests]

    def watched():
        for b in blocks(train, 100):
            seen.append(len(b))
            yield b
    masks = logic.matched_prune_masks(watched(), tests, thr, test_block=8)
    first = next(masks)
    assert first.shape == (100, 2) and seen == [100]   # one training block consumed per result


def test_gemm_error_bound_covers_float32_products():
    rng = np.random.default_rng(1)
    a, b = unit(rng, 2000, 512), unit(rng, 2000, 512)
    err = np.abs((a @ b.T).astype(np.float64) - a.astype(np.float64) @ b.T.astype(np.float64)).max()
    assert err < logic.gemm_error_bound(512)


# -- dedup -------------------------------------------------------------------------------------

def greedy_oracle(x, assign, thr):
    keep = np.zeros(len(x), bool)
    for c in np.unique(assign):
        kept = []
        for i in np.flatnonzero(assign == c):
            if not kept or max(float(x[i].astype(np.float64) @ x[j].astype(np.float64)) for j in kept) <= thr:
                kept.append(i)
        keep[kept] = True
    return np.flatnonzero(keep)


def test_dedup_equals_greedy_oracle_with_ties():
    rng = np.random.default_rng(4)
    x = clustered(rng, 600, 32, 6, spread=0.6)
    x = np.concatenate([x, x[:50]])                    # exact duplicates: sim 1
    assign = rng.integers(0, 5, len(x))
    pair = x[0].astype(np.float64) @ x[1].astype(np.float64)
    for thr in (0.876, 0.95, float(pair)):             # a threshold equal to a real pair sim: <= keeps
        got = logic.dedup(x, thr, assignments=assign)
        assert (got == greedy_oracle(x, assign, thr)).all()


def test_dedup_with_kmeans_keeps_one_of_each_duplicate_group():
    rng = np.random.default_rng(8)
    base = unit(rng, 300, 32)
    x = np.concatenate([base, base[:100], base[:40]])   # 140 exact duplicates
    kept = logic.dedup(x, 0.876, clusters=8, seed=0)
    assert len(kept) <= 300 and set(range(300)) - set(kept) == set()  # the first copy always wins
    g = x[kept].astype(np.float64) @ x[kept].T.astype(np.float64)
    assign = logic.kmeans_assign(x, 8, seed=0)
    same = assign[kept][:, None] == assign[kept][None, :]
    assert not ((g > 0.876) & same & ~np.eye(len(kept), dtype=bool)).any()


def test_dedup_refuses_bad_input():
    with pytest.raises(InvalidInput):
        logic.dedup(np.zeros((0, 4), np.float32), 0.9)
    with pytest.raises(InvalidInput):
        logic.dedup(np.eye(4, dtype=np.float32), 1.5)


# -- index planning ------------------------------------------------------------------------------

def test_choose_index_by_size_and_budget():
    assert logic.choose_index(10_000, 512, 1 << 30).factory == "Flat"
    p = logic.choose_index(1_000_000, 512, 8 << 30)
    assert p.factory.startswith("IVF") and p.factory.endswith(",Flat") and p.estimated_bytes <= 8 << 30
    p = logic.choose_index(1_000_000, 512, 1 << 30)
    assert ",PQ" in p.factory and p.estimated_bytes <= 1 << 30
    with pytest.raises(ResourceExhausted):
        logic.choose_index(100_000_000, 512, 1 << 20)
    with pytest.raises(InvalidInput):
        logic.choose_index(0, 512, 1 << 30)


def test_merge_topk_across_shards():
    a = (np.array([[0.9, 0.5]], np.float32), np.array([[3, 1]]))
    b = (np.array([[0.7, 0.5]], np.float32), np.array([[10, 0]]))
    c = (np.array([[0.95, -1.0]], np.float32), np.array([[20, -1]]))
    sims, ids = logic.merge_topk([a, b, c], 4)
    assert ids.tolist() == [[20, 3, 10, 0]]
    np.testing.assert_allclose(sims, [[0.95, 0.9, 0.7, 0.5]])


def test_blocked_greedy_equals_oracle_across_blocks():
    rng = np.random.default_rng(5)
    x = clustered(rng, 300, 32, 3, spread=0.5)
    x = np.concatenate([x, x[:40], x[100:120]])       # duplicates that land in later blocks
    for thr in (0.876, 0.95):
        want = greedy_oracle(x, np.zeros(len(x), int), thr)
        for block in (1, 7, 64, 10_000):
            assert (np.flatnonzero(logic.greedy_dedup_cluster(x, thr, block=block)) == want).all()


def test_dedup_streamed_through_disk_buckets_equals_oracle(tmp_path):
    rng = np.random.default_rng(6)
    x = clustered(rng, 700, 32, 6, spread=0.6).astype(np.float16).astype(np.float32)
    x = np.concatenate([x, x[:60]])                    # exact duplicates, later in the stream
    centroids = logic.kmeans_centroids(x[::3], 6, seed=0)
    assign = logic.assign_to_centroids(x, centroids)
    blocks = (x[s:s + 50] for s in range(0, len(x), 50))
    keep = logic.dedup_streamed(blocks, len(x), 0.876, centroids, str(tmp_path), bucket_bytes=4096)
    assert (np.flatnonzero(keep) == greedy_oracle(x, assign, 0.876)).all()
    assert list(tmp_path.iterdir()) == []             # buckets are removed once read
    with pytest.raises(InvalidInput):
        logic.dedup_streamed(iter([x]), len(x) + 1, 0.9, centroids, str(tmp_path))
