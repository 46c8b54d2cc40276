"""What goes into each split: one row per image (class, domain, background,
group, seeds, near-duplicate source), decided up front from the collection seed.

The plan is cheap (arrays of a few ints per image) and fully determines the images:
rendering a row needs nothing but the row, so it can run in any worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clipaudit.synth.noise import sample_seeds, split_base
from clipaudit.synth.presets import Preset

NONE_BG = -1
GROUPS = ("common", "counter", "none")
COMMON, COUNTER, NO_GROUP = 0, 1, 2
# every domain, with each class's photos and paintings spread evenly over every background: the
# images that study 3's mechanistic similarity compares (see _Builder.domains_probe)
DOMAINS_PROBE = "test_domains"


def split_names(preset: Preset) -> list[str]:
    """Output order of the splits."""
    return ["train", "reference", "test_natural", *(f"test_{s}" for s in preset.rendition_styles),
            "test_common", "test_counter", DOMAINS_PROBE]


def near_duplicate_sources(preset: Preset) -> list[str]:
    """Test sets whose images get planted near-duplicates in train."""
    return ["test_natural", *(f"test_{s}" for s in preset.rendition_styles)]


@dataclass
class SplitPlan:
    name: str
    kind: str  # train | reference | test
    nominal_domain: str | None
    cls: np.ndarray  # int64 index into preset.classes
    domain: np.ndarray  # int64 index into preset.domains (0 = natural)
    background: np.ndarray  # int64 index into preset.backgrounds, -1 = none
    group: np.ndarray  # int64 index into GROUPS
    seed: np.ndarray  # uint64 per-sample seed (recorded in json)
    render_seed: np.ndarray  # uint64 seed the scene is drawn from (= seed unless near-duplicate)
    perturb: np.ndarray  # uint64, non-zero only for near-duplicates
    dup_of: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cls)

    def key(self, i: int) -> str:
        return f"{self.name}-{i:06d}"


@dataclass
class CollectionPlan:
    preset: Preset
    seed: int
    common_background: np.ndarray  # (K,) int64 index into preset.backgrounds
    held_out: list[int]
    splits: dict[str, SplitPlan]


def _rng(seed: int, what: str) -> np.random.Generator:
    return np.random.default_rng(split_base(seed, "plan:" + what))


def _balanced(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """n labels in [0, k), as equal as possible, in random order."""
    start = int(rng.integers(k))
    return rng.permutation((np.arange(n) + start) % k)


def _spread(n: int, k: int) -> list[int]:
    """n split over k parts as evenly as possible."""
    q, r = divmod(n, k)
    return [q + (1 if i < r else 0) for i in range(k)]


class _Builder:
    def __init__(self, preset: Preset, seed: int, common: np.ndarray):
        self.p = preset
        self.seed = seed
        self.common = common
        self.K = len(preset.classes)
        self.B = len(preset.backgrounds)

    def counter_backgrounds(self, cls: np.ndarray, rng) -> np.ndarray:
        """A uniformly random background other than each class's common one."""
        off = rng.integers(1, self.B, size=len(cls))
        return (self.common[cls] + off) % self.B

    def natural_rows(self, n: int, rng, *, p_common: float | None, mode: str = "correlated"):
        """Natural rows: (cls, background). ``correlated``: exactly round(p*m) of each
        class's m rows on its common background, the rest on counter ones;
        ``independent``: uniform backgrounds; ``common``/``counter``: all of one kind."""
        cls = _balanced(n, self.K, rng)
        if mode == "independent":
            bg = rng.integers(0, self.B, size=n)
        elif mode == "common":
            bg = self.common[cls].copy()
        elif mode == "counter":
            bg = self.counter_backgrounds(cls, rng)
        else:
            bg = self.counter_backgrounds(cls, rng)
            for k in range(self.K):
                idx = np.flatnonzero(cls == k)
                n_common = int(round(p_common * len(idx)))
                chosen = rng.permutation(idx)[:n_common]
                bg[chosen] = self.common[k]
        return cls, bg

    def balanced_backgrounds(self, cls: np.ndarray, rng) -> np.ndarray:
        """Each class's rows cycle through every background from a random start, so every
        background holds a class's rows equally often (to within one)."""
        bg = np.empty(len(cls), np.int64)
        for k in range(self.K):
            idx = np.flatnonzero(cls == k)
            bg[idx] = (int(rng.integers(self.B)) + np.arange(len(idx))) % self.B
        return bg

    def rendition_rows(self, n: int, rng, styles: list[str]):
        """Rendition rows spread evenly over ``styles``: (cls, domain, background)."""
        counts = _spread(n, len(styles))
        doms = np.concatenate([np.full(c, self.p.domains.index(s), np.int64) for s, c in zip(styles, counts)]) \
            if n else np.zeros(0, np.int64)
        cls = _balanced(n, self.K, rng)
        painting = self.p.domains.index("painting") if "painting" in self.p.domains else -99
        # a painting repaints a photo scene, background included, so it sits on its class's common
        # background as often as a photo does (DomainNet's paintings of whales show the sea);
        # sketches, clipart and doodles have none
        common = rng.random(n) < self.p.p_common
        scene = np.where(common, self.common[cls], self.counter_backgrounds(cls, rng))
        bg = np.where(doms == painting, scene, NONE_BG)
        return cls, doms, bg

    def groups(self, cls, dom, bg) -> np.ndarray:
        g = np.full(len(cls), NO_GROUP, np.int64)
        nat = dom == 0
        g[nat] = np.where(bg[nat] == self.common[cls[nat]], COMMON, COUNTER)
        return g

    def finish(self, name, kind, nominal, cls, dom, bg, rng, *, dup_seed=None, dup_of=None) -> SplitPlan:
        n = len(cls)
        order = rng.permutation(n)
        cls, dom, bg = cls[order], dom[order], bg[order]
        seeds = sample_seeds(self.seed, name, np.arange(n))
        render_seed = seeds.copy()
        perturb = np.zeros(n, np.uint64)
        dups: list[str | None] = [None] * n
        if dup_seed is not None:
            dup_seed = dup_seed[order]
            dup_of = [dup_of[i] for i in order]
            is_dup = dup_seed != 0
            render_seed[is_dup] = dup_seed[is_dup]
            perturb[is_dup] = np.maximum(seeds[is_dup], np.uint64(1))
            dups = dup_of
        return SplitPlan(name=name, kind=kind, nominal_domain=nominal, cls=cls, domain=dom, background=bg,
                         group=self.groups(cls, dom, bg), seed=seeds, render_seed=render_seed, perturb=perturb,
                         dup_of=dups)

    def test_split(self, name: str, nominal: str, mode: str) -> SplitPlan:
        p, rng = self.p, _rng(self.seed, name)
        n = p.n_test
        if nominal == "natural":
            # the ID test set (mode "correlated") is drawn like the pool's photos and carries the planted
            # contamination; the group sets (common/counter) are pure
            n_bad = int(round(p.test_contamination * n)) if mode in ("correlated", "independent") else 0
            c1, b1 = self.natural_rows(n - n_bad, rng, p_common=p.p_common if mode == "correlated" else None,
                                       mode=mode)
            c2, d2, b2 = self.rendition_rows(n_bad, rng, list(p.rendition_styles))
            cls = np.concatenate([c1, c2])
            dom = np.concatenate([np.zeros(len(c1), np.int64), d2])
            bg = np.concatenate([b1, b2])
        else:
            n_bad = int(round(p.test_contamination * n))
            c1, d1, b1 = self.rendition_rows(n - n_bad, rng, [nominal])
            c2, b2 = self.natural_rows(n_bad, rng, p_common=None, mode="independent")
            cls = np.concatenate([c1, c2])
            dom = np.concatenate([d1, np.zeros(len(c2), np.int64)])
            bg = np.concatenate([b1, b2])
        return self.finish(name, "test", nominal, cls, dom, bg, rng)

    def domains_probe(self) -> SplitPlan:
        """``probe_size`` images of every domain, classes balanced, no contamination, and the photos
        and paintings of each class on every background equally often. Study 3 compares class-mean
        activations across domains; in the test sets ~90% of a class's photos and paintings sit
        on the common background it shares with another class, so their class means pair the
        classes by background, a pairing drawn anew with each collection seed that sketches,
        clipart and doodles (no background) do not share. Here the background averages out of
        every class mean."""
        p, rng = self.p, _rng(self.seed, DOMAINS_PROBE)
        cls, bg = [], []
        for d in p.domains:
            c = _balanced(p.probe_size, self.K, rng)
            cls.append(c)
            bg.append(self.balanced_backgrounds(c, rng) if d in ("natural", "painting") else np.full(len(c), NONE_BG))
        dom = np.repeat(np.arange(len(p.domains)), p.probe_size)
        return self.finish(DOMAINS_PROBE, "test", None, np.concatenate(cls), dom, np.concatenate(bg), rng)

    def reference(self) -> SplitPlan:
        """ImageNet-train's role. The ID test set (ImageNet-val's role) is drawn from the same
        distribution, so both carry the same share of renditions (``test_contamination``): with a
        perfectly clean reference, the ID set's few renditions got thresholds sim(t, R) from photos
        only and similarity matching removed every rendition of the pool."""
        p, rng = self.p, _rng(self.seed, "reference")
        n_bad = int(round(p.test_contamination * p.n_reference))
        c1, b1 = self.natural_rows(p.n_reference - n_bad, rng, p_common=p.p_common)
        c2, d2, b2 = self.rendition_rows(n_bad, rng, list(p.rendition_styles))
        return self.finish("reference", "reference", "natural", np.concatenate([c1, c2]),
                           np.concatenate([np.zeros(len(c1), np.int64), d2]), np.concatenate([b1, b2]), rng)

    def train(self, tests: dict[str, SplitPlan]) -> SplitPlan:
        p, rng = self.p, _rng(self.seed, "train")
        # planted near-duplicates of test images
        d_cls, d_dom, d_bg, d_seed, d_of = [], [], [], [], []
        for src in near_duplicate_sources(p):
            t = tests[src]
            nd = int(round(p.near_duplicate_rate * len(t)))
            idx = np.sort(rng.choice(len(t), size=nd, replace=False)) if nd else np.zeros(0, np.int64)
            d_cls.append(t.cls[idx]); d_dom.append(t.domain[idx]); d_bg.append(t.background[idx])
            d_seed.append(t.render_seed[idx]); d_of.extend(t.key(int(i)) for i in idx)
        n_dup = len(d_of)
        if n_dup > p.n_train:
            raise ValueError(f"{n_dup} planted near-duplicates do not fit in n_train={p.n_train}")
        n_reg = p.n_train - n_dup
        n_rend = int(round(p.train_rendition_share * n_reg))
        c1, b1 = self.natural_rows(n_reg - n_rend, rng, p_common=p.p_common)
        c2, dm2, b2 = self.rendition_rows(n_rend, rng, list(p.rendition_styles))
        cls = np.concatenate([c1, c2, *d_cls]).astype(np.int64)
        dom = np.concatenate([np.zeros(len(c1), np.int64), dm2, *d_dom]).astype(np.int64)
        bg = np.concatenate([b1, b2, *d_bg]).astype(np.int64)
        dup_seed = np.concatenate([np.zeros(n_reg, np.uint64), *d_seed]).astype(np.uint64)
        dup_of = [None] * n_reg + d_of
        return self.finish("train", "train", None, cls, dom, bg, rng, dup_seed=dup_seed, dup_of=dup_of)


def make_plan(preset: Preset, seed: int) -> CollectionPlan:
    K, B = len(preset.classes), len(preset.backgrounds)
    rng = _rng(seed, "collection")
    perm = rng.permutation(K)
    n_common = min(B, -(-K // preset.classes_per_common_background))
    used = rng.choice(B, size=n_common, replace=False)
    common = np.empty(K, np.int64)
    common[perm] = used[np.arange(K) % n_common]
    held_out = sorted(int(i) for i in rng.choice(K, size=preset.n_held_out, replace=False))
    b = _Builder(preset, seed, common)
    # test_natural is the in-distribution test (ImageNet-val's role): its photos sit on their class's common
    # background as often as the pool's do (p_common); test_common/test_counter isolate the two groups
    tests: dict[str, SplitPlan] = {"test_natural": b.test_split("test_natural", "natural", "correlated")}
    for s in preset.rendition_styles:
        tests[f"test_{s}"] = b.test_split(f"test_{s}", s, "rendition")
    tests["test_common"] = b.test_split("test_common", "natural", "common")
    tests["test_counter"] = b.test_split("test_counter", "natural", "counter")
    splits = {"train": b.train(tests), "reference": b.reference(), **tests, DOMAINS_PROBE: b.domains_probe()}
    splits = {name: splits[name] for name in split_names(preset)}
    return CollectionPlan(preset=preset, seed=seed, common_background=common, held_out=held_out, splits=splits)
