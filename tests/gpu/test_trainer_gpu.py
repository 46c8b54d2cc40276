"""The trainer on CUDA: bf16 autocast and fp16 with a GradScaler train the tiny CLIP,
and the checkpoint written on the GPU loads on the CPU (weights_only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.trainer.handler import train
from services.trainer.spec import JobSpec

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from clipaudit.synth import generate

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate("tiny", out, seed=0, progress=False)
    return out


@pytest.mark.parametrize("precision", ["amp_bf16", "amp_fp16"])
def test_tiny_clip_trains_on_cuda(synth, tmp_path, precision):
    spec = JobSpec(data=[str(synth)], batch_size=32, samples=120 * 32, lr=1e-3, warmup_steps=5, device="cuda",
                   precision=precision, out=str(tmp_path / precision))
    r = train(spec, job_id=precision)
    assert np.isfinite(r.losses).all()
    assert np.mean(r.losses[-10:]) < 0.7 * np.mean(r.losses[:10])
    ck = torch.load(r.checkpoint.uri, map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in ck["model"].values())
