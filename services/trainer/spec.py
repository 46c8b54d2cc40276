"""The training job spec: one pydantic model, JSON-serialisable, ``extra="forbid"``.

It travels as ``spec_json`` in ``TrainJobRequested`` (Kafka) and ``SubmitJobRequest``
(gRPC), is built from flags by ``clipaudit train``, and is saved inside every
checkpoint together with the mixture counts it resolved to.

A subset is either one ``manifest`` or a ``mixture`` of manifests::

    {"mixture": [{"manifest": "m/natural", "count": 15000},
                 {"manifest": "m/rendition", "count": 5000}]}          # fixed counts
    {"mixture": [{"manifest": "m/natural", "weight": 3},
                 {"manifest": "m/rendition", "weight": 1}], "total": 20000}   # ratio 1:3 at a fixed total
    {"mixture": [{"manifest": "m/natural"},                               # all of it
                 {"manifest": "m/rendition", "count": 500}]}             # + k renditions

Neither: every sample of ``data`` is used.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clipaudit.errors import InvalidInput


class MixtureComponent(BaseModel):
    """One manifest of a mixture: ``count`` keys, or a ``weight`` share of ``total``,
    or (neither) all of its keys."""

    model_config = ConfigDict(extra="forbid")

    manifest: str
    count: int | None = Field(None, ge=0)
    weight: float | None = Field(None, gt=0)
    name: str | None = None  # label in the resolved counts; default: the manifest's file stem

    @model_validator(mode="after")
    def _one_of(self) -> "MixtureComponent":
        if self.count is not None and self.weight is not None:
            raise ValueError(f"mixture component {self.manifest!r}: give count or weight, not both")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        stem = self.manifest.rstrip("/").rsplit("/", 1)[-1]
        for ext in (".parquet", ".json"):
            stem = stem.removesuffix(ext)
        return stem


class JobSpec(BaseModel):
    """Everything a training run needs. Defaults fit the tiny model on the synthetic
    collection on a CPU; the same spec scales to ViT-B-32 on LAION shards on GPUs."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["clip", "supervised"] = "clip"
    # ---- data
    data: list[str] = Field(min_length=1, description="collection locations, shard URIs (.tar) or directories of shards")
    split: str = Field("train", description="split of a synthetic collection to read")
    manifest: str | None = None
    mixture: list[MixtureComponent] = Field(default_factory=list)
    total: int | None = Field(None, ge=1, description="mixture size shared out by the components' weights")
    # ---- model
    model: str = Field("clipaudit-tiny", description="open_clip name or JSON config (clip); timm name (supervised)")
    image_size: int | None = Field(None, ge=8, description="supervised: input size (default: the timm model's)")
    label_column: str = Field("class", description="supervised: json field holding the label")
    classes: list[str] | None = Field(None, description="supervised: label order (default: the collection's or the subset's)")
    # ---- schedule
    epochs: float | None = Field(None, gt=0)
    samples: int | None = Field(None, ge=1, description="train on this many samples instead of whole epochs")
    batch_size: int = Field(64, ge=1, description="per process; global batch = batch_size x world size x accum_steps")
    accum_steps: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    warmup_steps: int = Field(10, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "amp_bf16", "amp_fp16"] = "fp32"
    grad_checkpointing: bool = False
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int = Field(0, ge=0, description="CPU intra-op threads; 0: one per idle CPU when the run starts "
                                              "(OMP_NUM_THREADS, when set, wins); a resumed run keeps its count")
    # ---- input pipeline
    workers: int = Field(0, ge=0, description="data loader processes (streaming); 0 reads in the training process")
    cache: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory: decode the subset once into RAM; stream: read shards every epoch")
    cache_max_bytes: int = Field(4 << 30, ge=0, description="auto uses memory when the decoded subset fits")
    shuffle_buffer: int = Field(2000, ge=1)
    # ---- output
    out: str | None = Field(None, description="local dir or s3://bucket/prefix; default <service store>/trainer/<job id>")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints; 0: only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    evaluations: Any = Field(None, description="passed through to CheckpointWritten.evaluations_json for the evaluator")

    @field_validator("data", mode="before")
    @classmethod
    def _data_list(cls, v):
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> "JobSpec":
        if self.manifest and self.mixture:
            raise ValueError("give manifest or mixture, not both")
        if self.epochs is not None and self.samples is not None:
            raise ValueError("give epochs or samples, not both")
        if self.total is not None and not self.mixture:
            raise ValueError("total needs a mixture")
        if any(c.weight is not None for c in self.mixture) and self.total is None:
            raise ValueError("mixture weights need a total")
        if self.total is not None and not any(c.weight is not None for c in self.mixture):
            raise ValueError("a mixture total needs at least one weighted component")
        return self

    @property
    def components(self) -> list[MixtureComponent]:
        """The subset as a mixture (a single manifest is a one-component mixture)."""
        if self.mixture:
            return list(self.mixture)
        if self.manifest:
            return [MixtureComponent(manifest=self.manifest)]
        return []

    def schedule_text(self) -> str:
        return f"{self.samples} samples" if self.samples else f"{self.epochs or 1} epoch(s)"


def parse_spec(spec_json: str | bytes | dict) -> JobSpec:
    """JSON (or a dict) -> :class:`JobSpec`, or one clear :class:`InvalidInput` line."""
    try:
        obj = json.loads(spec_json) if isinstance(spec_json, (str, bytes)) else spec_json
    except ValueError as e:
        raise InvalidInput(f"job spec is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise InvalidInput("job spec must be a JSON object")
    try:
        return JobSpec.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise InvalidInput(f"invalid job spec: {where}: {first['msg']} ({e.error_count()} error(s))") from e
