"""Study configs: what data plays which role, which rules curate which subsets, how
models are trained and evaluated. YAML or JSON, validated here (``extra="forbid"``).

The same config runs on the synthetic collection on a laptop and on LAION shards on a
cluster: only ``data`` and ``training`` change (see ``studies/*.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clipaudit.errors import InvalidInput, NotFound

STUDY_KINDS = ("similarity", "domains", "dg_cg", "backgrounds")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _distinct(seeds: list[int] | None) -> list[int] | None:
    """``training_seeds`` validation: a repeated seed would count one run twice."""
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ValueError(f"training_seeds must be distinct, got {seeds}")
    return seeds


class SynthData(_Strict):
    preset: str = "small"
    seed: int = 0


class DataConfig(_Strict):
    """Roles of the splits of one collection (``collection.json`` + WebDataset shards)."""

    collection: str | None = Field(None, description="location of an existing collection; else `synth`")
    synth: SynthData | None = Field(default_factory=SynthData)
    train: str = "train"
    reference: str = "reference"
    id_tests: list[str] = Field(default_factory=lambda: ["test_natural"])
    ood_tests: list[str] = Field(default_factory=lambda: ["test_sketch", "test_clipart", "test_painting", "test_quickdraw"])
    common: str = "test_common"
    counter: str = "test_counter"


class TrainingConfig(_Strict):
    """One training budget for every run of a study (fixed compute: a pruned subset is
    seen for the same number of samples as the full pool)."""

    model: str = "clipaudit-tiny"
    samples: int = Field(20_000, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    device: str = "auto"
    supervised_model: str = "resnet10t"
    supervised_samples: int = Field(20_000, ge=1)
    parallel_runs: int = Field(0, ge=0, description="embedded mode: training runs at once, each single-threaded; "
                                                    "0: one per CPU core on CPU, one on a GPU")
    noise_runs: int = Field(
        0, ge=0,
        description="retrain the full model this many more times, changing only the training seed (seed + "
                    "7919*i, i = 1..n: initialisation and sample order), and report how far each test set's "
                    "accuracy moves (the report's training_noise): the run-to-run spread that a verdict's interval "
                    "over test images does not include")
    threads: int = Field(0, ge=0, description="CPU intra-op threads of every run (0: the trainer's default, one per "
                                              "idle CPU; runs in the embedded worker pool always use 1). Thread counts "
                                              "change float rounding only, so they are not part of a run's id; pin 1 "
                                              "to compare embedded and distributed runs bit for bit")


class SimilarityModelConfig(_Strict):
    """The fixed model that embeds images for studies 1 and 2 (nearest-neighbour similarity, the
    natural/rendition classifier). The papers use a strong CLIP trained apart from the models under
    study; here it is a CLIP trained on the whole pool for ``samples`` (longer than the study runs,
    so its neighbours follow style and class rather than noise), or the study's full model when
    ``samples`` is null."""

    samples: int | None = Field(None, ge=1, description="training samples of the similarity model (null: use the "
                                                        "full model, trained with training.samples)")


class SimilarityStudy(_Strict):
    keep_fractions: list[float] = Field(default_factory=lambda: [0.85, 0.7, 0.5], min_length=3)
    prune_against: Literal["ood", "all"] = Field(
        "ood", description="near/far pruning ranks training images by similarity to the OOD test sets (as the "
                           "paper does for its OOD benchmarks) or to every test set, ID included")
    bins: int = 8
    matched: bool = True
    stratified: bool = Field(True, description="also prune near within each domain (the domain mix held fixed)")
    stratify_by: Literal["domain", "domain_group"] = Field(
        "domain", description="the training metadata column whose mix stratified pruning holds fixed: every "
                              "domain (style) or only natural vs rendition (when styles are not labelled)")
    gallery: int = 4


class DomainsStudy(_Strict):
    default_precision: float = 0.95
    strict_precision: float = 0.98
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5], min_length=4,
                                description="sweep A: rendition share at a fixed total")
    add_renditions: list[int] = Field(default_factory=lambda: [0, 100, 400, 1600], min_length=4,
                                      description="sweep B: renditions added to a fixed natural set")
    total: int | None = Field(None, description="sweep A total; default: the largest the clean natural and "
                              "rendition subsets fill at every ratio")
    natural: int | None = Field(None, ge=1, description="sweep B's fixed natural set (clean natural images); "
                                "default: sweep A's total, so sweep B's first run is sweep A's 0% run")
    training_seeds: list[int] | None = Field(
        None, min_length=1,
        description="train sweep B's mixtures once per seed and decide 'a few renditions give a large gain' on the "
                    "mean first-step gain with a t-interval over seeds (one run's interval covers its test images, "
                    "not retraining, which on the demo's budget moves the first step by as much as the gain); "
                    "default: the study's seed")

    @field_validator("training_seeds")
    @classmethod
    def _distinct_seeds(cls, v):
        return _distinct(v)


class DgCgStudy(_Strict):
    test_domain: str = "sketch"
    held_out_classes: list[str] | None = Field(None, description="default: the collection's held_out_classes")
    mechanistic_domains: list[str] = Field(default_factory=lambda: ["natural", "sketch", "clipart", "painting", "quickdraw"])
    mechanistic_test_sets: list[str] | None = Field(
        None, min_length=1,
        description="the test sets whose images CKA and neuron sharing compare, grouped by their domain column; "
                    "default: test_<domain> of each mechanistic domain. The synthetic collection's test_domains holds "
                    "every domain with each class's photos and paintings on every background alike: in the test sets "
                    "a class's photos mostly sit on the background it shares with one other class, which pairs "
                    "classes in the class means of two domains and not of the others. When set, the gap on the "
                    "default test sets is reported beside it")
    size: int | None = Field(
        None, ge=1,
        description="images per training mixture (natural images fill each mixture to it); default: every natural "
                    "image of the pool. Smaller mixtures give the rendition domains a larger share of the same "
                    "training budget")
    cg_domains: list[str] | None = Field(
        None,
        description="rendition domains that each get a CG high-diversity run of their own (the held-out classes "
                    "removed from that domain only), compared on their images of the held-out classes; the check "
                    "'quickdraw fails on unseen classes' needs quickdraw and one other. Default: the test domain and "
                    "quickdraw; [] turns it off. The test domain's run is the study's CG high run")
    training_seeds: list[int] | None = Field(
        None, min_length=1,
        description="train the five mixtures once per seed and decide each DG/CG verdict on the mean effect with a "
                    "t-interval over seeds (a single run's interval covers its test images, not the run-to-run "
                    "spread, which on the demo's budget is as large as the effects); default: the study's seed")

    class_folds: Literal[1, 2] = Field(
        1,
        description="2: study 3 runs a second time with the complement of the held-out classes held out (natural-only "
                    "and leave-out-domain do not depend on them and are shared), and every DG/CG verdict pools the "
                    "two folds' images, so each class is held out once. One fold of 5 classes decides a verdict on 5 "
                    "per-class outcomes, which move with the training seed; about 6 more runs per training seed")

    @field_validator("training_seeds")
    @classmethod
    def _distinct_seeds(cls, v):
        return _distinct(v)


class BackgroundsStudy(_Strict):
    one_vs_k: list[int] = Field(default_factory=lambda: [5])
    supervised_common_share: float | None = Field(
        0.2, gt=0, le=1,
        description="the ImageNet-style classifier trains on natural images subsampled so that this share sits on "
                    "its class's common background (ImageNet is curated: its backgrounds are less tied to classes "
                    "than LAION's, the paper's explanation of the gap; the synthetic pool has ~90%); null: every "
                    "natural image, as in the pool")


class StudyConfig(_Strict):
    name: str = "clipaudit-demo"
    studies: list[Literal["similarity", "domains", "dg_cg", "backgrounds"]] = Field(
        default_factory=lambda: list(STUDY_KINDS), min_length=1)
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    similarity_model: SimilarityModelConfig = Field(default_factory=SimilarityModelConfig)
    similarity: SimilarityStudy = Field(default_factory=SimilarityStudy)
    domains: DomainsStudy = Field(default_factory=DomainsStudy)
    dg_cg: DgCgStudy = Field(default_factory=DgCgStudy)
    backgrounds: BackgroundsStudy = Field(default_factory=BackgroundsStudy)

    @model_validator(mode="after")
    def _data_source(self) -> "StudyConfig":
        if not self.data.collection and not self.data.synth:
            raise ValueError("data needs a collection location or a synth preset")
        return self


def load_config(path: str | Path | None = None, **overrides) -> StudyConfig:
    """Read a YAML/JSON config (or the default one) and apply dotted overrides."""
    raw: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            builtin = Path(__file__).parent / "configs" / f"{path}.yaml"
            if builtin.is_file():
                p = builtin
            else:
                raise NotFound(f"study config {path} does not exist")
        text = p.read_text()
        try:
            if p.suffix == ".json":
                raw = json.loads(text)
            else:
                import yaml

                raw = yaml.safe_load(text) or {}
        except Exception as e:  # noqa: BLE001
            raise InvalidInput(f"study config {p} does not parse: {e}") from e
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *head, last = dotted.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = value
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise InvalidInput(f"study config: {'.'.join(map(str, first['loc']))}: {first['msg']}") from e
