"""Training: settings, the shared loop, tile-level tasks, checkpoints, cross-validation, reports.

Modules, one concern each:

==================  ==========================================================================
``settings``        :class:`TrainSettings` (every option / YAML field) and how they resolve
``options``         ``clotclf train``'s click options, generated from the settings
``demo``            the demo preset and the demo cohort's TileSet, made once
``seeds``           where every random number comes from (bit-identical across workers / resume)
``distributed``     the process group under torchrun, collectives, ``--nproc``
``checkpoints``     safetensors checkpoints: weights + optimizer + trainer state
``loop``            :class:`Trainer`: the epoch loop for any :class:`FoldTask`
``tiles``           :class:`TileTask` (a batch = tile images) and :data:`TILE_KIND`
``prepare``         checks that only read (:func:`prepare_run`) and the data records
``run``             :func:`train`: split, folds, run directory, Ctrl-C
``crossval``        ``--fold all``: mean ± std, out-of-fold, test ensemble
``report``          metrics.json (held-out headline first), the fold's files, model card, table
==================  ==========================================================================

Importing this package imports pydantic only; the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .options import cli_options, overrides_from_cli
from .settings import AugmentSettings, TrainSettings, resolve_settings

_LAZY = {
    "train": "run", "train_fold": "run", "prepare_run": "prepare", "check_model": "prepare", "check_model_options": "prepare",
    "RunData": "prepare", "config_sections": "prepare",
    "Trainer": "loop", "FoldTask": "loop", "Scored": "loop", "cosine_factor": "loop",
    "TileTask": "tiles", "TILE_KIND": "tiles", "TrainingKind": "tiles", "tile_trainer": "tiles", "model_config": "tiles",
    "read_checkpoint": "checkpoints", "write_checkpoint": "checkpoints",
    "init_distributed": "distributed", "launch_distributed": "distributed",
    "prepare_demo": "demo", "apply_demo_preset": "demo",
    "report_table": "report", "headline": "report",
    "mix": "seeds", "seed_everything": "seeds",
}

__all__ = ["AugmentSettings", "TrainSettings", "cli_options", "overrides_from_cli", "resolve_settings", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
