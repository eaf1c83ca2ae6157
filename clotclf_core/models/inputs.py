"""What a backbone expects as input: its normalisation (mean, std) and its native input size.

A backbone declares them as a timm-style ``pretrained_cfg`` mapping on the built module (every
timm model already carries one; see :class:`clotclf_core.plugin.protocols.Backbone`)::

    module.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 224, 224)}

Everything that feeds a backbone asks here instead of hard-coding ImageNet values: model
building (:func:`apply_to_model_config`, so the values land in the run's ``config.json``) and
``clotclf embed`` (recorded in ``features.json``). A backbone that declares nothing gets the
ImageNet mean / std and no input size of its own (the TileSet's tile size is used).

:func:`to_input` is the one path from uint8 tiles to a backbone's input (to the device,
:func:`normalize`, resized, channels-last): training, scoring, embedding and predicting use it.

No torch at import: the module is read while options are checked (torch is imported inside the two
functions that make tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from clotclf_core.models.config import ModelConfig
from clotclf_core.plugin.errors import PluginError
from clotclf_core.plugin.protocols import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class InputSpec:
    """A backbone's input: ``(pixel / 255 - mean) / std`` per RGB channel, at ``input_size`` px."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: the square side the weights were made for (``None``: none declared)
    input_size: int | None = None
    #: where the values come from: ``"backbone"`` (declared by the module) or ``"default"`` (ImageNet)
    source: str = "default"


def _triple(value: Any, what: str, name: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) == 1:  # timm allows one value for all channels
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise PluginError(
            f"backbone '{name}' declares pretrained_cfg['{what}'] = {value!r}; it must be 3 finite numbers "
            "(R, G, B on the 0-1 scale): fix the plugin (see docs/plugins.md, the tensor contract)"
        )
    return values  # type: ignore[return-value]


def _side(value: Any, name: str) -> int | None:
    if value is None:
        return None
    try:
        dims = [int(v) for v in value] if not isinstance(value, (int, float)) else [int(value)]
    except (TypeError, ValueError):
        dims = []
    hw = dims[-2:] if len(dims) >= 2 else dims
    if not hw or min(hw) <= 0 or len(set(hw)) != 1:
        raise PluginError(
            f"backbone '{name}' declares pretrained_cfg['input_size'] = {value!r}; clotclf needs a square "
            "(3, S, S) input size: fix the plugin (see docs/plugins.md, the tensor contract)"
        )
    return hw[0]


def input_spec(module: Any, name: str = "?") -> InputSpec:
    """The input ``module`` declares through ``pretrained_cfg`` (ImageNet defaults where it does not).

    Raises :class:`PluginError` (naming the backbone) when a declared value is unusable.
    """
    cfg = getattr(module, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping) or not any(k in cfg for k in ("mean", "std", "input_size")):
        return InputSpec()
    mean = _triple(cfg["mean"], "mean", name) if cfg.get("mean") is not None else IMAGENET_MEAN
    std = _triple(cfg["std"], "std", name) if cfg.get("std") is not None else IMAGENET_STD
    if min(std) <= 0:
        raise PluginError(f"backbone '{name}' declares a std of {std}: every channel's std must be positive; fix the plugin")
    return InputSpec(mean=mean, std=std, input_size=_side(cfg.get("input_size"), name), source="backbone")


def apply_to_model_config(cfg: ModelConfig, module: Any) -> ModelConfig:
    """``cfg`` with the backbone's declared mean / std (and input size) where ``cfg`` did not set them.

    Values given explicitly (a ``config.json`` being loaded, a caller that chose them) win, so a
    saved model always reloads with the normalisation it was trained with.
    """
    spec = input_spec(module, cfg.backbone)
    given = cfg.model_fields_set
    update: dict[str, Any] = {}
    if "mean" not in given:
        update["mean"] = spec.mean
    if "std" not in given:
        update["std"] = spec.std
    if "input_size" not in given and spec.input_size:
        update["input_size"] = spec.input_size
    return cfg.model_copy(update=update) if update else cfg


def normalize(images: "torch.Tensor", mean: Sequence[float], std: Sequence[float]) -> "torch.Tensor":
    """uint8 (B,3,H,W) -> float32 ``(x/255 - mean) / std`` on the tensor's device (ImageNet by default)."""
    import torch  # this module is read while options are checked, before any tensor exists

    m = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (images.float() - m) / s


def to_input(images: "torch.Tensor", mean: Sequence[float], std: Sequence[float], device: "torch.device", *,
             channels_last: bool = False, size: int | None = None, nhwc: bool = False) -> "torch.Tensor":
    """uint8 tiles -> what a backbone takes: float32 (B, 3, S, S) on ``device``, normalised (:func:`normalize`),
    resized to ``size`` (bilinear, antialiased) when given and the tiles are another size,
    channels-last in memory on request. ``nhwc``: the tiles come as (B, H, W, 3) (``TileSet.pixels``),
    not (B, 3, H, W) (the loaders'). The one path from pixels to a backbone: training, scoring,
    ``clotclf embed`` and ``clotclf predict`` all go through it."""
    import torch  # this module is read while options are checked, before any tensor exists

    x = images.to(device, non_blocking=True)
    if nhwc:
        x = x.permute(0, 3, 1, 2)
    x = normalize(x, mean, std)
    if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
#: the most bytes of model input (float32 images) one batch may hold when scoring: a model that takes
#: 2048-px tiles gets batches of 5, not of 64 (3.2 GB); at 224 px the bound is 1,426 tiles (no change)
BATCH_INPUT_BYTES = 256 * 2**20


def batch_for_input(batch_size: int, input_size: int, budget: int = BATCH_INPUT_BYTES) -> int:
    """``batch_size`` tiles, or fewer so that one batch of ``input_size``-px float32 RGB images stays
    within ``budget`` bytes (at least one): a model's declared input size bounds the memory a
    batch takes, whatever ``--batch-size`` says."""
    per_image = 3 * 4 * int(input_size) ** 2
    return max(1, min(int(batch_size), budget // max(per_image, 1)))
