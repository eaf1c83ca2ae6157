from __future__ import annotations

import timm
from torch import nn

from clotclf_core.plugin import ClotclfError


def build_poolformer(opts) -> nn.Module:
    try:
        model = timm.create_model(opts.variant, pretrained=opts.pretrained, num_classes=0, drop_path_rate=opts.drop_path_rate)
    except Exception as exc:
        if not opts.pretrained:
            raise
        raise ClotclfError(
            f"could not fetch timm's pretrained weights for '{opts.variant}' ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). This needs network access to the Hugging Face Hub "
            "once (or the weights already in its cache, or HF_ENDPOINT pointing to a mirror); otherwise "
            "use --backbone-opt pretrained=false"
        ) from None
    # timm's MetaFormer: model.stem, model.stages[0..3]; num_classes=0 makes forward() return pooled features
    if opts.freeze_stages:
        frozen = [model.stem, *list(model.stages)[: opts.freeze_stages]]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
    return model
