"""Build an encoder of the zoo (:mod:`.zoo`): the timm model its card describes, its tokens pooled
the way the preset says (imports timm and torch)."""

from __future__ import annotations

import torch

from clotclf_core.plugin.encoders import pool_tokens

from . import PresetOptions, TimmOptions
from ._build import build_timm


class PooledTokens(torch.nn.Module):
    """A timm ViT whose tokens (``forward_features``) are pooled into tile features: the class
    token, the mean of the patch tokens (those after ``num_prefix_tokens``: class and register
    tokens), or both side by side."""

    def __init__(self, trunk: torch.nn.Module, pooling: str):
        super().__init__()
        self.trunk = trunk
        self.pooling = pooling
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 1))
        width = int(getattr(trunk, "embed_dim", trunk.num_features))
        self.num_features = 2 * width if pooling == "cls_mean" else width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_tokens(self.trunk.forward_features(x), self.pooling, self.num_prefix_tokens)


def timm_options(preset, opts: PresetOptions) -> TimmOptions:
    """What the timm backbone builds for ``preset``: the Hub repo with the card's options (weights
    loaded, or a recorded snapshot rebuilt without network), else the offline architecture."""
    if opts.pretrained or opts.hub_snapshot is not None:
        model = f"hf-hub:{preset.info.repo}" + (f"@{opts.revision}" if opts.revision else "")
        return TimmOptions(model=model, pretrained=opts.pretrained, hub_snapshot=opts.hub_snapshot, **preset.hub_kwargs)
    return TimmOptions(model=preset.arch, pretrained=False, **preset.offline)


def build_preset(preset, opts: PresetOptions) -> torch.nn.Module:
    trunk = build_timm(timm_options(preset, opts))
    recorded = getattr(trunk, "clotclf_record_options", None)
    info = preset.info
    module = trunk if preset.pooled else PooledTokens(trunk, opts.pooling)
    size = info.input_size
    # the card's normalisation and input size, whatever the repo's config.json says (docs/plugins-builtin.md)
    module.pretrained_cfg = {**dict(getattr(trunk, "pretrained_cfg", None) or {}), "mean": info.mean, "std": info.std,
                             "input_size": (3, size, size)}
    if recorded:
        module.clotclf_record_options = recorded
    return module
