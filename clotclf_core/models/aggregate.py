"""Aggregators (multiple-instance pooling): build one from its plugin, call it, check what it returns.

The contract is :class:`clotclf_core.plugin.protocols.Aggregator`: bags (B, N, F) float + mask (B, N)
bool -> logits (B, C), and with ``return_attention=True`` also attention (B, N) or ``None``; an
aggregator with ``auxiliary_loss`` also gives the training step a loss term of its own
(:func:`run_for_training`). :func:`run_aggregator` is how the core calls one, so a plugin that breaks the contract fails with
a message naming it instead of a shape error three steps later. The two masked reductions every
aggregator needs are the plugin API's (:mod:`clotclf_core.plugin.masked`).

This module imports torch; import it only where bags are pooled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clotclf_core.plugin.errors import ClotclfError, PluginError
from clotclf_core.plugin_manager import get_manager


def build_aggregator(name: str, options: Any, in_features: int, num_classes: int, spec: Any = None) -> nn.Module:
    """Build aggregator ``name`` (options validated first) for ``in_features`` features and ``num_classes``.

    ``spec``: this provider's component (a saved run's recorded one) instead of looking ``name`` up;
    ``options``: a dict, or the already validated options object. The module gets
    ``clotclf_record``: name, validated options, plugin / distribution / version, in_features,
    num_classes (what a run's config.json records to rebuild it).
    """
    mgr = get_manager()
    spec = spec if spec is not None else mgr.get("aggregator", name)
    opts = options if isinstance(options, spec.options) else spec.validate_options(dict(options or {}))
    module = spec.factory(opts, int(in_features), int(num_classes))
    if not isinstance(module, nn.Module):
        raise PluginError(f"aggregator '{name}' (plugin {spec.plugin}) built a {type(module).__name__}, not a torch.nn.Module; fix the plugin")
    if not hasattr(module, "has_attention"):
        raise PluginError(
            f"aggregator '{name}' (plugin {spec.plugin}) does not say whether it has attention: set "
            "`has_attention = True | False` on the module (see docs/plugins.md)"
        )
    module.clotclf_record = {"name": spec.name, "options": opts.model_dump(mode="json"), **mgr.distribution_of(spec),
                             "in_features": int(in_features), "num_classes": int(num_classes)}
    return module


def has_auxiliary_loss(module: nn.Module) -> bool:
    """Whether the aggregator adds a loss term of its own in training (plugin API 2.1)."""
    return getattr(module, "auxiliary_loss", False) is True


def _name(module: nn.Module) -> str:
    record = getattr(module, "clotclf_record", None)
    return record["name"] if isinstance(record, dict) else type(module).__name__


def run_aggregator(module: nn.Module, bags: torch.Tensor, mask: torch.Tensor | None = None,
                   return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits (B, C), attention (B, N) or None)`` for ``bags`` (B, N, F) and ``mask`` (B, N).

    ``mask=None`` means every position is a real tile. Raises :class:`PluginError` when the
    aggregator returns something else than the contract says.
    """
    if bags.dim() != 3:
        raise ClotclfError(f"a bag batch must be (bags, tiles, features); got shape {tuple(bags.shape)}")
    b, n, _ = bags.shape
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=bags.device)
    if mask.shape != (b, n) or mask.dtype != torch.bool:
        raise ClotclfError(f"the mask must be bool (bags, tiles) = {(b, n)}; got {mask.dtype} {tuple(mask.shape)}")
    out = module(bags, mask, return_attention=return_attention)
    attention = None
    if return_attention:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise PluginError(f"aggregator '{_name(module)}' must return (logits, attention) when return_attention=True")
        logits, attention = out
    else:
        logits = out
    record = getattr(module, "clotclf_record", None)
    c = record.get("num_classes") if isinstance(record, dict) else None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != b or (c and logits.shape[1] != c):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise PluginError(f"aggregator '{_name(module)}' returned logits of shape {shape}; the contract is (bags, classes) = ({b}, {c or 'C'})")
    if attention is not None and (not isinstance(attention, torch.Tensor) or attention.shape != (b, n)):
        shape = tuple(attention.shape) if isinstance(attention, torch.Tensor) else type(attention).__name__
        raise PluginError(f"aggregator '{_name(module)}' returned attention of shape {shape}; the contract is (bags, tiles) = ({b}, {n})")
    return logits, attention


def run_for_training(module: nn.Module, bags: torch.Tensor, mask: torch.Tensor | None,
                     targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits (B, C), extra loss or None)``: the training step's call. An aggregator with
    ``auxiliary_loss`` gets ``targets`` (long (B,)) and returns ``(logits, extra)``, ``extra`` a
    scalar the task adds to its loss; any other aggregator is called as :func:`run_aggregator` does."""
    if not has_auxiliary_loss(module):
        return run_aggregator(module, bags, mask)[0], None
    b, n, _ = bags.shape
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=bags.device)
    out = module(bags, mask, targets=targets)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise PluginError(f"aggregator '{_name(module)}' has auxiliary_loss, so forward(bags, mask, targets=...) must "
                          "return (logits, extra_loss)")
    logits, extra = out
    record = getattr(module, "clotclf_record", None)
    c = record.get("num_classes") if isinstance(record, dict) else None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != b or (c and logits.shape[1] != c):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise PluginError(f"aggregator '{_name(module)}' returned logits of shape {shape}; the contract is (bags, classes) = ({b}, {c or 'C'})")
    if not isinstance(extra, torch.Tensor) or extra.numel() != 1:
        what = tuple(extra.shape) if isinstance(extra, torch.Tensor) else type(extra).__name__
        raise PluginError(f"aggregator '{_name(module)}' returned an extra loss of {what}; it must be a scalar tensor")
    return logits, extra.reshape(())


def require_attention(module: nn.Module) -> None:
    """Refuse (one clear line) an aggregator without attention where attention is needed (heatmaps)."""
    if not getattr(module, "has_attention", False):
        raise ClotclfError(
            f"aggregator '{_name(module)}' has no attention weights, so there is nothing to draw as an attention "
            "heatmap: use an attention aggregator (e.g. abmil), or ask for class-probability heatmaps only"
        )


