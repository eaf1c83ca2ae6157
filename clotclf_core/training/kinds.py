"""The two kinds of training — tile level and multiple-instance (MIL) — and which one a run's
settings ask for (:func:`kind_for`, from :attr:`~clotclf_core.training.settings.TrainSettings.form`).

The run (:mod:`clotclf_core.training.run`), the loop, cross-validation and the reports are shared;
a :class:`TrainingKind` bundles the few things that differ, each written in the kind's own module
(:mod:`clotclf_core.training.tiles`, :mod:`clotclf_core.training.mil`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from clotclf_core.training import mil, tiles
from clotclf_core.training.loop import Scored

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.training.settings import TrainSettings


@dataclass(frozen=True)
class TrainingKind:
    """What a run needs to know about one kind of training.

    - ``open_data(s)``: what the run trains on — a TileSet, or an object with the same reading
      API (``index``, ``slides``, ``meta``, ``root``, ``tile_size``, ``settings``, ``len()``);
    - ``records(s, data)``: config.json's sections describing the data (``tileset``, …), made
      before unlabelled slides are left out;
    - ``build(s, labels, input_size, data)`` makes the model; ``declared_size(s, model)`` the
      input side its backbone declares when the run should follow it (None: keep the tile side);
      ``dry_run(model, input_size, s)`` pushes one input through it;
    - ``make_task(s, model, data, train_patients, val_patients, fold, rt)`` builds a fold's
      :class:`~clotclf_core.training.loop.FoldTask` (it may also have ``score_patients``);
    - ``score(frame, probs, labels, monitor)`` turns predictions into
      :class:`~clotclf_core.training.loop.Scored` (also for pooled out-of-fold predictions);
    - ``rescore(s, fold_dir, data, patients, rt, progress, desc)`` scores a saved fold model.
    """

    name: str
    open_data: Callable[..., Any]
    records: Callable[..., dict[str, Any]]
    build: Callable[..., Any]
    declared_size: Callable[..., int | None]
    dry_run: Callable[..., None]
    make_task: Callable[..., Any]
    score: Callable[..., Scored]
    rescore: Callable[..., Scored | None]


TILE_KIND = TrainingKind("tile", tiles.open_data, tiles.records, tiles.build, tiles.declared_size, tiles.dry_run,
                         tiles.make_task, tiles.score_frame, tiles.rescore)

MIL_KIND = TrainingKind("mil", mil.open_data, mil.records, mil.build, mil.declared_size, mil.dry_run,
                        mil.make_task, mil.score_bag_frame, mil.rescore)


def kind_for(s: TrainSettings) -> TrainingKind:
    """The kind of training ``s`` asks for: multiple-instance with an aggregator (on features or end
    to end), else tile level."""
    return MIL_KIND if s.form.is_mil else TILE_KIND
