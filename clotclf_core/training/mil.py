"""Multiple-instance (bag-level) training: a batch is bags of tiles, one bag per slide.

:class:`BagTask` is the :class:`~clotclf_core.training.loop.FoldTask` of a MIL run, on the same
loop, splits, checkpoints, early stopping, cross-validation and reports as tile-level training
(:mod:`clotclf_core.training.tiles`):

- **on features** (``--features F``): bags of a feature store's tile features
  (:class:`clotclf_core.features.bags.FeatureBagLoader`), the model an aggregator alone;
- **end to end** (``--tiles T --backbone B``): bags of tile images (:class:`clotclf_core.features.bags.TileBagDataset`,
  augmented, DataLoader workers), backbone and aggregator trained together.

Each training bag holds ``bag_size`` tiles drawn anew every epoch (see :mod:`clotclf_core.features.bags`);
validation and test score every tile of each slide (:class:`clotclf_core.scoring.inference.BagScorer`).
Metrics are at slide and patient level (patient = mean of its slides), no tile level; early
stopping watches the patient-level weighted log loss like every run. What a run needs to open the
data, build, check, score and reload MIL models is here too; :mod:`clotclf_core.training.kinds`
bundles it as the MIL kind of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from clotclf_core.features.bags import (
    FeatureBagLoader,
    Slides,
    TileBagDataset,
    bag_size_for,
    collate_bags,
    fit_standardisation,
    no_slides_error,
    open_feature_bags,
)
from clotclf_core.features.store import encoder_record
from clotclf_core.models.build import build_model
from clotclf_core.models.config import ModelConfig
from clotclf_core.models.saved import load_model
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.scoring.inference import BagScorer, score_bags
from clotclf_core.seeds import loader_generator, mix
from clotclf_core.tiling.dataset import (
    EpochSampler,
    build_transform,
    cap_tiles_per_slide,
    make_loader,
    rows_of_patients,
)
from clotclf_core.tiling.stain import stain_record
from clotclf_core.training.loop import Scored, scored
from clotclf_core.training.losses import make_loss
from clotclf_core.training.records import tileset_record
from clotclf_core.training.tiles import declared_size as _backbone_declared_size
from clotclf_core.training.tiles import open_tiles

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from clotclf_core.models.runtime import Runtime
    from clotclf_core.training.settings import TrainSettings


def score_bag_frame(frame: "pd.DataFrame", probs: "np.ndarray", labels: Sequence[str], monitor: str) -> Scored:
    """Slide predictions -> metrics and the monitored patient loss (:func:`.loop.scored`)."""
    return scored(frame, probs, labels, monitor, "slide")


def eval_batch_size(s: "TrainSettings") -> int:
    """Bags per scoring batch (on features); tiles per backbone batch end to end."""
    if s.eval_batch_size:
        return s.eval_batch_size
    return 2 * s.batch_size if s.form.on_features else 2 * s.batch_size * bag_size_for(s.form, s.bag_size)


class BagTask:
    """One fold of MIL training on ``data`` (a :class:`clotclf_core.features.bags.FeatureBags` or a TileSet)."""

    def __init__(self, s: "TrainSettings", model, data: Any, train_patients: Sequence[str],
                 val_patients: Sequence[str], fold: int, rt: "Runtime"):
        self.s, self.rt, self.data = s, rt, data
        cfg = model.config
        self.labels, self.mean, self.std = list(cfg.labels), cfg.mean, cfg.std
        self.on_features = s.form.on_features
        rows = cap_tiles_per_slide(data.index, rows_of_patients(data.index, train_patients), s.max_tiles_per_slide,
                                   mix(s.seed, fold))
        self.train_slides = Slides(data.index, train_patients, self.labels, rows=rows)
        if len(self.train_slides) == 0:
            raise no_slides_error(fold, "training")
        if (self.train_slides.targets < 0).any():
            raise ClotclfError(f"fold {fold}: some training slides have a label outside {self.labels}; leave them out")
        missing = [lab for i, lab in enumerate(self.labels) if not (self.train_slides.targets == i).any()]
        if missing:
            raise ClotclfError(f"fold {fold}: the training split has no slide of class {', '.join(missing)}; use fewer "
                               "folds or add data")
        self.bag_size = bag_size_for(s.form, s.bag_size)
        seed = mix(s.seed, fold)
        if self.on_features and model.standardises:  # the training patients' statistics, never validation / test
            model.set_standardisation(*fit_standardisation(data, self.train_slides))
        if self.on_features:
            self.train_loader = FeatureBagLoader(data, self.train_slides, self.bag_size, s.batch_size, seed, rt.rank,
                                                 rt.world_size)
            self._sampler = self.train_loader
        else:
            dataset = TileBagDataset(data, self.train_slides, self.bag_size,
                                     build_transform(cfg.input_size, data.tile_size, s.augment), stain=cfg.stain_normalise)
            self._sampler = EpochSampler(len(dataset), seed, True, rt.rank, rt.world_size)
            self.train_loader = make_loader(dataset, self._sampler, s.batch_size, s.workers,
                                            pin_memory=rt.device.type == "cuda",
                                            drop_last=len(self._sampler) > s.batch_size,
                                            generator=loader_generator(s.seed, fold), collate_fn=collate_bags)
        self.eval_batch_size = eval_batch_size(s)
        self.val = BagScorer(data, Slides(data.index, val_patients, self.labels), self.eval_batch_size, s.workers, rt, cfg)
        weight = None
        if s.class_weights == "balanced":
            counts = torch.bincount(torch.as_tensor(self.train_slides.targets), minlength=len(self.labels)).float()
            weight = (counts.sum() / (len(self.labels) * counts.clamp(min=1))).to(rt.device)
        self.loss_fn = make_loss(s, weight)

    def set_epoch(self, epoch: int) -> None:
        self._sampler.set_epoch(epoch)

    def to_input(self, bags):
        """A loader's bags on the device: features as they are; images (B, N, 3, S, S) normalised."""
        if self.on_features:
            return bags.to(self.rt.device, non_blocking=True)
        b, n = bags.shape[:2]
        x = self.rt.to_input(bags.reshape(b * n, *bags.shape[2:]), self.mean, self.std)
        return x.reshape(b, n, *x.shape[1:])

    def step_loss(self, net, batch) -> tuple[Any, int]:
        """The bag-level loss, plus the aggregator's own term when it has one (``auxiliary_loss``,
        plugin API 2.1: CLAM's instance clustering, DSMIL's critical-instance loss)."""
        bags, mask, targets = batch
        targets = targets.to(self.rt.device, non_blocking=True)
        logits, extra = net(self.to_input(bags), mask.to(self.rt.device, non_blocking=True), targets=targets)
        loss = self.loss_fn(logits.float(), targets)
        return (loss if extra is None else loss + extra.float()), len(targets)

    def validate(self, model, progress: bool, desc: str = "validate") -> Scored:
        probs = self.val.probs(model, progress, desc)
        return score_bag_frame(self.val.frame, probs, self.labels, self.s.monitor)

    def score_patients(self, model, patients: Sequence[str], progress: bool, desc: str) -> Scored | None:
        """Any other patients of the data (the held-out test set)."""
        return _score(self.s, model, self.data, patients, self.rt, progress, desc)


def _score(s: "TrainSettings", model, data: Any, patients: Sequence[str], rt: "Runtime", progress: bool,
           desc: str) -> Scored | None:
    if not patients:
        return None
    slides = Slides(data.index, patients, list(model.labels))
    if len(slides) == 0:
        return None
    frame, scores = score_bags(model, data, slides, eval_batch_size(s), s.workers, rt, progress, desc)
    return score_bag_frame(frame, scores.probs, model.labels, s.monitor)


def rescore(s: "TrainSettings", fold_dir: Path, data: Any, patients: Sequence[str], rt: "Runtime",
             progress: bool, desc: str) -> Scored | None:
    """A finished fold's saved model on some patients (for cross-validation after a resume)."""
    if not patients:
        return None
    return _score(s, rt.place(load_model(fold_dir)), data, patients, rt, progress, desc)


def mil_model_config(s: "TrainSettings", labels: list[str], input_size: int, data: Any):
    """The one place a MIL run's model description is assembled: the aggregator, and the feature
    store's encoder record (on features) or the backbone (end to end)."""
    common = {"kind": "mil", "aggregator": s.aggregator, "aggregator_options": s.aggregator_options, "labels": labels}
    if s.form.on_features:
        enc = encoder_record(data.store)  # a damaged record is blamed on features.json, not on the aggregator
        normalisation = {"mean": enc.mean, "std": enc.std} if enc.mean and enc.std else {}  # imported: unknown
        return ModelConfig(**common, encoder=enc, input_size=enc.input_size, **normalisation,
                           standardise=s.standardise == "on")
    return ModelConfig(**common, backbone=s.backbone, backbone_options=s.backbone_options, input_size=input_size,
                       stain_normalise=stain_record(s.stain_normalise))


def build(s: "TrainSettings", labels: list[str], input_size: int, data: Any):
    return build_model(mil_model_config(s, labels, input_size, data))


def declared_size(s: "TrainSettings", model) -> int | None:
    """The input side to follow: on features the encoder's, as recorded; end to end the backbone's
    (:func:`clotclf_core.training.tiles.declared_size`)."""
    if model.config.form.on_features:
        return int(model.config.input_size)
    return _backbone_declared_size(s, model)


def dry_run(model, size: int, s: "TrainSettings") -> None:
    """One dry forward pass of a two-tile bag, so a model that cannot take it fails with a message."""
    if model.config.form.on_features:
        x = torch.zeros(1, 2, model.config.encoder.num_features)
    else:
        x = torch.zeros(1, 2, 3, size, size)
    try:
        with torch.no_grad():
            model.eval()(x, torch.ones(1, 2, dtype=torch.bool))
    except ClotclfError:
        raise
    except Exception as exc:
        what = f"backbone '{s.backbone}' with aggregator '{s.aggregator}'" if s.backbone else f"aggregator '{s.aggregator}'"
        hint = (f"Set --input-size to what the backbone expects (or --backbone-opt img_size={size})" if s.backbone
                else f"Check its options with `clotclf show-plugin {s.aggregator}`")
        raise ClotclfError(f"{what} cannot take a bag of {tuple(x.shape[2:])} tiles ({type(exc).__name__}: "
                           f"{str(exc)[:200]}). {hint}") from None
    finally:
        model.train()


def open_data(s: "TrainSettings") -> Any:
    """What a MIL run trains on: the feature store of ``--features`` (checked against ``--tiles`` when
    given too), or the TileSet of ``--tiles`` (end to end)."""
    if s.form.on_features:
        return open_feature_bags(s.features, s.tiles)
    return open_tiles(s.tiles)


def records(s: "TrainSettings", data: Any) -> dict[str, Any]:
    """config.json's sections describing the data: the TileSet's, and on features the feature store's."""
    if s.form.on_features:
        return {"tileset": data.tileset_record(), "features": data.features_record()}
    return {"tileset": tileset_record(data)}


def make_task(s: "TrainSettings", model, data: Any, train_patients: Sequence[str], val_patients: Sequence[str],
              fold: int, rt: "Runtime") -> BagTask:
    return BagTask(s, model, data, train_patients, val_patients, fold, rt)
