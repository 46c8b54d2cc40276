"""clipaudit.convnet: the timm tower the tiny CLIP config names."""

from __future__ import annotations

import pytest
import torch

from clipaudit.convnet import StridedConvNet, cpu_prefers_channels_last, register
from clipaudit.models import load_clip


def test_tiny_clip_is_built_on_the_registered_tower():
    loaded = load_clip("clipaudit-tiny")
    trunk = loaded.model.visual.trunk
    assert isinstance(trunk, StridedConvNet)
    assert [m[0].stride for m in trunk.stages] == [(2, 2)] * 4          # 32 -> 16 -> 8 -> 4 -> 2
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        feats = trunk.forward_features(x)
        emb = loaded.model.encode_image(x)
    assert feats.shape == (3, 128, 2, 2)
    assert emb.shape == (3, loaded.dim) == (3, 64)


def test_supervised_classifier_from_timm_by_name():
    import timm

    register()
    register()  # idempotent: a second call neither fails nor re-registers
    assert timm.list_models("clipaudit_*") == ["clipaudit_convnet_tiny"]
    model = timm.create_model("clipaudit_convnet_tiny", pretrained=False, num_classes=7)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    model.reset_classifier(0)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("clipaudit_convnet_tiny", pretrained=True)


def test_channels_last_computes_the_same_embeddings():
    loaded = load_clip("clipaudit-tiny", seed=3)
    model = loaded.model.eval()
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        ref = model.encode_image(x)
        model = model.to(memory_format=torch.channels_last)
        out = model.encode_image(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_only_towers_that_ask_get_channels_last_on_cpu():
    assert cpu_prefers_channels_last(load_clip("clipaudit-tiny").model)
    assert not cpu_prefers_channels_last(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
