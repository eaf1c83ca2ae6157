"""Built-in classification heads: ``linear`` and ``mlp`` (the published one).

Importing this module imports no torch; the factories do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl


class LinearOptions(Options):
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the linear layer")


class MLPOptions(Options):
    hidden: int = Field(512, gt=0, description="width of the hidden layer")
    activation: Literal["relu", "gelu", "silu"] = Field("relu", description="activation after the batch norm")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout after the activation")


def build_linear(opts: LinearOptions, in_features: int, num_classes: int):
    from torch import nn

    return nn.Sequential(nn.Dropout(opts.dropout), nn.Linear(in_features, num_classes))


def build_mlp(opts: MLPOptions, in_features: int, num_classes: int):
    from ._mlp import MLPHead

    return MLPHead(in_features, num_classes, opts.hidden, opts.activation, opts.dropout)


@hookimpl
def clotclf_heads():
    return [
        ComponentSpec("head", "linear", "Dropout + Linear layer on the pooled features", LinearOptions, build_linear),
        ComponentSpec(
            "head",
            "mlp",
            "Linear -> BatchNorm -> activation -> Dropout -> Linear (the published head)",
            MLPOptions,
            build_mlp,
        ),
    ]
