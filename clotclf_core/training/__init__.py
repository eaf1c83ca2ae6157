"""Training: settings, the shared loop, the two kinds of training, checkpoints, cross-validation, reports.

Modules, one concern each:

=======================  ==========================================================================
``settings``             :class:`TrainSettings` (every option / YAML field, its ``form``), the demo preset, how they resolve
``options``              ``clotclf train``'s click options, generated from the settings
``demo``                 the demo cohort's TileSet, made once
``distributed``          the process group under torchrun, collectives
``launch``               ``--nproc N``: the checks once, then N processes under torch's launcher
``checkpoints``          safetensors checkpoints: weights + optimizer + trainer state
``losses``               the training loss (cross-entropy or the class-weighted log loss)
``loop``                 :class:`Trainer`: the epoch loop for any :class:`FoldTask`
``tiles``                tile-level training: :class:`TileTask` (a batch = tile images)
``mil``                  multiple-instance training: :class:`BagTask` (a batch = bags, one per slide)
``kinds``                :class:`TrainingKind` (tile or MIL) and which one the settings ask for
``records``              config.json's records of the data (TileSet, data used, split)
``prepare``              checks that only read (:func:`prepare_run`)
``splits``               patient-level (or centre-level) folds and the held-out test set
``run``                  :func:`train`: split, folds, run directory, Ctrl-C
``crossval``             ``--fold all``: mean ± std, out-of-fold, test ensemble
``report``               metrics.json (held-out headline first), the fold's files, model card, table
``tracking``             ``--track mlflow / tensorboard``: parameters, epochs, headline, artifacts
``pretrain``             ``clotclf pretrain``: self-supervised pre-training on the shared loop
``pretrain_settings``    its settings, each method's published recipe filling the gaps
``ssl``                  DINO / MoCo v3 / SimCLR from lightly's heads and losses
``ssl_data``             the views of the tiles and the :class:`PretrainTask`
=======================  ==========================================================================

Importing this package imports nothing; the CLI reads ``settings`` and ``options`` at start-up
(pydantic only), the rest when a command runs.
"""
