"""Backbones declare their input (normalisation, size); model building uses and records it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from clotclf_core.models.config import ModelConfig
from clotclf_core.models.inputs import InputSpec, apply_to_model_config, input_spec
from clotclf_core.plugin import IMAGENET_MEAN, PluginError


def test_nothing_declared_is_imagenet():
    spec = input_spec(SimpleNamespace(), "x")
    assert spec == InputSpec() and spec.mean == IMAGENET_MEAN and spec.input_size is None and spec.source == "default"


def test_timm_style_declaration():
    spec = input_spec(SimpleNamespace(pretrained_cfg={"mean": [0.5], "std": (0.25, 0.25, 0.25), "input_size": (3, 448, 448)}))
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.25,) * 3 and spec.input_size == 448 and spec.source == "backbone"


@pytest.mark.parametrize("cfg, what", [
    ({"mean": (0.5, 0.5)}, "mean"),
    ({"std": ("a", 1, 1)}, "std"),
    ({"std": (0.0, 1.0, 1.0)}, "std"),
    ({"input_size": (3, 224, 256)}, "square"),
])
def test_unusable_declaration_names_the_backbone(cfg, what):
    with pytest.raises(PluginError, match=f"backbone 'mine'.*{what}"):
        input_spec(SimpleNamespace(pretrained_cfg=cfg), "mine")


def test_explicit_values_win_and_missing_ones_are_filled():
    module = SimpleNamespace(pretrained_cfg={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 96, 96)})
    filled = apply_to_model_config(ModelConfig(backbone="b"), module)
    assert filled.mean == (0.5, 0.5, 0.5) and filled.input_size == 96
    given = apply_to_model_config(ModelConfig(backbone="b", mean=(0.1, 0.2, 0.3), input_size=64), module)
    assert given.mean == (0.1, 0.2, 0.3) and given.std == (0.5, 0.5, 0.5) and given.input_size == 64
    # a config read back from config.json states everything, so it reloads with what it trained with
    reloaded = ModelConfig.model_validate(json.loads(given.model_dump_json()))
    assert apply_to_model_config(reloaded, SimpleNamespace(pretrained_cfg={"mean": (0.9, 0.9, 0.9)})).mean == (0.1, 0.2, 0.3)


DECLARING = """
from clotclf_core.plugin import hookimpl
from clotclf_core.plugin import ComponentSpec, NoOptions

def build(opts):
    import torch
    class Tiny(torch.nn.Module):
        num_features = 4
        pretrained_cfg = {"mean": (0.7, 0.6, 0.5), "std": (0.1, 0.2, 0.3), "input_size": (3, 40, 40)}
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)
        def forward(self, x):
            return self.fc(x.mean((2, 3)))
    return Tiny()

@hookimpl
def clotclf_backbones():
    return [ComponentSpec("backbone", "declaring", "declares its input", NoOptions, build)]
"""


def test_third_party_backbone_declaration_is_used_and_recorded(fake_dist, tmp_path):
    from clotclf_core.models.build import build_model
    from clotclf_core.models.saved import save_model
    from clotclf_core.plugin_manager import reset_manager

    fake_dist("fake-declaring", "fake_declaring", DECLARING)
    reset_manager()
    model = build_model(ModelConfig(backbone="declaring"))
    assert model.config.mean == (0.7, 0.6, 0.5) and model.config.input_size == 40
    save_model(model, tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert recorded["mean"] == [0.7, 0.6, 0.5] and recorded["std"] == [0.1, 0.2, 0.3] and recorded["input_size"] == 40


def test_to_input_is_the_encoders_and_the_loaders_path():
    """One path from uint8 tiles to a backbone: the encoder's NHWC tiles (resized) and the loaders'
    NCHW batches come out as the same normalised float32 tensor."""
    import numpy as np
    import torch

    from clotclf_core.features.encoder import Encoder
    from clotclf_core.models.inputs import normalize, to_input
    from clotclf_core.models.runtime import Runtime

    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    nchw = tiles.permute(0, 3, 1, 2)
    expected = (nchw.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    cpu = torch.device("cpu")
    torch.testing.assert_close(to_input(nchw, mean, std, cpu), expected)
    assert torch.equal(to_input(tiles, mean, std, cpu, nhwc=True), normalize(nchw, mean, std))
    assert torch.equal(Runtime(cpu).to_input(nchw, mean, std), normalize(nchw, mean, std))
    resized = to_input(tiles, mean, std, cpu, nhwc=True, size=8, channels_last=True)
    assert resized.shape == (2, 3, 8, 8) and resized.is_contiguous(memory_format=torch.channels_last)
    enc = Encoder(module=torch.nn.Identity(), backbone="x", options={}, spec=InputSpec(mean=mean, std=std), input_size=8,
                  weights_sha256="0" * 64, device=cpu)
    assert torch.equal(enc.to_input(tiles), to_input(tiles, mean, std, cpu, nhwc=True, size=8))
    assert torch.equal(to_input(tiles, mean, std, cpu, nhwc=True, size=16), normalize(nchw, mean, std))  # same size: as is
