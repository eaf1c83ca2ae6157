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
