"""The training loop of one fold, independent of what a batch is.

:class:`Trainer` owns what every kind of training shares: AdamW (no weight decay on biases and
norms), the LR schedule (cosine with warm-up stepped per batch, reduce-on-plateau, or constant),
gradient clipping between ``backward`` and ``step``, bf16 autocast, DistributedDataParallel,
``torch.compile``, per-epoch dropout seeds (each rank its own), early stopping on a monitored
validation loss, checkpoints every epoch, bit-identical ``--resume`` and restoring the best
epoch's weights from their file (``keep_last``: the last epoch's, for self-supervised pre-training).

What a batch *is* belongs to a :class:`FoldTask`: its loader, its per-step loss, and how its
validation predictions become slide / patient metrics. :class:`clotclf_core.training.tiles.TileTask`
is the tile-level one (a batch = images of single tiles); a bag-level (multiple-instance) task
plugs in the same way, without a second loop.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import write_csv, write_guard
from clotclf_core.seeds import seed_epoch
from clotclf_core.training.checkpoints import LAST, RESUME_HINT, read_checkpoint, write_checkpoint, write_weights
from clotclf_core.training.distributed import barrier, sum_over_ranks
from clotclf_core.training.settings import differences, settings_dict

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    import torch

    from clotclf_core.models.runtime import Runtime
    from clotclf_core.training.settings import TrainSettings


@dataclass
class Scored:
    """A model's predictions on some patients, scored.

    ``frame`` has one row per predicted unit (a tile, or a bag) with at least ``image_id``,
    ``patient_id`` and ``label``; ``probs`` is (len(frame), classes); ``metrics`` is what
    metrics.json records (``{"tile"?, "slide", "patient"}``); ``loss`` the monitored loss (lower is
    better); ``history`` the extra history.csv columns of this epoch.
    """

    frame: "pd.DataFrame"
    probs: "np.ndarray"
    metrics: dict[str, Any]
    loss: float
    history: dict[str, Any] = field(default_factory=dict)


def scored(frame: "pd.DataFrame", probs: "np.ndarray", labels: Sequence[str], monitor: str, level: str) -> Scored:
    """Predictions of ``level`` units (``tile`` or ``slide``) -> metrics at that level and above,
    the monitored patient loss and this epoch's history columns."""
    from clotclf_core.scoring.evaluate import patient_loss, score, score_slides

    metrics = score(frame, probs, labels) if level == "tile" else score_slides(frame, probs, labels)
    loss = patient_loss(frame, probs, labels, weighted=monitor == "patient_weighted_log_loss")
    patient, unit = metrics["patient"], metrics[level]
    history = {
        "val_patient_weighted_log_loss": round(patient["weighted_log_loss"], 6),
        "val_patient_log_loss": round(patient["log_loss"], 6),
        f"val_{level}_log_loss": round(unit["log_loss"], 6),
        "val_patient_balanced_accuracy": patient["balanced_accuracy"],
        "val_patient_roc_auc": patient["roc_auc"],
        f"val_{level}_accuracy": unit["accuracy"],
    }
    return Scored(frame, probs, metrics, loss, history)


class FoldTask(Protocol):
    """What one fold trains on and how it is scored (see :class:`~clotclf_core.training.tiles.TileTask`)."""

    #: batches of one epoch on this rank; ``len()`` is the number of steps
    train_loader: Iterable[Any]

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch (re-seeds the shuffle / augmentation of that epoch)."""

    def step_loss(self, net: "torch.nn.Module", batch: Any) -> tuple["torch.Tensor", int]:
        """Forward one batch through ``net``: (loss with its graph, samples in the batch)."""

    def validate(self, model: "torch.nn.Module", progress: bool, desc: str) -> Scored:
        """Score the fold's validation patients (early stopping's measure is ``Scored.loss``)."""

    # optional: ``after_backward()``, called between backward and the gradient clipping / optimizer step


def make_optimizer(model, s: "TrainSettings", device_type: str):
    """AdamW over timm's ``param_groups_weight_decay``: weight decay on weight matrices and conv
    kernels only; biases, norms and other 1-D parameters are left alone (decaying a LayerNorm gain
    towards 0 is never what anyone wants). Fused on CUDA."""
    import torch  # torch and timm only once a trainer is built
    from timm.optim import param_groups_weight_decay

    # timm lists the undecayed group first; checkpoints hold the optimizer state decay group first
    groups = param_groups_weight_decay(model, s.weight_decay)[::-1]
    return torch.optim.AdamW(groups, lr=s.lr, fused=device_type == "cuda" or None)


def cosine_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 down to ``floor``.

    Why not torch's ``LinearLR`` + ``CosineAnnealingLR`` or timm's ``CosineLRScheduler``: any
    changed LR bit changes the trained weights (the demo's reference digest), and neither gives
    these floats. torch's (in ``SequentialLR``) are this schedule, but update the LR recursively
    from the previous step's value, so the floats drift in the last bits (demo schedule, 17
    warm-up steps of 170: 20 of 170 LRs bit-identical, relative difference up to 2.5e-15).
    timm's warm-up peaks one step later than this one, which holds the peak for two steps, so no
    shift of its step count matches both phases (warm-up aligned: 0 of 153 cosine steps equal),
    and its cosine is ``min + (peak - min) * ...``, other roundings (60 of 170 equal when aligned
    by hand). torch's ``LambdaLR`` with this multiplier is the standard route that keeps them: its
    state (``last_epoch``) is checkpointed, so ``--resume`` continues the same floats."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(opt, s: "TrainSettings", steps_per_epoch: int):
    """The LR schedule of ``s.schedule``: ``cosine`` (stepped after every optimizer step, see
    :func:`cosine_factor`), ``plateau`` (stepped with each epoch's validation loss) or None (constant)."""
    import torch

    if s.schedule == "cosine":
        warm = int(round(s.warmup_epochs * steps_per_epoch))
        total = s.epochs * steps_per_epoch
        floor = min(1.0, s.min_lr / s.lr)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine_factor(step, warm, total, floor))
    if s.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=s.plateau_factor, patience=s.plateau_patience, min_lr=s.min_lr)
    return None


class Trainer:
    """Trains one fold: ``fit()`` runs epochs with validation, early stopping and checkpoints.

    ``model`` is the module whose weights are saved (a :class:`clotclf_core.models.build.ClotClassifier`
    for tile-level training); ``task`` supplies batches, the per-step loss and validation.
    ``fold_dir`` receives ``checkpoints/`` and ``history.csv``.
    """

    def __init__(self, s: "TrainSettings", model, task: FoldTask, fold: int, fold_dir: Path, rt: "Runtime",
                 progress: bool = True, keep_last: bool = False):
        import torch

        #: every epoch counts as the best one, so the last is kept (self-supervised pre-training, whose
        #: loss says little about the features), and nothing stops early
        self.keep_last = keep_last

        self.s, self.rt, self.fold, self.fold_dir, self.progress = s, rt, fold, Path(fold_dir), progress
        self.task = task
        self.model = rt.place(model)
        net = self.model
        if rt.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        self.net = torch.compile(net) if s.compile else net
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.model, s, rt.device.type)
        self.steps_per_epoch = max(1, len(task.train_loader))
        self.scheduler = make_scheduler(self.opt, s, self.steps_per_epoch)
        self.ckpt_dir = self.fold_dir / "checkpoints"
        self.history: list[dict[str, Any]] = []
        self.best_loss, self.best_epoch, self.best_file = math.inf, -1, ""
        self.bad_epochs, self.start_epoch, self.stopped_early = 0, 0, False
        #: called with each new history.csv row on rank 0 (experiment tracking)
        self.on_epoch: Callable[[dict[str, Any]], None] | None = None

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    # ---------------------------------------------------------------- one step
    def step(self, batch: Any) -> tuple["torch.Tensor", int]:
        """Forward (the task's), backward, clip, optimizer step, schedule step: (detached loss, samples)."""
        import torch

        with self.rt.autocast():
            loss, n = self.task.step_loss(self.net, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        after_backward = getattr(self.task, "after_backward", None)  # optional: e.g. DINO freezes a layer's gradients
        if after_backward is not None:
            after_backward()
        if self.s.grad_clip > 0:  # after backward (DDP has averaged the gradients), before the step
            torch.nn.utils.clip_grad_norm_(self.params, self.s.grad_clip)
        self.opt.step()
        if self.s.schedule == "cosine":
            self.scheduler.step()
        return loss.detach(), n

    # ---------------------------------------------------------------- epochs
    def train_epoch(self, epoch: int) -> dict[str, float]:
        import torch

        from clotclf_core.progress import bar

        self.task.set_epoch(epoch)
        seed_epoch(self.s.seed, self.fold, epoch, self.rt.rank)  # dropout / drop-path of this epoch, this rank
        self.net.train()
        total = torch.zeros((), device=self.rt.device)
        seen = 0
        batches = bar(self.task.train_loader, inner=True, desc=f"fold {self.fold} epoch {epoch + 1}/{self.s.epochs}",
                      unit="batch", leave=False, disable=not (self.progress and self.rt.is_main), dynamic_ncols=True)
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            loss, n = self.step(batch)
            total += loss * n
            seen += n
            if not batches.disable and (i % 10 == 0 or i == self.steps_per_epoch - 1):  # float() waits for the GPU
                speed = seen * self.rt.world_size / (time.perf_counter() - t0)
                batches.set_postfix(loss=f"{float(total) / seen:.4f}", img_s=f"{speed:.0f}", lr=f"{self.lr:.2e}")
        if self.rt.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        loss_sum, samples = sum_over_ranks(self.rt, [float(total), float(seen)])
        return {"train_loss": loss_sum / max(samples, 1), "images_per_s": samples / max(seconds, 1e-9),
                "train_seconds": seconds}

    def validate(self, desc: str = "validate") -> Scored:
        return self.task.validate(self.model, self.progress and self.rt.is_main, desc)

    def fit(self, after_train_epoch: Callable[[int, "Trainer"], None] | None = None) -> None:
        """Train until ``epochs`` or early stopping; afterwards the model holds the best epoch's weights."""
        from clotclf_core.progress import write

        s = self.s
        for epoch in range(self.start_epoch, s.epochs):
            lr = self.lr
            stats = self.train_epoch(epoch)
            if after_train_epoch is not None:
                after_train_epoch(epoch, self)
            t0 = time.perf_counter()
            val = self.validate()
            loss = val.loss
            improved = self.keep_last or loss < self.best_loss - s.min_delta
            if s.schedule == "plateau":
                self.scheduler.step(loss)
            self.history.append({
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": round(stats["train_loss"], 6),
                "val_loss": round(loss, 6),
                **val.history,
                "images_per_s": round(stats["images_per_s"], 1),
                "seconds": round(stats["train_seconds"] + time.perf_counter() - t0, 2),
            })
            if self.on_epoch is not None and self.rt.is_main:
                self.on_epoch(self.history[-1])
            if improved:
                self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
            else:
                self.bad_epochs += 1
            self.stopped_early = bool(s.patience) and self.bad_epochs >= s.patience
            self._save(epoch, improved)
            if self.progress and self.rt.is_main:
                row = self.history[-1]
                extra = "".join(f", {k.removeprefix('val_').replace('_', ' ')} {v:.3f}" for k, v in val.history.items()
                                if k.startswith("val_patient") and "log_loss" not in k and isinstance(v, float))
                write(f"fold {self.fold} epoch {epoch + 1}/{s.epochs}: train loss {row['train_loss']:.4f}, "
                      f"val {s.monitor.replace('_', ' ')} {loss:.4f}{' (best)' if improved else ''}{extra}, "
                      f"{row['images_per_s']:.0f} img/s", file=sys.stderr)
            if self.stopped_early:
                break
        self.restore_best()

    # ---------------------------------------------------------------- checkpoints
    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "epoch": epoch,  # last finished epoch, 0-based
            "best_epoch": self.best_epoch,
            "best_loss": self.best_loss,
            "best_file": self.best_file,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "world_size": self.rt.world_size,
            "steps_per_epoch": self.steps_per_epoch,
            "settings": settings_dict(self.s),
        }

    def _save(self, epoch: int, improved: bool) -> None:
        """Best weights (if improved) then the last checkpoint, whose state names the best file:
        whatever crashes in between, ``last.safetensors`` only ever points at complete files."""
        if self.rt.is_main:
            with write_guard("checkpoints", self.ckpt_dir, after=RESUME_HINT):
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            if improved:
                name = f"best-epoch{epoch + 1:03d}.safetensors"
                write_weights(self.ckpt_dir / name, self.model, epoch + 1)
                self.best_file = name
            write_checkpoint(self.ckpt_dir / LAST, self.model, self.opt, self._state(epoch))
            for stale in self.ckpt_dir.glob("best-epoch*.safetensors"):  # only after the commit above
                if stale.name != self.best_file:
                    stale.unlink(missing_ok=True)
            self.write_history()
        else:
            self.best_file = f"best-epoch{epoch + 1:03d}.safetensors" if improved else self.best_file
        barrier(self.rt)

    def write_history(self) -> None:
        import pandas as pd

        with write_guard("history.csv", self.fold_dir, after=RESUME_HINT):
            write_csv(self.fold_dir / "history.csv", pd.DataFrame(self.history))

    def restore_best(self) -> None:
        """Load the best epoch's weights from its checkpoint file (a real copy, not a live view)."""
        from clotclf_core.plugin.weights import load_state, load_state_into

        if not self.best_file:
            return
        load_state_into(self.model, load_state(self.ckpt_dir / self.best_file), str(self.ckpt_dir / self.best_file))

    def resume(self, settings_now: dict[str, Any]) -> bool:
        """Continue from ``checkpoints/last.safetensors``; returns False if this fold has none yet."""
        path = self.ckpt_dir / LAST
        if not path.is_file():
            return False
        model_state, opt_state, state, _ = read_checkpoint(path)
        diff = differences(state.get("settings", {}), settings_now)
        if diff:
            raise ClotclfError(
                f"--resume: the run in '{self.fold_dir}' was started with other settings ({'; '.join(diff[:4])}). "
                "Resume with the same settings (its training.yaml: --config RUN/training.yaml --resume), "
                "or start a new run with another --out"
            )
        world = int(state.get("world_size", 1))
        if world != self.rt.world_size:
            how = f"with --nproc {world}" if world > 1 else "in one process (without --nproc or torchrun)"
            raise ClotclfError(
                f"--resume: fold {self.fold} in '{self.fold_dir}' was trained in {world} process(es), now {self.rt.world_size}: "
                "the batches of each step and the LR schedule depend on it, so the result would not be the one the run "
                f"was going to give. Resume it {how}, or start a new run with another --out"
            )
        from clotclf_core.plugin.weights import load_state_into

        load_state_into(self.model, model_state, str(path))
        try:
            self.opt.load_state_dict(opt_state)
        except ValueError as exc:  # torch: other parameter groups (a checkpoint of another model or clotclf version)
            raise ClotclfError(f"--resume: the optimizer state in '{path}' does not fit this model ({exc}); "
                               "start a new run with another --out") from None
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        self.best_loss, self.best_epoch = float(state["best_loss"]), int(state["best_epoch"])
        self.best_file, self.bad_epochs = state["best_file"], int(state["bad_epochs"])
        self.stopped_early = bool(state.get("stopped_early"))
        self.start_epoch = int(state["epoch"]) + 1
        if self.stopped_early:
            self.start_epoch = self.s.epochs
        return True
