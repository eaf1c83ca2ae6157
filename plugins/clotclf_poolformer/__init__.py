"""PoolFormer (Yu et al., 2022, "MetaFormer is actually what you need for vision") via timm.

Variants of PoolFormer v1 and v2. The published STRIP AI recipe used ``poolformer_s36``.
Importing this module imports no torch or timm; :func:`build` does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl

VARIANTS = tuple(
    f"{family}_{size}" for family in ("poolformer", "poolformerv2") for size in ("s12", "s24", "s36", "m36", "m48")
)
Variant = Literal[VARIANTS]  # type: ignore[valid-type]


class PoolFormerOptions(Options):
    variant: Variant = Field("poolformer_s12", description="timm architecture (v1: poolformer_*, v2: poolformerv2_*)")
    pretrained: bool = Field(False, description="start from timm's ImageNet weights (downloads them once)")
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0, description="stochastic depth rate")
    freeze_stages: int = Field(0, ge=0, le=4, description="freeze the stem and the first N of the 4 stages")


def build(opts: PoolFormerOptions):
    from ._build import build_poolformer

    return build_poolformer(opts)


@hookimpl
def clotclf_backbones():
    return [
        ComponentSpec(
            "backbone",
            "poolformer",
            "PoolFormer v1/v2 (MetaFormer with pooling token mixer) from timm",
            PoolFormerOptions,
            build,
        )
    ]
