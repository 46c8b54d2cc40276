"""The embedder on a GPU: the fast path (pinned uint8 batches, bf16 autocast,
channels_last, batch size probed from free memory) gives the same embeddings as
fp32 on CPU, and fills the device. Skipped without CUDA, never run on CPU instead."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from clipaudit.embeddings import EmbeddingSet
from tests.unit.test_embedder_logic import good_samples, write_shard

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]


@pytest.fixture
def shards(tmp_path):
    for i in range(3):
        write_shard(tmp_path / "data" / f"gpu-{i:06d}.tar", good_samples(100 * i, 40, size=(64, 48)))
    return tmp_path / "data"


def test_gpu_set_matches_cpu_set_and_fills_the_device(shards, tmp_path):
    import torch

    from clipaudit.models import load_clip
    from services.embedder.handler import EmbedderHandler
    from services.embedder.metrics import EmbedderMetrics

    cpu = EmbedderHandler(load_clip("clipaudit-tiny", device="cpu"), workers=2, worker_kind="process")
    registry = CollectorRegistry()
    gpu = EmbedderHandler(load_clip("clipaudit-tiny", device="cuda"), workers=2, worker_kind="process",
                          metrics=EmbedderMetrics(registry))
    assert gpu.encoder.amp in (torch.bfloat16, torch.float16) and gpu.encoder.channels_last
    assert gpu.batch_size >= 512      # probed from free memory, not the CPU default of 256
    cpu.embed_dataset(shards, tmp_path / "cpu")
    s = gpu.embed_dataset(shards, tmp_path / "gpu", text=True)
    assert s.images == 120 and s.parts_written == 3
    a, ma = EmbeddingSet.open(tmp_path / "cpu").load()
    b, mb = EmbeddingSet.open(tmp_path / "gpu").load()
    assert ma["key"].tolist() == mb["key"].tolist()
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=2e-3)
    cos = (a * b).sum(1)
    assert cos.min() > 0.99, cos.min()      # bf16 autocast vs fp32: same directions
    assert registry.get_sample_value("clipaudit_embedder_gpu_memory_bytes", {"kind": "peak"}) > 0


def test_vit_b_32_runs_under_autocast_with_a_large_batch():
    import torch

    from clipaudit.models import load_clip
    from services.embedder.logic import BatchEncoder, choose_batch_size

    lm = load_clip("ViT-B-32", device="cuda")
    b = choose_batch_size(lm)
    assert b >= 1024
    enc = BatchEncoder(lm)
    x = torch.randint(0, 256, (b, 224, 224, 3), dtype=torch.uint8).pin_memory()
    z = enc.encode(x)
    assert z.shape == (b, 512) and np.isfinite(z).all()
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-3)
