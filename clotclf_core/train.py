"""Compatibility: training moved into the :mod:`clotclf_core.training` package (one module per
concern); ``from clotclf_core.train import train, TrainSettings, Trainer, ...`` keeps working."""

from __future__ import annotations

from typing import Any

from .training import AugmentSettings, TrainSettings, cli_options, overrides_from_cli, resolve_settings  # noqa: F401


def __getattr__(name: str) -> Any:
    from . import training

    return getattr(training, name)
