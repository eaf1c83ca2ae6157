"""A training run: check everything, write the split and settings, train each fold, write its run directory.

``train(settings)`` is what ``clotclf train`` runs:

1. the TileSet (``--tiles``, or the demo cohort generated and tiled once under ``--demo-dir``)
   and everything that can refuse the run, checked before the first file is written
   (:mod:`clotclf_core.training.prepare`);
2. a patient-level split (:mod:`clotclf_core.training.splits`), saved with the run;
3. per fold, a :class:`~clotclf_core.training.loop.Trainer` on the kind's task (tile-level by
   default), the best epoch's weights restored, the test patients scored, and the fold's run
   directory written (:mod:`clotclf_core.training.report`);
4. with ``--fold all``, the cross-validation summary (:mod:`clotclf_core.training.crossval`).

Ctrl-C stops with exit code 130 and says which checkpoint was kept and how to resume.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import yaml

from clotclf_core.models.runtime import pick_runtime
from clotclf_core.plugin.errors import Interrupted
from clotclf_core.plugin.io import write_guard, write_text
from clotclf_core.plugin.lock import output_lock
from clotclf_core.seeds import seed_model_init
from clotclf_core.training.checkpoints import LAST, RESUME_HINT, checkpoint_state
from clotclf_core.training.crossval import cross_validate, reload_fold
from clotclf_core.training.demo import prepare_demo
from clotclf_core.training.distributed import barrier, broadcast, init_distributed
from clotclf_core.training.kinds import TILE_KIND, TrainingKind, kind_for
from clotclf_core.training.loop import Trainer
from clotclf_core.training.prepare import check_model_options, check_out, default_out, prepare_run
from clotclf_core.training.records import config_sections, data_record, tileset_record
from clotclf_core.training.report import fold_result, run_calibration, write_fold
from clotclf_core.training.settings import TrainSettings, settings_dict
from clotclf_core.training.splits import save_split
from clotclf_core.training.tracking import Trackers, check_trackers

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.models.runtime import Runtime
    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.training.splits import Split


# ============================================================================ training


def train_fold(s: TrainSettings, ts: "TileSet", split: "Split", k: int, fold_dir: Path, labels: list[str],
               rt: "Runtime", resume: bool, progress: bool,
               after_train_epoch: Callable[[int, Trainer], None] | None = None,
               records: dict[str, Any] | None = None, kind: TrainingKind = TILE_KIND,
               input_size: int | None = None, tracker: "Trackers | None" = None) -> dict[str, Any]:
    """Train and evaluate fold ``k`` into ``fold_dir`` (a complete, loadable run directory).
    ``records``: config.json's ``tileset`` and ``data`` sections (default: from ``ts``);
    ``input_size``: the model's (default: ``--input-size``, else the tile side; ``train`` passes
    what :func:`~clotclf_core.training.prepare.check_model` resolved); ``tracker``: gets every
    epoch's history row (the ones a resume restored first)."""
    fold = split.folds[k]
    input_size = input_size or s.input_size or ts.tile_size
    seed_model_init(s.seed, k)
    model = kind.build(s, labels, input_size, ts)  # checked by prepare_run's check_model
    task = kind.make_task(s, model, ts, fold.train, fold.val, k, rt)
    trainer = Trainer(s, model, task, k, fold_dir, rt, progress)
    if resume:
        trainer.resume(settings_dict(s))
    if tracker is not None and rt.is_main:
        prefix = f"fold_{k}/" if s.fold == "all" else ""
        for row in trainer.history:  # epochs a resume restored: a tracked run is always complete
            tracker.epoch(prefix, row)
        trainer.on_epoch = lambda row: tracker.epoch(prefix, row)
    trainer.fit(after_train_epoch)

    val = trainer.validate(desc="final validation")
    test = task.score_patients(trainer.model, split.test, progress and rt.is_main, "test") if split.test else None
    # one fold: --calibrate / --clip fitted on its validation patients (--fold all: on the out-of-fold ones, later)
    calibration = run_calibration(s, val.frame, val.probs, labels, "validation") if s.fold != "all" else None
    result = fold_result(s, trainer, val, test, records["data"] if records else None, calibration)
    if rt.is_main:
        records = records or {"tileset": tileset_record(ts), "data": data_record(s, ts)}
        write_fold(fold_dir, trainer, result, val, test, labels, config_sections(s, split, k, ts, records))
    barrier(rt)
    result["_val"], result["_test"] = val, test
    return result


def _interrupted(run_dir: Path, folds: list[int], fold_all: bool) -> Interrupted:
    """What was kept when Ctrl-C stopped training, and how to go on."""
    kept = []
    for k in folds:
        fold_dir = run_dir / f"fold_{k}" if fold_all else run_dir
        state = checkpoint_state(fold_dir / "checkpoints" / LAST)
        if (fold_dir / "metrics.json").is_file() and (fold_dir / "model.safetensors").is_file():
            kept.append(f"fold {k} finished")
        elif state is not None:
            kept.append(f"fold {k} up to epoch {int(state['epoch']) + 1} ({fold_dir / 'checkpoints' / LAST})")
    what = "; ".join(kept) if kept else "the split and settings only (no epoch had finished)"
    return Interrupted(
        f"training interrupted (Ctrl-C). Kept in '{run_dir}': {what}. Continue with the same command plus --resume "
        f"(or: clotclf train --config {run_dir / 'training.yaml'} --out {run_dir} --resume); it gives the result the "
        "uninterrupted run would have given")


def train(s: TrainSettings, resume: bool = False, progress: bool = True,
          after_train_epoch: Callable[[int, Trainer], None] | None = None,
          kind: TrainingKind | None = None, track: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run the training described by ``s``; returns the summary (what ``--json`` prints).
    ``kind``: tile-level or multiple-instance (default: what ``s`` asks for, :func:`~.kinds.kind_for`);
    ``track``: ``mlflow`` and / or ``tensorboard`` (:mod:`clotclf_core.training.tracking`)."""
    check_model_options(s)  # before the demo cohort is generated (minutes)
    trackers = check_trackers(track)  # a missing extra is refused before anything runs
    kind = kind or kind_for(s)
    if s.threads:
        torch.set_num_threads(s.threads)
    rank, world, local_rank = init_distributed(s.device)
    rt = pick_runtime(s.device, s.precision, s.channels_last, rank, world, local_rank)
    t_start = time.perf_counter()
    if s.tiles is None and s.features is None:
        tiles = prepare_demo(s.demo_dir, progress) if rt.is_main else None
        tiles = str(broadcast(rt, str(tiles) if tiles else None))
        s = s.model_copy(update={"tiles": tiles})
    if not s.out:
        s = s.model_copy(update={"out": broadcast(rt, default_out(s))})
    run_dir = Path(s.out)
    # one writer per run folder: a second `train` (or `train --resume`) into it is refused at once;
    # the main rank holds the lock for the whole run (other DDP ranks and loader workers are part of it)
    with output_lock(run_dir, "--out") if rt.is_main else contextlib.nullcontext():
        return _train_in(s, run_dir, rt, resume, progress, after_train_epoch, kind, t_start, trackers)


def _train_in(s: TrainSettings, run_dir: Path, rt: "Runtime", resume: bool, progress: bool,
              after_train_epoch: Callable[[int, "Trainer"], None] | None, kind: TrainingKind,
              t_start: float, trackers: tuple[str, ...]) -> dict[str, Any]:
    """:func:`train` once the run folder is locked and the data known."""
    # every rank runs the checks (they only read), so a refusal stops all ranks alike; and nothing
    # is written before they pass, so a refused command leaves no half-started run to block the next
    check_out(s, run_dir, resume)
    run = prepare_run(s, run_dir, resume, kind)
    ts, split, labels = run.ts, run.split, run.labels
    if rt.is_main:
        for text in run.warnings:
            print(f"Warning: {text}.", file=sys.stderr)
        for text in run.notes if progress else []:
            print(f"Note: {text}.", file=sys.stderr)
    barrier(rt)
    if rt.is_main:
        with write_guard("the split and settings", run_dir, after=RESUME_HINT):
            save_split(split, run_dir / "split.json")
            write_text(run_dir / "training.yaml", yaml.safe_dump(settings_dict(s), sort_keys=False))
    barrier(rt)

    folds = list(range(s.folds)) if s.fold == "all" else [int(s.fold)]
    results = []
    tracker = Trackers(trackers, run_dir, settings_dict(s), run.records.get("data", {}).get("synthetic")) \
        if trackers and rt.is_main else None
    try:
        for k in folds:
            fold_dir = run_dir / f"fold_{k}" if s.fold == "all" else run_dir
            finished = (fold_dir / "metrics.json").is_file() and (fold_dir / "model.safetensors").is_file()
            if resume and s.fold == "all" and finished:
                results.append(reload_fold(s, ts, split, k, fold_dir, rt, progress, kind))
                continue
            results.append(train_fold(s, ts, split, k, fold_dir, labels, rt, resume, progress, after_train_epoch,
                                      run.records, kind, run.input_size, tracker))
        summary: dict[str, Any] = {"run_dir": str(run_dir), ("features" if s.form.on_features else "tileset"): str(ts.root),
                                   "labels": labels,
                                   "notes": run.warnings + run.notes,
                                   "folds": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]}
        if s.fold == "all":
            summary |= cross_validate(s, run_dir, split, results, labels, rt, run.records, kind)
    except BaseException as exc:
        if tracker is not None:
            tracker.finish(run_dir, None, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        if isinstance(exc, KeyboardInterrupt):
            raise _interrupted(run_dir, folds, s.fold == "all") from None
        raise
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    if tracker is not None:
        tracker.finish(run_dir, summary)
    return summary
