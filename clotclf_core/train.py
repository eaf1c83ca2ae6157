"""Training: settings, the per-fold trainer, checkpoints and resume, and the run directory.

``train(settings)`` is what ``clotclf train`` runs:

1. the TileSet (``--tiles``, or the demo cohort generated and tiled once under ``--demo-dir``),
   its unlabelled slides left out (and said);
2. a patient-level split (:mod:`clotclf_core.splits`), saved with the run. Everything that can
   refuse a run (options, model, labels, split: :func:`prepare_run`) is checked before the first
   file is written, so a refused command never leaves a half-started run behind;
3. per fold, a :class:`Trainer`: AdamW (no weight decay on biases and norms), cosine schedule
   with warm-up (or reduce-on-plateau, as published), gradient clipping applied between
   ``backward`` and ``step``, early stopping on the validation *patient-level* log loss, bf16
   autocast and channels-last on CUDA, optional ``torch.compile``, DistributedDataParallel under
   ``torchrun``;
4. the best epoch's weights restored from its checkpoint file (the published trainer kept a
   shallow ``state_dict().copy()``, whose tensors kept training, so its "best" was the last), then
   metrics at tile / slide / patient level, pictures, and a model card.

Randomness comes from one ``--seed``: model initialisation, shuffling, augmentation and dropout
are each seeded from (seed, fold, epoch), so an interrupted run resumed with ``--resume`` sees the
same batches as one that was never interrupted.

Checkpoints (``checkpoints/`` in each fold's directory) are safetensors only:
``last.safetensors`` holds model weights, optimizer tensors and the trainer state (JSON in the
safetensors metadata) in one file, written atomically — so it is always self-consistent — and
``best-epochNNN.safetensors`` holds the best weights so far, named in that state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field, ValidationError, model_validator

from .config import ModelConfig, StrictModel, format_validation_error, load_yaml
from .errors import ClotclfError, ConfigError
from .io import write_bytes, write_json, write_text

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    import torch

    from .evaluate import Runtime
    from .splits import Split
    from .tileset import TileSet


# ============================================================================ settings


class AugmentSettings(StrictModel):
    """The published augmentation list; probabilities and ranges are settings, not constants."""

    enabled: bool = Field(True, description="augment training tiles (never validation / test tiles)")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.5, ge=0, le=1, description="probability of a vertical flip")
    rot90: float = Field(0.5, ge=0, le=1, description="probability of a random 90-degree rotation")
    brightness: float = Field(0.2, ge=0, le=1, description="brightness change range (+-)")
    contrast: float = Field(0.2, ge=0, le=1, description="contrast change range (+-)")
    brightness_contrast_p: float = Field(0.5, ge=0, le=1, description="probability of a brightness / contrast change")
    shift: float = Field(0.0625, ge=0, le=0.5, description="shift-scale-rotate: shift as a fraction of the side (+-)")
    scale: float = Field(0.1, ge=0, lt=1, description="shift-scale-rotate: scale change (+-)")
    rotate: float = Field(45.0, ge=0, le=180, description="shift-scale-rotate: rotation in degrees (+-)")
    shift_scale_rotate_p: float = Field(0.5, ge=0, le=1, description="probability of a shift-scale-rotate")


class TrainSettings(StrictModel):
    """Every setting of a training run: a ``clotclf train`` option or a field of its ``--config`` YAML.

    Saved, resolved, as ``training`` in ``config.json`` and as ``training.yaml`` in the run
    directory (``clotclf train --config RUN/training.yaml`` repeats the run).
    """

    # -- data
    tiles: str | None = Field(None, description="TileSet folder (from `clotclf tile`); none: the built-in demo cohort")
    demo_dir: str = Field("clotclf-demo", description="where the demo cohort and its tiles are made once and reused")
    out: str | None = Field(None, description="run directory (default: runs/<backbone>-<date>-<time>)")
    labels: list[str] | None = Field(None, description="class names in output order (default: CE, LAA, else the TileSet's labels sorted)")
    # -- model
    backbone: str = Field("cct", description="backbone plugin (`clotclf list-plugins --kind backbone`)")
    backbone_options: dict[str, Any] = Field(default_factory=dict, description="backbone options (`clotclf show-plugin NAME`)")
    head: str = Field("linear", description="head plugin")
    head_options: dict[str, Any] = Field(default_factory=dict, description="head options")
    input_size: int | None = Field(None, ge=8, description="model input side in pixels (default: the TileSet's tile side)")
    # -- split
    folds: int = Field(5, ge=2, description="k of the patient-level stratified k-fold")
    fold: int | Literal["all"] = Field(0, description="which fold validates (0..folds-1), or 'all' for full cross-validation")
    group_by: Literal["patient", "center"] = Field("patient", description="keep whole patients (or whole centres) on one side")
    test_fraction: float = Field(0.0, ge=0, description="share of patients held out from every fold as a test set (0 to 0.5; 0: none)")
    split_file: str | None = Field(None, description="reuse a saved split.json instead of making a split")
    # -- optimisation
    epochs: int = Field(20, ge=1, description="maximum epochs per fold")
    batch_size: int = Field(32, ge=1, description="tiles per step (per process under DDP)")
    lr: float = Field(3e-4, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay (not applied to biases and norm weights)")
    schedule: Literal["cosine", "plateau", "constant"] = Field("cosine", description="LR schedule: cosine with warm-up, reduce-on-plateau, or constant")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up length (cosine only)")
    min_lr: float = Field(1e-6, ge=0, description="floor of the cosine / plateau schedule")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="reduce-on-plateau: LR multiplier")
    plateau_patience: int = Field(2, ge=0, description="reduce-on-plateau: epochs without improvement before reducing")
    patience: int = Field(3, ge=0, description="early stopping: epochs without improvement of the monitored loss (0: never stop early)")
    min_delta: float = Field(1e-4, ge=0, description="smallest decrease of the monitored loss that counts as improvement")
    monitor: Literal["patient_log_loss", "patient_weighted_log_loss"] = Field(
        "patient_log_loss", description="validation loss for early stopping and the best checkpoint")
    grad_clip: float = Field(1.0, ge=0, description="clip the gradient norm to this (0: off)")
    class_weights: Literal["none", "balanced"] = Field("none", description="weight the loss by inverse class frequency of the training tiles")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    max_tiles_per_slide: int | None = Field(None, ge=1, description="train on at most this many tiles per slide (seeded choice)")
    augment: AugmentSettings = Field(default_factory=AugmentSettings, description="augmentation of training tiles")
    # -- runtime
    seed: int = Field(0, description="the one seed everything random is derived from")
    workers: int = Field(2, ge=0, description="data-loader worker processes")
    eval_batch_size: int | None = Field(None, ge=1, description="tiles per inference batch (default: 2 x batch_size)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA if available")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    channels_last: bool | Literal["auto"] = Field("auto", description="channels-last memory format (auto: on CUDA)")
    compile: bool = Field(False, description="torch.compile the model for training")

    @model_validator(mode="after")
    def _check(self) -> "TrainSettings":
        if self.fold != "all" and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold {self.fold} does not exist with folds={self.folds}: use 0..{self.folds - 1} or 'all'")
        if self.labels is not None and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ValueError(f"labels must be at least two distinct names, got {self.labels}")
        if self.test_fraction > 0.5:
            raise ValueError(
                f"test_fraction {self.test_fraction} would hold out more patients than are trained on; use a share "
                "above 0 and at most 0.5 (e.g. 0.2), or 0 for no test set")
        return self


#: settings whose change does not change what is computed: allowed to differ on --resume
RESUME_MAY_CHANGE = {"workers", "eval_batch_size", "out", "demo_dir"}

#: the demo's model when the user names no options: small enough to train on a laptop CPU in
#: minutes. Applied only to fields the user did not set; a backbone without an entry keeps its defaults.
DEMO_BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "cct": {"variant": "cct_2_3x2_32", "img_size": 64},
    "poolformer": {"variant": "poolformer_s12"},
}
DEMO_SETTINGS: dict[str, Any] = {"epochs": 10, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "folds": 4,
                                 "test_fraction": 0.25, "patience": 4, "warmup_epochs": 1.0, "max_tiles_per_slide": 32}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_settings(config: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> TrainSettings:
    """YAML fields (``--config``) overridden by the command-line values that were given.

    Unknown YAML fields are errors (with the closest known name), never silently ignored. With no
    TileSet the demo preset fills the fields the user left unset.
    """
    data = load_yaml(config) if config else {}
    data = _merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    source = f"config file '{config}'" if config else "training settings"
    try:
        settings = TrainSettings.model_validate(data)
    except ValidationError as err:
        hints = []
        for e in err.errors():
            if e["type"] == "extra_forbidden":
                name = str(e["loc"][-1])
                pool = list(AugmentSettings.model_fields) if len(e["loc"]) > 1 else list(TrainSettings.model_fields)
                close = _closest(name, pool)
                if close:
                    hints.append(f"did you mean '{close}' for '{name}'?")
        raise ConfigError(
            format_validation_error(err, source) + (" (" + "; ".join(hints) + ")" if hints else "")
            + ". The fields are listed by `clotclf train --help` and in docs/training.md"
        ) from None
    if settings.tiles is None:
        settings = apply_demo_preset(settings)
    return settings


def _closest(name: str, known: list[str]) -> str | None:
    """The known field a misspelt one most likely meant (a shared prefix first, then similarity)."""
    import difflib

    prefixed = [k for k in known if name.startswith(k) or k.startswith(name)]
    if prefixed:
        return max(prefixed, key=len)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def apply_demo_preset(settings: TrainSettings) -> TrainSettings:
    given = settings.model_fields_set
    values = {k: v for k, v in DEMO_SETTINGS.items() if k not in given}
    if "backbone_options" not in given and settings.backbone in DEMO_BACKBONE_OPTIONS:
        values["backbone_options"] = DEMO_BACKBONE_OPTIONS[settings.backbone]
    return settings.model_copy(update=values)


# ============================================================================ small helpers


def _mix(*values: int) -> int:
    from .data import _mix as mix

    return mix(*values)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def disk_guard(what: str, where: Path):
    """Turn "disk full" into one clear error. Every write is atomic, so nothing half-written is
    left under a real name: the previous checkpoint stays valid and ``--resume`` continues from it."""
    try:
        yield
    except Exception as exc:  # safetensors reports IO errors as its own exception type
        text = str(exc)
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if full or "No space left" in text or "StorageFull" in text or "os error 28" in text:
            raise ClotclfError(
                f"out of disk space while saving {what} in '{where}'. Nothing was left half-written: the previous "
                "checkpoint is intact. Free some space, then continue with the same command plus --resume"
            ) from None
        raise


def _settings_dict(s: TrainSettings) -> dict[str, Any]:
    return s.model_dump(mode="json")


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_MAY_CHANGE:
            continue
        if old.get(key) != new.get(key):
            out.append(f"{key}: run has {old.get(key)!r}, now {new.get(key)!r}")
    return out


# ============================================================================ distributed


def init_distributed(device: str) -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:  # before any CUDA work, so NCCL and every collective use this rank's GPU, not GPU 0
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # on CUDA, NCCL for CUDA tensors (DDP's gradients) and gloo for CPU ones: the object
        # collectives (broadcast_object_list, all_gather_object) and barrier then go over gloo, in CPU memory
        dist.init_process_group("cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    return rank, world, local_rank


def _barrier(rt: "Runtime") -> None:
    if rt.distributed:
        import torch.distributed as dist

        dist.barrier()


def _broadcast(rt: "Runtime", value: Any) -> Any:
    """Rank 0's ``value`` on every rank (over gloo, in CPU memory: see :func:`init_distributed`)."""
    if not rt.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _sum_over_ranks(rt: "Runtime", values: list[float]) -> list[float]:
    """``values`` summed over the data-parallel ranks. The tensor is made on ``rt.device``: the CUDA
    backend (NCCL) refuses CPU tensors, and on the CPU the device is the CPU anyway."""
    if not rt.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    totals = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(totals)
    return totals.tolist()


# ============================================================================ checkpoints


def _optimizer_tensors(opt) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    """An optimizer state_dict split into tensors (for safetensors) and JSON (the rest)."""
    import torch

    sd = opt.state_dict()
    tensors, extra = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                extra.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": extra}


def _optimizer_state(tensors: dict[str, "torch.Tensor"], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def write_checkpoint(path: Path, model, opt, state: dict[str, Any]) -> None:
    """One safetensors file: ``model.*`` weights, ``optim.*`` tensors, JSON trainer state in metadata."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    meta = {"format": "pt", "clotclf_trainer_state": json.dumps(state), "clotclf_optimizer": json.dumps(opt_meta)}
    with disk_guard("the last checkpoint", path.parent):
        write_bytes(path, save(tensors, metadata=meta))


def read_checkpoint(path: Path) -> tuple[dict[str, "torch.Tensor"], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model state, optimizer state_dict, trainer state, raw metadata) of a :func:`write_checkpoint` file."""
    from safetensors import safe_open

    from .model import _check_safetensors

    _check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        state = json.loads(meta["clotclf_trainer_state"])
        opt_meta = json.loads(meta["clotclf_optimizer"])
    except Exception as exc:
        raise ClotclfError(
            f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}); start the run again without --resume"
        ) from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_state = _optimizer_state({k: v for k, v in tensors.items() if k.startswith("optim.")}, opt_meta)
    return model_state, opt_state, state, meta


# ============================================================================ the trainer


def _param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and conv kernels only; biases, norms and embeddings' 1-D
    parameters are left alone (decaying a LayerNorm gain towards 0 is never what anyone wants)."""
    decay, plain = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def cosine_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Trains one fold: ``fit()`` runs epochs with validation, early stopping and checkpoints.

    ``model`` is a :class:`clotclf_core.model.ClotClassifier`; ``train_rows`` / ``val_rows`` are
    positions in ``tileset.index``. ``fold_dir`` receives ``checkpoints/`` and ``history.csv``.
    """

    def __init__(self, s: TrainSettings, model, tileset: "TileSet", train_rows, val_rows, fold: int,
                 fold_dir: Path, rt: "Runtime", progress: bool = True):
        import torch

        from .data import EpochSampler, TileDataset, build_transform, make_loader
        from .evaluate import eval_loader

        self.s, self.rt, self.fold, self.fold_dir, self.progress = s, rt, fold, Path(fold_dir), progress
        self.labels = model.labels
        self.model = model.to(rt.device)
        if rt.channels_last:
            self.model.to(memory_format=torch.channels_last)
        net = self.model
        if rt.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        self.net = torch.compile(net) if s.compile else net
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(_param_groups(self.model, s.weight_decay), lr=s.lr,
                                     fused=rt.device.type == "cuda" or None)

        size, tile = model.config.input_size, tileset.tile_size
        self.train_ds = TileDataset(tileset, train_rows, self.labels, build_transform(size, tile, s.augment))
        if (self.train_ds.targets < 0).any():  # prepare_run leaves unlabelled tiles out; a direct caller may not
            raise ClotclfError(
                f"fold {fold}: {int((self.train_ds.targets < 0).sum())} training tile(s) have a label outside "
                f"{self.labels} (or none); leave them out of the training rows"
            )
        self.sampler = EpochSampler(len(self.train_ds), _mix(s.seed, fold), True, rt.rank, rt.world_size)
        drop_last = len(self.sampler) > s.batch_size  # no tiny last batch, unless one batch is all there is
        self.train_loader = make_loader(self.train_ds, self.sampler, s.batch_size, s.workers,
                                        pin_memory=rt.device.type == "cuda", drop_last=drop_last)
        self.steps_per_epoch = max(1, len(self.train_loader))
        val_ds = TileDataset(tileset, val_rows, self.labels, build_transform(size, tile, None))
        self.val_n = len(val_ds)
        self.val_loader, self.val_positions = eval_loader(val_ds, s.eval_batch_size or 2 * s.batch_size, s.workers, rt)
        self.val_df = tileset.index.iloc[list(val_rows)].reset_index(drop=True)

        weight = None
        if s.class_weights == "balanced":
            counts = torch.bincount(torch.as_tensor(self.train_ds.targets), minlength=len(self.labels)).float()
            weight = (counts.sum() / (len(self.labels) * counts.clamp(min=1))).to(rt.device)
        self.class_weight = weight
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=s.label_smoothing)
        self.scheduler = self._make_scheduler()

        self.ckpt_dir = self.fold_dir / "checkpoints"
        self.history: list[dict[str, Any]] = []
        self.best_loss, self.best_epoch, self.best_file = math.inf, -1, ""
        self.bad_epochs, self.start_epoch, self.stopped_early = 0, 0, False

    # ---------------------------------------------------------------- schedule
    def _make_scheduler(self):
        import torch

        s = self.s
        if s.schedule == "cosine":
            warm = int(round(s.warmup_epochs * self.steps_per_epoch))
            total = s.epochs * self.steps_per_epoch
            floor = min(1.0, s.min_lr / s.lr)
            return torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: cosine_factor(step, warm, total, floor))
        if s.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.opt, mode="min", factor=s.plateau_factor, patience=s.plateau_patience, min_lr=s.min_lr)
        return None

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    # ---------------------------------------------------------------- one step
    def step(self, images: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        """Forward, backward, clip, optimizer step, schedule step. Returns the (detached) loss."""
        import torch

        x = self.rt.to_input(images, self.model.config.mean, self.model.config.std)
        y = targets.to(self.rt.device, non_blocking=True)
        with self.rt.autocast():
            logits = self.net(x)
        loss = self.loss_fn(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.s.grad_clip > 0:  # after backward (DDP has averaged the gradients), before the step
            torch.nn.utils.clip_grad_norm_(self.params, self.s.grad_clip)
        self.opt.step()
        if self.s.schedule == "cosine":
            self.scheduler.step()
        return loss.detach()

    # ---------------------------------------------------------------- epochs
    def train_epoch(self, epoch: int) -> dict[str, float]:
        import torch
        from tqdm.auto import tqdm

        self.sampler.set_epoch(epoch)
        torch.manual_seed(_mix(self.s.seed, self.fold, epoch, 4))  # dropout / drop-path of this epoch
        self.net.train()
        total = torch.zeros((), device=self.rt.device)
        seen = 0
        bar = tqdm(self.train_loader, desc=f"fold {self.fold} epoch {epoch + 1}/{self.s.epochs}", unit="batch",
                   leave=False, disable=not (self.progress and self.rt.is_main), dynamic_ncols=True)
        t0 = time.perf_counter()
        for i, (images, targets, _rows) in enumerate(bar):
            loss = self.step(images, targets)
            total += loss * len(targets)
            seen += len(targets)
            if not bar.disable and (i % 10 == 0 or i == len(self.train_loader) - 1):  # float() waits for the GPU
                speed = seen * self.rt.world_size / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{float(total) / seen:.4f}", img_s=f"{speed:.0f}", lr=f"{self.lr:.2e}")
        if self.rt.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        loss_sum, images = _sum_over_ranks(self.rt, [float(total), float(seen)])
        return {"train_loss": loss_sum / max(images, 1), "images_per_s": images / max(seconds, 1e-9),
                "train_seconds": seconds}

    def validate(self, desc: str = "validate") -> tuple[float, dict[str, Any], "np.ndarray"]:
        """(monitored patient-level loss, metrics at three levels, tile probabilities) on the validation patients."""
        from .evaluate import patient_loss, predict_probs, score

        probs = predict_probs(self.model, self.val_loader, self.val_positions, self.val_n, self.rt,
                              progress=self.progress, desc=desc)
        weighted = self.s.monitor == "patient_weighted_log_loss"
        return patient_loss(self.val_df, probs, self.labels, weighted), score(self.val_df, probs, self.labels), probs

    def fit(self, after_train_epoch: Callable[[int, "Trainer"], None] | None = None) -> None:
        """Train until ``epochs`` or early stopping; afterwards the model holds the best epoch's weights."""
        from tqdm.auto import tqdm

        s = self.s
        for epoch in range(self.start_epoch, s.epochs):
            lr = self.lr
            stats = self.train_epoch(epoch)
            if after_train_epoch is not None:
                after_train_epoch(epoch, self)
            t0 = time.perf_counter()
            loss, result, _ = self.validate()
            improved = loss < self.best_loss - s.min_delta
            if s.schedule == "plateau":
                self.scheduler.step(loss)
            self.history.append({
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": round(stats["train_loss"], 6),
                "val_loss": round(loss, 6),
                "val_tile_log_loss": round(result["tile"]["log_loss"], 6),
                "val_patient_balanced_accuracy": result["patient"]["balanced_accuracy"],
                "val_patient_roc_auc": result["patient"]["roc_auc"],
                "val_tile_accuracy": result["tile"]["accuracy"],
                "images_per_s": round(stats["images_per_s"], 1),
                "seconds": round(stats["train_seconds"] + time.perf_counter() - t0, 2),
            })
            if improved:
                self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
            else:
                self.bad_epochs += 1
            self.stopped_early = bool(s.patience) and self.bad_epochs >= s.patience
            self._save(epoch, improved)
            if self.progress and self.rt.is_main:
                row = self.history[-1]
                tqdm.write(
                    f"fold {self.fold} epoch {epoch + 1}/{s.epochs}: train loss {row['train_loss']:.4f}, "
                    f"val patient loss {loss:.4f}{' (best)' if improved else ''}, patient bal. acc "
                    f"{row['val_patient_balanced_accuracy']:.3f}, {row['images_per_s']:.0f} img/s",
                    file=sys.stderr)
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
            "settings": _settings_dict(self.s),
        }

    def _save(self, epoch: int, improved: bool) -> None:
        """Best weights (if improved) then the last checkpoint, whose state names the best file:
        whatever crashes in between, ``last.safetensors`` only ever points at complete files."""
        if self.rt.is_main:
            from safetensors.torch import save

            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            if improved:
                name = f"best-epoch{epoch + 1:03d}.safetensors"
                weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
                with disk_guard("the best checkpoint", self.ckpt_dir):
                    write_bytes(self.ckpt_dir / name, save(weights, metadata={"format": "pt", "epoch": str(epoch + 1)}))
                self.best_file = name
            write_checkpoint(self.ckpt_dir / "last.safetensors", self.model, self.opt, self._state(epoch))
            for stale in self.ckpt_dir.glob("best-epoch*.safetensors"):  # only after the commit above
                if stale.name != self.best_file:
                    stale.unlink(missing_ok=True)
            self.write_history()
        else:
            self.best_file = f"best-epoch{epoch + 1:03d}.safetensors" if improved else self.best_file
        _barrier(self.rt)

    def write_history(self) -> None:
        import pandas as pd

        with disk_guard("history.csv", self.fold_dir):
            write_text(self.fold_dir / "history.csv", pd.DataFrame(self.history).to_csv(index=False))

    def restore_best(self) -> None:
        """Load the best epoch's weights from its checkpoint file (a real copy, not a live view)."""
        from .model import load_state, load_state_into

        if not self.best_file:
            return
        load_state_into(self.model, load_state(self.ckpt_dir / self.best_file), str(self.ckpt_dir / self.best_file))

    def resume(self, settings_now: dict[str, Any]) -> bool:
        """Continue from ``checkpoints/last.safetensors``; returns False if this fold has none yet."""
        path = self.ckpt_dir / "last.safetensors"
        if not path.is_file():
            return False
        model_state, opt_state, state, _ = read_checkpoint(path)
        diff = _differences(state.get("settings", {}), settings_now)
        if diff:
            raise ClotclfError(
                f"--resume: the run in '{self.fold_dir}' was started with other settings ({'; '.join(diff[:4])}). "
                "Resume with the same settings (its training.yaml: --config RUN/training.yaml --resume), "
                "or start a new run with another --out"
            )
        from .model import load_state_into

        load_state_into(self.model, model_state, str(path))
        self.opt.load_state_dict(opt_state)
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


# ============================================================================ the run


#: side of the demo TileSet's cached tiles: the demo's 224-px tiles (1 um/pixel) are cached at
#: 64 px, so the small demo CCT trains on a laptop CPU in minutes
DEMO_TRAIN_SIZE = 64


def prepare_demo(demo_dir: str | Path, progress: bool = True) -> Path:
    """The demo TileSet: ``demo_dir/cohort`` (synthetic slides + Kaggle-style train.csv, seed 0)
    tiled into ``demo_dir/tiles``. Both are made once; later runs find and reuse them (tiling
    resumes after the slides already done, so an interrupted preparation just continues)."""
    from .demo_data import DEMO_TILING, write_demo_cohort
    from .tileset import TileSet, TileSetError
    from .tiling import TileSettings, tile_slides

    demo_dir = Path(demo_dir)
    cohort, tiles = demo_dir / "cohort", demo_dir / "tiles"
    manifest = cohort / "train.csv"
    if not manifest.is_file():  # written last by the generator: absent means absent or unfinished
        manifest = Path(write_demo_cohort(cohort, seed=0, overwrite=cohort.exists(), progress=progress))
    import pandas as pd

    wanted = set(pd.read_csv(manifest, dtype=str)["image_id"])
    if (tiles / "tileset.json").is_file():
        try:
            if wanted <= set(TileSet(tiles).slides):
                return tiles
        except TileSetError:
            pass  # e.g. a damaged pixel file: tiling again below repairs just those slides
    settings = TileSettings(**{**dict(DEMO_TILING), "train_size": DEMO_TRAIN_SIZE})
    tile_slides(cohort / "slides", tiles, manifest=manifest, settings=settings, progress=progress)
    return tiles


def _labels_for(s: TrainSettings, index: "pd.DataFrame", where: str) -> list[str]:
    found = sorted(set(index["label"]) - {""})
    if s.labels:
        unknown = [lab for lab in found if lab not in s.labels]
        if unknown:
            raise ClotclfError(
                f"the TileSet '{where}' has label(s) {', '.join(unknown)} that are not in --labels "
                f"{','.join(s.labels)}; add them to --labels or fix the manifest"
            )
        return list(s.labels)
    if not found:
        raise ClotclfError(
            f"the TileSet '{where}' has no labelled tiles; tile the slides with a manifest that has a label column"
        )
    if set(found) <= {"CE", "LAA"}:
        return ["CE", "LAA"]
    if len(found) < 2:
        raise ClotclfError(f"the TileSet '{where}' has only the label {found[0]}; a classifier needs at least two classes")
    return found


def _drop_unlabelled(ts: "TileSet") -> dict[str, int]:
    """Leave the tiles without a label out of ``ts.index`` (in memory only); returns what was left out.

    ``clotclf tile`` accepts manifest rows without a label (slides one only wants to predict on).
    Training cannot use them, so they go before the split is made: no unlabelled patient can land
    in a fold. A patient with labelled and unlabelled slides keeps its labelled ones.
    """
    index = ts.index
    unlabelled = (index["label"] == "").to_numpy()
    if not unlabelled.any():
        return {}
    gone, kept = index[unlabelled], index[~unlabelled]
    ts.index = kept.reset_index(drop=True)
    return {"slides": int(gone["image_id"].nunique()), "tiles": int(len(gone)),
            "patients": int(len(set(gone["patient_id"]) - set(kept["patient_id"])))}


def _model_config(s: TrainSettings, labels: list[str], input_size: int) -> ModelConfig:
    return ModelConfig(backbone=s.backbone, backbone_options=s.backbone_options, head=s.head,
                       head_options=s.head_options, labels=labels, input_size=input_size)


def check_model_options(s: TrainSettings) -> None:
    """The backbone and head exist and their options are valid: checked first, before minutes of
    demo-cohort generation and before anything is written."""
    from .plugins import get_manager

    mgr = get_manager()
    mgr.get("backbone", s.backbone).validate_options(s.backbone_options)
    mgr.get("head", s.head).validate_options(s.head_options)


def check_model(s: TrainSettings, labels: list[str], input_size: int) -> None:
    """Build the model once and push one input through it, so options that validate but cannot be
    built, or an input size the backbone cannot take, are refused before the run directory is touched."""
    from .model import build_model

    try:
        model = build_model(_model_config(s, labels, input_size))
    except ClotclfError:
        raise
    except Exception as exc:  # a plugin factory's own error: name the options, not a traceback
        raise ClotclfError(
            f"backbone '{s.backbone}' with head '{s.head}' cannot be built from these options "
            f"({type(exc).__name__}: {str(exc)[:200]}); check them with `clotclf show-plugin {s.backbone}` "
            f"and `clotclf show-plugin {s.head}`"
        ) from None
    _check_input_size(model, input_size, s.backbone)


@dataclasses.dataclass
class RunData:
    """What a run trains on, every check passed (see :func:`prepare_run`)."""

    ts: "TileSet"  #: its index holds the labelled tiles only
    labels: list[str]
    split: "Split"
    records: dict[str, Any]  #: config.json's ``tileset`` (the whole TileSet) and ``data`` (what was used) sections
    #: data left out, always printed (stderr); notes (the test set's size) printed with progress; both in the summary
    warnings: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def prepare_run(s: TrainSettings, run_dir: Path, resume: bool) -> RunData:
    """Everything that can refuse a run, and only reads: the TileSet, its labels (unlabelled slides
    left out), the model (built once and run on one input) and the split (made or loaded, checked).
    ``train`` writes nothing before this returns, so a refused command leaves no half-started run."""
    from .splits import SplitError, describe_test_set, load_split, make_split
    from .tileset import TileSet

    ts = TileSet(s.tiles)
    if len(ts) == 0:
        raise ClotclfError(f"the TileSet '{s.tiles}' has no tiles; check `clotclf tile`'s summary (no tissue found?)")
    tileset = _tileset_record(ts)
    labels = _labels_for(s, ts.index, s.tiles)
    dropped = _drop_unlabelled(ts)
    data = _data_record(s, ts)
    warnings, notes = [], []
    if dropped:
        data |= {"n_unlabelled_slides_left_out": dropped["slides"], "n_unlabelled_patients_left_out": dropped["patients"]}
        warnings.append(
            f"{dropped['slides']} slide(s) of the TileSet have no label ({dropped['tiles']} tiles; {dropped['patients']} "
            "patient(s) with no labelled slide at all): they are left out of training, validation and test. Label "
            "them in the manifest and re-tile to use them")
    check_model(s, labels, s.input_size or ts.tile_size)
    try:
        if resume and (run_dir / "split.json").is_file():
            split = load_split(run_dir / "split.json", ts.index, labels)
        elif s.split_file:
            split = load_split(s.split_file, ts.index, labels)
        else:
            split = make_split(ts.index, s.folds, s.seed, s.group_by, s.test_fraction, labels)
    except SplitError as exc:
        if not dropped:
            raise
        raise SplitError(f"{exc} (counted after leaving out the {dropped['slides']} unlabelled slide(s))") from None
    if len(split.folds) != s.folds:
        raise ClotclfError(f"the split has {len(split.folds)} folds but folds={s.folds}; set --folds {len(split.folds)}")
    if split.test:
        notes.append(describe_test_set(split))
    return RunData(ts, labels, split, {"tileset": tileset, "data": data}, warnings, notes)


def _check_resume(s: TrainSettings, run_dir: Path, resume: bool) -> None:
    _check_out(run_dir, resume)
    if resume:
        diff = _differences(load_yaml(run_dir / "training.yaml"), _settings_dict(s))
        if diff:
            raise ClotclfError(
                f"--resume: '{run_dir}' was started with other settings ({'; '.join(diff[:4])}). Resume with "
                f"the same settings (--config {run_dir / 'training.yaml'} --resume), or choose another --out"
            )


def _default_out(s: TrainSettings) -> str:
    return str(Path("runs") / f"{s.backbone.split('/')[-1]}-{time.strftime('%Y%m%d-%H%M%S')}")


def _check_out(run_dir: Path, resume: bool) -> None:
    started = (run_dir / "training.yaml").is_file() or (run_dir / "split.json").is_file()
    if resume and not started:
        raise ClotclfError(f"--resume: '{run_dir}' holds no run to resume (no training.yaml); start it without --resume")
    if not resume and started:
        raise ClotclfError(
            f"'{run_dir}' already holds a training run; add --resume to continue it, or choose another --out"
        )


def _tileset_record(ts: "TileSet") -> dict[str, Any]:
    return {
        "path": str(ts.root.resolve()),
        "format_version": ts.meta.get("format_version"),
        "tile_pixels": ts.tile_size,
        "settings": ts.settings,
        "n_tiles": len(ts),
        "n_slides": int(ts.index["image_id"].nunique()),
        "n_patients": int(ts.index["patient_id"].nunique()),
        # filters' / sources' providers (tileset.json's "components"; "plugins" in early format-2 sets)
        **({"plugins": ts.meta.get("components") or ts.meta["plugins"]} if ts.meta.get("components") or ts.meta.get("plugins") else {}),
    }


def _fold_split_record(split: "Split", k: int, index: "pd.DataFrame") -> dict[str, Any]:
    fold = split.folds[k]
    slides = lambda ps: int(index.loc[index["patient_id"].isin(set(ps)), "image_id"].nunique())  # noqa: E731
    strategy = "stratified k-fold by " + ("centre (leave-centres-out)" if split.group_by == "center" else "patient")
    return {
        "strategy": strategy, "group_by": split.group_by, "n_folds": len(split.folds), "fold": k, "seed": split.seed,
        "n_train_patients": len(fold.train), "n_val_patients": len(fold.val), "n_test_patients": len(split.test),
        "n_train_slides": slides(fold.train), "n_val_slides": slides(fold.val), "n_test_slides": slides(split.test),
        "test_fraction": split.test_fraction, "test_fraction_achieved": split.test_fraction_achieved,
        "train": fold.train, "val": fold.val, "test": split.test,
    }


def _is_demo(s: TrainSettings) -> bool:
    return s.tiles is None or Path(s.tiles).resolve() == (Path(s.demo_dir) / "tiles").resolve()


def _data_record(s: TrainSettings, ts: "TileSet") -> dict[str, Any]:
    demo = _is_demo(s)
    return {
        "dataset": "clotclf synthetic demo cohort" if demo else ts.root.resolve().name,
        "synthetic": demo,
        "n_slides": int(ts.index["image_id"].nunique()),
        "n_patients": int(ts.index["patient_id"].nunique()),
        "n_tiles": len(ts),
    }


def _plot_history(history: list[dict[str, Any]], png: Path, title: str) -> None:
    import pandas as pd

    from .plots import plot_history

    frame = pd.DataFrame(history).drop(columns=["images_per_s"], errors="ignore")
    plot_history(frame, png, title)


def train_fold(s: TrainSettings, ts: "TileSet", split: "Split", k: int, fold_dir: Path, labels: list[str],
               rt: "Runtime", resume: bool, progress: bool,
               after_train_epoch: Callable[[int, Trainer], None] | None = None,
               records: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and evaluate fold ``k`` into ``fold_dir`` (a complete, loadable run directory).
    ``records``: config.json's ``tileset`` and ``data`` sections (default: from ``ts``)."""
    from .data import cap_tiles_per_slide, rows_of_patients
    from .evaluate import eval_loader, predict_probs, predictions_frame, score, write_pictures
    from .model import build_model, save_model

    fold = split.folds[k]
    train_rows = rows_of_patients(ts.index, fold.train)
    train_rows = cap_tiles_per_slide(ts.index, train_rows, s.max_tiles_per_slide, _mix(s.seed, k))
    val_rows = rows_of_patients(ts.index, fold.val)
    present = sorted(set(ts.index["label"].to_numpy()[train_rows]))
    missing = [lab for lab in labels if lab not in present]
    if missing:
        raise ClotclfError(
            f"fold {k}: the training split has no tile of class {', '.join(missing)}; use fewer folds or add data"
        )
    input_size = s.input_size or ts.tile_size
    seed_everything(_mix(s.seed, k, 0))
    model = build_model(_model_config(s, labels, input_size))  # checked by prepare_run's check_model
    trainer = Trainer(s, model, ts, train_rows, val_rows, k, fold_dir, rt, progress)
    if resume:
        trainer.resume(_settings_dict(s))
    trainer.fit(after_train_epoch)

    _, val_metrics, val_probs = trainer.validate(desc="final validation")
    test_probs = test_df = test_metrics = None
    if split.test:
        from .data import TileDataset, build_transform

        test_rows = rows_of_patients(ts.index, split.test)
        test_ds = TileDataset(ts, test_rows, labels, build_transform(input_size, ts.tile_size, None))
        loader, positions = eval_loader(test_ds, s.eval_batch_size or 2 * s.batch_size, s.workers, rt)
        test_probs = predict_probs(trainer.model, loader, positions, len(test_ds), rt, progress, desc="test")
        test_df = ts.index.iloc[test_rows].reset_index(drop=True)
        test_metrics = score(test_df, test_probs, labels)

    result = {
        "fold": k,
        "best_epoch": trainer.best_epoch + 1,
        "epochs_run": len(trainer.history),
        "stopped_early": trainer.stopped_early,
        "monitor": s.monitor,
        "best_val_loss": trainer.best_loss,
        "val": val_metrics,
    }
    if test_metrics is not None:
        result["test"] = test_metrics
    if rt.is_main:
        records = records or {"tileset": _tileset_record(ts), "data": _data_record(s, ts)}
        extra = {"training": _settings_dict(s), "split": _fold_split_record(split, k, ts.index),
                 "tileset": records["tileset"], "data": records["data"]}
        with disk_guard("the model and its results", fold_dir):  # the checkpoints are complete: --resume redoes this
            save_model(trainer.model, fold_dir, extra)
            write_json(fold_dir / "metrics.json", result)
            val_table = predictions_frame(trainer.val_df, val_probs, labels)
            write_text(fold_dir / "predictions_val.csv", val_table.to_csv(index=False))
            _plot_history(trainer.history, fold_dir / "plots" / "history.png", f"fold {k}")
            write_pictures(fold_dir, trainer.val_df, val_probs, labels, val_metrics, "val")
            if test_metrics is not None:
                test_table = predictions_frame(test_df, test_probs, labels)
                write_text(fold_dir / "predictions_test.csv", test_table.to_csv(index=False))
                write_pictures(fold_dir, test_df, test_probs, labels, test_metrics, "test")
            _model_card(fold_dir, result)
    _barrier(rt)
    result["_val"] = (trainer.val_df, val_probs)
    result["_test"] = (test_df, test_probs) if test_probs is not None else None
    return result


def _check_input_size(model, size: int, backbone: str) -> None:
    """One dry forward pass, so a backbone that cannot take this input size fails with a message."""
    import torch

    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise ClotclfError(
            f"backbone '{backbone}' cannot take {size}x{size} inputs ({type(exc).__name__}: {str(exc)[:200]}). "
            "Set --input-size to what it expects, or its image-size option (e.g. --backbone-opt img_size="
            f"{size}; see `clotclf show-plugin {backbone}`)"
        ) from None
    finally:
        model.train()


def _model_card(run_dir: Path, metrics: dict[str, Any]) -> None:
    from .model import read_config
    from .modelcard import write_model_card

    notes = None
    test = (metrics.get("test") or {}).get("patient")
    if test:  # the card's tables show the validation split; say what the untouched test patients gave
        auc = "n/a" if test.get("roc_auc") is None else f"{test['roc_auc']:.3f}"
        notes = (f"Held-out test patients (never trained on, not used for early stopping), n={test['n']}: patient-level "
                 f"weighted log loss {test['weighted_log_loss']:.3f}, balanced accuracy {test['balanced_accuracy']:.3f}, "
                 f"ROC AUC {auc} (metrics.json, `test`).")
    write_model_card(run_dir, read_config(run_dir), metrics, extra={"notes": notes} if notes else None)


def train(s: TrainSettings, resume: bool = False, progress: bool = True,
          after_train_epoch: Callable[[int, Trainer], None] | None = None) -> dict[str, Any]:
    """Run the training described by ``s``; returns the summary (what ``--json`` prints)."""
    from .evaluate import pick_runtime
    from .splits import save_split

    check_model_options(s)  # before the demo cohort is generated (minutes)
    rank, world, local_rank = init_distributed(s.device)
    rt = pick_runtime(s.device, s.precision, s.channels_last, rank, world, local_rank)
    t_start = time.perf_counter()
    if s.tiles is None:
        tiles = prepare_demo(s.demo_dir, progress) if rt.is_main else None
        tiles = str(_broadcast(rt, str(tiles) if tiles else None))
        s = s.model_copy(update={"tiles": tiles})
    if not s.out:
        s = s.model_copy(update={"out": _broadcast(rt, _default_out(s))})
    run_dir = Path(s.out)
    # every rank runs the checks (they only read), so a refusal stops all ranks alike; and nothing
    # is written before they pass, so a refused command leaves no half-started run to block the next
    _check_resume(s, run_dir, resume)
    run = prepare_run(s, run_dir, resume)
    ts, split, labels = run.ts, run.split, run.labels
    if rt.is_main:
        for text in run.warnings:
            print(f"Warning: {text}.", file=sys.stderr)
        for text in run.notes if progress else []:
            print(f"Note: {text}.", file=sys.stderr)
    _barrier(rt)
    if rt.is_main:
        import yaml

        with disk_guard("the split and settings", run_dir):
            save_split(split, run_dir / "split.json")
            write_text(run_dir / "training.yaml", yaml.safe_dump(_settings_dict(s), sort_keys=False))
    _barrier(rt)

    folds = list(range(s.folds)) if s.fold == "all" else [int(s.fold)]
    results = []
    for k in folds:
        fold_dir = run_dir / f"fold_{k}" if s.fold == "all" else run_dir
        finished = (fold_dir / "metrics.json").is_file() and (fold_dir / "model.safetensors").is_file()
        if resume and s.fold == "all" and finished:
            results.append(_reload_fold(s, ts, split, k, fold_dir, labels, rt, progress))
            continue
        results.append(train_fold(s, ts, split, k, fold_dir, labels, rt, resume, progress, after_train_epoch,
                                  run.records))

    summary: dict[str, Any] = {"run_dir": str(run_dir), "tileset": str(ts.root), "labels": labels,
                               "notes": run.warnings + run.notes,
                               "folds": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]}
    if s.fold == "all":
        summary |= _cross_validation(s, run_dir, ts, split, results, labels, rt, run.records)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    return summary


def _reload_fold(s, ts, split, k, fold_dir, labels, rt, progress) -> dict[str, Any]:
    """A fold finished before an interruption: read its metrics, re-score its patients for the pooled figures."""
    from .data import TileDataset, build_transform, rows_of_patients
    from .evaluate import eval_loader, predict_probs
    from .model import load_model

    result = json.loads((fold_dir / "metrics.json").read_text(encoding="utf-8"))
    model = load_model(fold_dir).to(rt.device)
    out = {}
    for side, patients in (("_val", split.folds[k].val), ("_test", split.test)):
        if not patients:
            out[side] = None
            continue
        rows = rows_of_patients(ts.index, patients)
        ds = TileDataset(ts, rows, labels, build_transform(model.config.input_size, ts.tile_size, None))
        loader, positions = eval_loader(ds, s.eval_batch_size or 2 * s.batch_size, s.workers, rt)
        probs = predict_probs(model, loader, positions, len(ds), rt, progress)
        out[side] = (ts.index.iloc[rows].reset_index(drop=True), probs)
    return result | out


def _cross_validation(s, run_dir: Path, ts, split, results, labels, rt, records) -> dict[str, Any]:
    """Mean ± std over folds, the pooled out-of-fold patient-level figures, and (with a test set)
    the test patients scored by the mean of the fold models' probabilities."""
    import numpy as np
    import pandas as pd

    from . import metrics
    from .evaluate import predictions_frame, score, write_pictures

    oof_df = pd.concat([r["_val"][0] for r in results], ignore_index=True)
    oof_probs = np.concatenate([r["_val"][1] for r in results])
    oof = score(oof_df, oof_probs, labels)
    out: dict[str, Any] = {"cv": metrics.summarise_folds([r["val"] for r in results]), "oof": oof}
    test_df = test_probs = None
    if results and results[0].get("_test"):
        test_df = results[0]["_test"][0]
        test_probs = np.mean([r["_test"][1] for r in results], axis=0)
        out["test_ensemble"] = score(test_df, test_probs, labels)
    if rt.is_main:
        doc = {"val": oof, **out, "folds": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]}
        write_json(run_dir / "metrics.json", doc)
        write_json(run_dir / "cv.json", {"training": _settings_dict(s), "split": split.to_dict(),
                                         "tileset": records["tileset"], "folds": [f"fold_{r['fold']}" for r in results]})
        write_text(run_dir / "predictions_oof.csv", predictions_frame(oof_df, oof_probs, labels).to_csv(index=False))
        write_pictures(run_dir, oof_df, oof_probs, labels, oof, "oof")
        if test_df is not None:
            write_pictures(run_dir, test_df, test_probs, labels, out["test_ensemble"], "test_ensemble")
        from .model import read_config
        from .modelcard import write_model_card

        config = read_config(run_dir / f"fold_{results[0]['fold']}")
        config["split"] = {"strategy": config["split"]["strategy"], "n_folds": len(split.folds), "seed": split.seed,
                           "n_test_patients": len(split.test)}
        write_model_card(run_dir, config, {"val": oof, "cv": out["cv"]},
                         extra={"name": run_dir.name, "notes": "Cross-validation summary: each fold_k/ holds one fold's model. "
                                "Results are the pooled out-of-fold predictions."})
    _barrier(rt)
    return out


# ============================================================================ command-line options


#: fields given on the command line in another shape than ``--field-name VALUE``
_CLI_SPECIAL = {"backbone_options", "head_options", "augment", "labels", "fold", "channels_last"}


def cli_options(command):
    """Decorate the ``train`` click command with one option per :class:`TrainSettings` field.

    Generated from the settings model so an option and its YAML field can never drift apart.
    Every option defaults to None (= "not given"), so the YAML value or the model default applies;
    the help text shows that default.
    """
    import typing

    import click

    def add(*args, **kwargs):
        nonlocal command
        command = click.option(*args, **kwargs)(command)

    # added in reverse: click lists the last-added option first
    add("--channels-last", type=click.Choice(["auto", "true", "false"]), default=None, show_default=False,
        help="channels-last memory format [default: auto = on CUDA]")
    add("--fold", default=None, metavar="K|all", show_default=False,
        help="which fold validates (0..folds-1), or 'all' for full cross-validation [default: 0]")
    add("--labels", default=None, metavar="A,B", show_default=False,
        help="class names in output order [default: CE,LAA, else the TileSet's labels sorted]")
    add("--augment/--no-augment", default=None, show_default=False,
        help="augment training tiles (the ranges are YAML fields under `augment:`) [default: on]")
    add("--head-opt", "head_opt", multiple=True, metavar="K=V", help="head option, repeatable (`clotclf show-plugin mlp`)")
    add("--backbone-opt", "backbone_opt", multiple=True, metavar="K=V",
        help="backbone option, repeatable (`clotclf show-plugin cct`)")
    for name, field in reversed(list(TrainSettings.model_fields.items())):
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        helptext = (field.description or "") + ("" if default is None else f" [default: {default}]")
        if name in _CLI_SPECIAL:
            continue
        ann = field.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
        if typing.get_origin(ann) is Literal:
            add(flag, type=click.Choice(typing.get_args(ann)), default=None, help=helptext, show_default=False)
        elif args[0] is bool:
            add(f"{flag}/--no-{flag[2:]}", default=None, help=helptext, show_default=False)
        else:
            kind = {int: int, float: float}.get(args[0], str)
            add(flag, type=kind, default=None, help=helptext, show_default=False)
    return command


def overrides_from_cli(params: dict[str, Any]) -> dict[str, Any]:
    """The click parameters of :func:`cli_options` -> a partial settings dict (given values only)."""
    from .config import parse_key_values

    out = {k: v for k, v in params.items() if k in TrainSettings.model_fields and k not in _CLI_SPECIAL and v is not None}
    if params.get("backbone_opt"):
        out["backbone_options"] = parse_key_values(params["backbone_opt"], "--backbone-opt")
    if params.get("head_opt"):
        out["head_options"] = parse_key_values(params["head_opt"], "--head-opt")
    if params.get("labels"):
        out["labels"] = [p.strip() for p in params["labels"].split(",") if p.strip()]
    if params.get("fold") is not None:
        text = str(params["fold"]).strip()
        if text != "all" and not text.lstrip("-").isdigit():
            raise ConfigError(f"--fold '{text}' must be a fold number (0, 1, ...) or 'all'")
        out["fold"] = text if text == "all" else int(text)
    if params.get("channels_last") is not None:
        out["channels_last"] = {"auto": "auto", "true": True, "false": False}[params["channels_last"]]
    if params.get("augment") is not None:
        out["augment"] = {"enabled": params["augment"]}
    return out


# ============================================================================ reporting and launching


def report_table(summary: dict[str, Any]) -> str:
    """What ``clotclf train`` prints at the end: the metrics table(s) and where the results are."""
    from .metrics import format_table

    parts = []
    if "cv" in summary:
        parts += ["Cross-validation, mean ± std over folds (validation patients):", format_table(summary["cv"]), "",
                  "Pooled out-of-fold predictions:", format_table(summary["oof"])]
        if "test_ensemble" in summary:
            parts += ["", "Held-out test patients, mean of the fold models:", format_table(summary["test_ensemble"])]
    else:
        fold = summary["folds"][0]
        parts += [f"Validation patients (fold {fold['fold']}, best epoch {fold['best_epoch']} of {fold['epochs_run']}):",
                  format_table(fold["val"])]
        if "test" in fold:
            parts += ["", "Held-out test patients (never used for training or early stopping):", format_table(fold["test"])]
    parts += ["", f"Run directory: {summary['run_dir']}  ({summary['seconds']:.0f} s)"]
    return "\n".join(parts)


def launch_distributed(s: TrainSettings, nproc: int, resume: bool, quiet: bool, as_json: bool = False) -> int:
    """``clotclf train --nproc N``: resolve the data and run directory here, then start N processes
    with torch.distributed's launcher (``torchrun --standalone``) on the resolved settings."""
    import subprocess

    import yaml

    if nproc < 2:
        raise ClotclfError(
            f"--nproc must be at least 2 for data-parallel training (got {nproc}); leave it out for one process"
        )
    check_model_options(s)
    if s.tiles is None:
        s = s.model_copy(update={"tiles": str(prepare_demo(s.demo_dir, not (quiet or as_json)))})
    if not s.out:
        s = s.model_copy(update={"out": _default_out(s)})
    run_dir = Path(s.out)
    _check_resume(s, run_dir, resume)
    prepare_run(s, run_dir, resume)  # the ranks' own checks, once here: a refusal is one line, before N processes start
    run_dir.mkdir(parents=True, exist_ok=True)
    launch_cfg = run_dir / "launch.yaml"
    write_text(launch_cfg, yaml.safe_dump(_settings_dict(s), sort_keys=False))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "clotclf_core.cli", "train", "--config", str(launch_cfg)]
    cmd += (["--resume"] if resume else []) + (["--json"] if as_json else ["--quiet"] if quiet else [])
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise ClotclfError(f"data-parallel training failed (exit code {code}); the first error is printed above")
    launch_cfg.unlink(missing_ok=True)  # training.yaml in the run directory holds the same settings
    return code
