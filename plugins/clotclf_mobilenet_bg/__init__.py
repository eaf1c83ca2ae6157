"""``mobilenetv3``: a learned background / tissue patch filter, and ``clotclf train-filter``.

Otsu thresholding keeps anything darker than glass: pen marks, dust, out-of-focus edges, folds.
A small CNN trained on labelled patches (the public STRIP AI background set: ~20k patches, half
tissue, half background) rejects those too. This plugin provides

- the filter ``mobilenetv3``: score = P(tissue) from a timm MobileNetV3, batched, on the GPU
  when there is one; tiles scoring >= ``threshold`` are kept;
- the command ``clotclf train-filter DATA --out RUN`` that trains it from ``DATA/tissue`` and
  ``DATA/background`` patch folders and writes a run directory (safetensors + config.json).

It imports only the public plugin API, like a third-party plugin. It trains with its own short
loop rather than the core's trainer, which is not part of that API and trains another kind of
model (why, in :mod:`clotclf_mobilenet_bg._train` and docs/plugins-builtin.md).

Importing this module imports neither torch nor timm; the factory and the command do.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl
from clotclf_core.plugin.spec import RunDirectory

FILTER_NAME = "mobilenetv3"
KIND = "patch_filter"
#: fixed label order: logit 0 = background, logit 1 = tissue (the score)
LABELS = ("background", "tissue")
ARCHES = (
    "mobilenetv3_small_050",
    "mobilenetv3_small_075",
    "mobilenetv3_small_100",
    "mobilenetv3_large_075",
    "mobilenetv3_large_100",
)
DEFAULT_ARCH = "mobilenetv3_small_100"
Arch = Literal[ARCHES]  # type: ignore[valid-type]


class MobileNetFilterOptions(Options):
    weights: Optional[RunDirectory] = Field(
        None, description="run directory from `clotclf train-filter` (or a registry model name); required"
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="keep tiles whose P(tissue) >= threshold")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda or cuda:N")
    batch_size: int = Field(128, gt=0, le=65536, description="tiles per forward pass")
    input_size: Optional[int] = Field(
        None, ge=16, le=2048, description="side tiles are resized to; default: the size the weights were trained at (224 unless changed)"
    )
    arch: Optional[Arch] = Field(None, description="expected architecture; default: whatever the weights record")


def build_filter(opts: MobileNetFilterOptions):
    from ._filter import MobileNetFilter

    return MobileNetFilter(opts)


@hookimpl
def clotclf_patch_filters():
    return [
        ComponentSpec(
            "filter",
            FILTER_NAME,
            "MobileNetV3 background/tissue classifier; score = P(tissue) (train with `clotclf train-filter`)",
            MobileNetFilterOptions,
            build_filter,
        )
    ]


@hookimpl
def clotclf_add_commands(cli):
    from ._cli import train_filter_command

    cli.add_command(train_filter_command)
