"""Example third-party plugin: a ``resnet`` backbone from timm.

This module is what the entry point names. It must stay light (no torch / timm import here):
clotclf imports it at startup to list plugins. The heavy imports happen in :func:`build`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl

#: the clotclf plugin-API versions this plugin was written for (checked when clotclf loads it)
CLOTCLF_PLUGIN_API = ">=2.0,<3"


class ResNetOptions(Options):
    variant: Literal["resnet10t", "resnet14t", "resnet18", "resnet34", "resnet50"] = Field(
        "resnet10t", description="timm ResNet architecture"
    )
    pretrained: bool = Field(False, description="start from timm's ImageNet weights (needs network once)")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the pooled features")


def build(opts: ResNetOptions):
    import timm

    # num_classes=0: timm returns pooled features and sets model.num_features, which is
    # exactly the clotclf backbone contract.
    return timm.create_model(opts.variant, pretrained=opts.pretrained, num_classes=0, drop_rate=opts.drop_rate)


@hookimpl
def clotclf_backbones():
    return [ComponentSpec("backbone", "resnet", "ResNet from timm (example third-party plugin)", ResNetOptions, build)]
