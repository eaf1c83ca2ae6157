"""Tile-level training: a batch is images of single tiles, labelled with their slide's label.

:class:`TileTask` is the :class:`~clotclf_core.training.loop.FoldTask` for one fold: the training
loader (memory-mapped tiles, seeded augmentation, its own loader generator), the cross-entropy
step, and validation through :class:`clotclf_core.scoring.inference.TileScorer` (tile probabilities ->
mean per slide -> mean per patient, the monitored loss at patient level); and what a run needs to
open the data, build, check, score and reload tile-level models (a bag-level run,
:mod:`clotclf_core.training.mil`, provides the same), which :mod:`clotclf_core.training.kinds`
bundles as the tile-level kind of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from clotclf_core.models.backbones import backbone_spec
from clotclf_core.models.build import build_model
from clotclf_core.models.config import ModelConfig
from clotclf_core.models.inputs import input_spec
from clotclf_core.models.saved import load_model
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.scoring.inference import TileScorer, score_tiles
from clotclf_core.seeds import loader_generator, mix
from clotclf_core.tiling.dataset import (
    EpochSampler,
    TileDataset,
    build_transform,
    cap_tiles_per_slide,
    make_loader,
    rows_of_patients,
)
from clotclf_core.tiling.stain import stain_record
from clotclf_core.tiling.tileset import open_tileset
from clotclf_core.training.loop import Scored, Trainer, scored
from clotclf_core.training.losses import make_loss
from clotclf_core.training.records import tileset_record

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from clotclf_core.models.runtime import Runtime
    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.training.settings import TrainSettings


def score_frame(frame: "pd.DataFrame", probs: "np.ndarray", labels: Sequence[str], monitor: str) -> Scored:
    """Tile predictions -> metrics and the monitored patient loss (:func:`.loop.scored`)."""
    return scored(frame, probs, labels, monitor, "tile")


class TileTask:
    """One fold of tile-level training: ``train_rows`` / ``val_rows`` are positions in ``tileset.index``."""

    def __init__(self, s: "TrainSettings", model, tileset: "TileSet", train_rows, val_rows, fold: int, rt: "Runtime"):
        self.s, self.rt, self.tileset = s, rt, tileset
        cfg = model.config
        self.labels, self.input_size, self.mean, self.std = list(cfg.labels), cfg.input_size, cfg.mean, cfg.std
        self.eval_batch_size = s.eval_batch_size or 2 * s.batch_size
        self.train_ds = TileDataset(tileset, train_rows, self.labels, build_transform(self.input_size, tileset.tile_size, s.augment),
                                    stain=cfg.stain_normalise)
        if (self.train_ds.targets < 0).any():  # prepare_run leaves unlabelled tiles out; a direct caller may not
            raise ClotclfError(
                f"fold {fold}: {int((self.train_ds.targets < 0).sum())} training tile(s) have a label outside "
                f"{self.labels} (or none); leave them out of the training rows"
            )
        self.sampler = EpochSampler(len(self.train_ds), mix(s.seed, fold), True, rt.rank, rt.world_size)
        drop_last = len(self.sampler) > s.batch_size  # no tiny last batch, unless one batch is all there is
        self.train_loader = make_loader(self.train_ds, self.sampler, s.batch_size, s.workers,
                                        pin_memory=rt.device.type == "cuda", drop_last=drop_last,
                                        generator=loader_generator(s.seed, fold))
        self.val = TileScorer(tileset, val_rows, self.labels, self.input_size, self.eval_batch_size, s.workers, rt,
                              stain=cfg.stain_normalise)
        weight = None
        if s.class_weights == "balanced":
            counts = torch.bincount(torch.as_tensor(self.train_ds.targets), minlength=len(self.labels)).float()
            weight = (counts.sum() / (len(self.labels) * counts.clamp(min=1))).to(rt.device)
        self.class_weight = weight
        self.loss_fn = make_loss(s, weight)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def step_loss(self, net, batch) -> tuple[Any, int]:
        images, targets, _rows = batch
        x = self.rt.to_input(images, self.mean, self.std)
        y = targets.to(self.rt.device, non_blocking=True)
        return self.loss_fn(net(x).float(), y), len(targets)

    def validate(self, model, progress: bool, desc: str = "validate") -> Scored:
        probs = self.val.probs(model, progress, desc)
        return score_frame(self.val.frame, probs, self.labels, self.s.monitor)

    def score_patients(self, model, patients: Sequence[str], progress: bool, desc: str) -> Scored | None:
        """Any other patients of the TileSet (the held-out test set), with a loader made for them."""
        if not patients:
            return None
        rows = rows_of_patients(self.tileset.index, patients)
        frame, probs = score_tiles(model, self.tileset, rows, self.eval_batch_size, self.s.workers, self.rt, progress, desc)
        return score_frame(frame, probs, self.labels, self.s.monitor)


def tile_trainer(s: "TrainSettings", model, tileset: "TileSet", train_rows, val_rows, fold: int, fold_dir: Path,
                 rt: "Runtime", progress: bool = True):
    """A :class:`~clotclf_core.training.loop.Trainer` on a :class:`TileTask` (what the benchmark and tests build)."""
    return Trainer(s, model, TileTask(s, model, tileset, train_rows, val_rows, fold, rt), fold, fold_dir, rt, progress)


def _training_rows(s: "TrainSettings", ts: "TileSet", patients: Sequence[str], fold: int):
    rows = rows_of_patients(ts.index, patients)
    return cap_tiles_per_slide(ts.index, rows, s.max_tiles_per_slide, mix(s.seed, fold))


def make_task(s: "TrainSettings", model, ts: "TileSet", train_patients: Sequence[str], val_patients: Sequence[str],
               fold: int, rt: "Runtime") -> TileTask:
    train_rows = _training_rows(s, ts, train_patients, fold)
    present = sorted(set(ts.index["label"].to_numpy()[train_rows]))
    missing = [lab for lab in model.labels if lab not in present]
    if missing:
        raise ClotclfError(
            f"fold {fold}: the training split has no tile of class {', '.join(missing)}; use fewer folds or add data"
        )
    return TileTask(s, model, ts, train_rows, rows_of_patients(ts.index, val_patients), fold, rt)


def rescore(s: "TrainSettings", fold_dir: Path, ts: "TileSet", patients: Sequence[str], rt: "Runtime",
             progress: bool, desc: str) -> Scored | None:
    """A finished fold's saved model on some patients (for cross-validation after a resume)."""
    if not patients:
        return None
    model = rt.place(load_model(fold_dir))
    rows = rows_of_patients(ts.index, patients)
    frame, probs = score_tiles(model, ts, rows, s.eval_batch_size or 2 * s.batch_size, s.workers, rt, progress, desc)
    return score_frame(frame, probs, model.labels, s.monitor)


def model_config(s: "TrainSettings", labels: list[str], input_size: int):
    """The one place a tile-level run's model description is assembled from its settings."""
    return ModelConfig(backbone=s.backbone, backbone_options=s.backbone_options, head=s.head,
                       head_options=s.head_options, labels=labels, input_size=input_size,
                       stain_normalise=stain_record(s.stain_normalise))


def build(s: "TrainSettings", labels: list[str], input_size: int, data: Any = None):
    return build_model(model_config(s, labels, input_size))


def sized_by_input(s: "TrainSettings") -> bool:
    """The backbone takes an ``img_size`` option the user left unset: it is built for the input
    size (the tiles' side), so it declares no size of its own worth following."""
    spec = backbone_spec(s.backbone)  # a plugin's, or a pre-training run (run:PATH)
    return "img_size" in spec.options.model_fields and s.backbone_options.get("img_size") is None


def declared_size(s: "TrainSettings", model) -> int | None:
    """The input side the built backbone declares (timm's pretrained_cfg), when the run should follow it."""
    if s.input_size or sized_by_input(s):
        return None
    return input_spec(model.backbone, s.backbone).input_size


def open_tiles(path: str) -> "TileSet":
    """The TileSet of ``--tiles``, with a clear error for what is not one (see :mod:`clotclf_core.inputs`)."""
    return open_tileset(path, "--tiles")


def open_data(s: "TrainSettings") -> "TileSet":
    """What a tile-level run trains on: the TileSet of ``--tiles``."""
    return open_tiles(s.tiles)


def records(s: "TrainSettings", ts: "TileSet") -> dict[str, Any]:
    """config.json's sections describing the data: the TileSet's."""
    return {"tileset": tileset_record(ts)}


def dry_run(model, size: int, s: "TrainSettings") -> None:
    """One dry forward pass, so a backbone that cannot take this input size fails with a message."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise ClotclfError(
            f"backbone '{s.backbone}' cannot take {size}x{size} inputs ({type(exc).__name__}: {str(exc)[:200]}). "
            "Set --input-size to what it expects, or its image-size option (e.g. --backbone-opt img_size="
            f"{size}; see `clotclf show-plugin {s.backbone}`)"
        ) from None
    finally:
        model.train()
