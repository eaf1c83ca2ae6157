"""``clotclf train-filter``: train the background/tissue MobileNetV3 and write its run directory.

Recipe: ImageNet normalisation, random flips and 90-degree rotations (tissue has no orientation),
AdamW with a cosine learning-rate decay, cross-entropy over (background, tissue) with each class
weighted by its inverse frequency (an unbalanced set must not teach its prior). A stratified,
seeded fraction of the patches is held out; the weights kept are those of the epoch with the
lowest validation loss (the last epoch when nothing is held out). Everything random follows
``seed``.

Caveat written into the model card: patches of one slide can land on both sides of the split,
so validation numbers are optimistic when the patches come from few slides. Hold out whole
slides (separate patch folders) for an unbiased estimate.

**Why this plugin trains itself instead of through the core's trainer** (issue 14 asked for one or
the other). A plugin imports only the public plugin API (``clotclf_core.plugin``); the core's
trainer (``clotclf_core.training``) is not part of it, so a third party could not call it, and a
built-in plugin that did would no longer be what a third party could have written. Making the
trainer public would freeze its settings, loop, splits and run format as a contract, and it
trains something else: the CE / LAA classifier on a TileSet, split by patient, scored at slide and
patient level (the competition's weighted log loss), saved as a classifier run that
``load_model`` rebuilds from a backbone and a head plugin. This filter learns from a folder of
labelled PNG patches with no patients (the public STRIP AI background set, or
``clotclf export-patches``), is scored per patch (accuracy, AUC at a threshold), and its run is a
``patch_filter`` run that only its own factory loads (the core's ``load_model`` refuses it, and it
refuses a classifier run). What the two share goes through the plugin API: the run files and their
checks (:func:`clotclf_core.plugin.weights.save_run`, ``read_run_config``, ``run_weights``,
``check_weights_hash``: the same the core's runs use), atomic writes, the device
(:func:`clotclf_core.plugin.device.resolve_device`), settings validated as :class:`Options` with
the core's error wording, and registry names for ``weights=`` (a ``RunDirectory`` option). What
stays here is what is specific to it: this short loop, the per-patch split and its card.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationError

from clotclf_core.plugin import ClotclfError, ConfigError, Options, csv_rows_text, write_json, write_text
from clotclf_core.plugin.device import resolve_device
from clotclf_core.plugin.spec import format_validation_error

from . import ARCHES, DEFAULT_ARCH, FILTER_NAME, LABELS, Arch

#: training patches the BatchNorm statistics are re-estimated on after each epoch
BN_CALIBRATION_PATCHES = 2048
RUN_FILES = ("model.safetensors", "config.json", "metrics.json", "history.csv", "README.md", "split.csv")


class TrainFilterSettings(Options):
    """Everything that decides a filter training run (saved in config.json under ``training``)."""

    arch: Arch = DEFAULT_ARCH  # type: ignore[valid-type]
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(64, ge=2, le=4096)
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.01, ge=0, le=1.0)
    input_size: int = Field(224, ge=32, le=1024)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0
    device: str = "auto"
    pretrained: bool = False


def make_settings(**values: Any) -> TrainFilterSettings:
    try:
        return TrainFilterSettings(**values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "train-filter") + f" (arch is one of {', '.join(ARCHES)})") from None


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split stratified by class: each class gives round(n * val_fraction) patches (>= 1)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in range(len(LABELS)):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = 0
        if val_fraction > 0:
            if len(idx) < 2:
                raise ClotclfError(
                    f"class '{LABELS[cls]}' has {len(idx)} patch; holding out a validation set needs at least 2 per "
                    "class: add patches, or pass --val-fraction 0"
                )
            n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def augment(x, generator):
    """Random flip + rotation by k * 90 degrees per tile of a uint8 (N, S, S, 3) batch."""
    import torch

    k = torch.randint(0, 4, (len(x),), generator=generator)
    flip = torch.randint(0, 2, (len(x),), generator=generator).bool()
    out = x.clone()
    for rot in range(4):
        for f in (False, True):
            sel = ((k == rot) & (flip == f)).nonzero().flatten().to(x.device)
            if len(sel):
                part = torch.rot90(x[sel], rot, dims=(1, 2))
                out[sel] = part.flip(2) if f else part
    return out


def recalibrate_batchnorm(net, images: np.ndarray, batch_size: int, device) -> None:
    """Re-estimate BatchNorm statistics as exact averages over ``images`` with the final weights.

    The running averages (momentum 0.1) lag behind the weights and still hold much of their
    initial values after a few hundred steps, which wrecks eval-mode predictions of short runs.
    """
    import torch

    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    net.train()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            if len(batch) >= 2:
                net(net.prepare(torch.from_numpy(batch).to(device)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def evaluate(net, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Loss, accuracy, balanced accuracy and AUC of P(tissue) on held-out patches (threshold 0.5)."""
    import torch
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    net.eval()
    probs, losses = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = net.prepare(torch.from_numpy(images[start:start + batch_size]))
            y = torch.from_numpy(labels[start:start + batch_size]).to(x.device)
            logits = net(x).float()
            losses.append(float(torch.nn.functional.cross_entropy(logits, y, reduction="sum")))
            probs.append(torch.softmax(logits, 1)[:, 1].cpu().numpy())
    p = np.concatenate(probs)
    pred = (p >= 0.5).astype(np.int64)
    both = len(np.unique(labels)) == 2
    return {
        "loss": sum(losses) / len(labels),
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "auc": float(roc_auc_score(labels, p)) if both else None,
        "n": int(len(labels)),
        "n_tissue": int((labels == 1).sum()),
        "n_background": int((labels == 0).sum()),
    }


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ClotclfError(f"--out '{out}' is a file; give a folder for the run directory")
    taken = [name for name in RUN_FILES if (out / name).exists()]
    if taken and not overwrite:
        raise ClotclfError(f"--out '{out}' already holds a run ({', '.join(taken)}); choose another folder or pass --overwrite")


def train_filter(data: str | Path, out: str | Path, settings: TrainFilterSettings, progress: bool = True,
                 overwrite: bool = False) -> dict[str, Any]:
    """Train on ``data/{tissue,background}``, write the run directory ``out``; returns metrics.json's content."""
    import torch
    from tqdm.auto import tqdm

    from ._data import list_patches, read_patches
    from ._net import BackgroundNet, save_filter_run

    out = Path(out)
    _check_out(out, overwrite)
    device = resolve_device(settings.device)
    paths, labels = list_patches(data)
    train_idx, val_idx = split_indices(labels, settings.val_fraction, settings.seed)
    images = read_patches(paths, settings.input_size, progress=progress)

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    net = BackgroundNet(settings.arch, settings.input_size, pretrained=settings.pretrained).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / settings.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * steps_per_epoch)
    train_y = labels[train_idx]  # training pixels stay in `images` (no copy: 20k patches at 224 px are 3 GB)
    val_x, val_y = images[val_idx], labels[val_idx]
    # an unbalanced patch set must not teach the prior: weight each class by 1 / its frequency
    counts = np.bincount(train_y, minlength=len(LABELS))
    class_weights = torch.tensor(len(train_y) / (len(LABELS) * np.maximum(counts, 1)), dtype=torch.float32, device=device)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state = None
    for epoch in range(1, settings.epochs + 1):
        net.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(train_idx), generator=gen).numpy()
        seen = correct = 0
        loss_sum = 0.0
        bar = tqdm(range(0, len(order), settings.batch_size), desc=f"epoch {epoch}/{settings.epochs}",
                   unit="batch", disable=not progress, leave=False)
        for start in bar:
            sel = train_idx[order[start:start + settings.batch_size]]
            if len(sel) < 2:  # BatchNorm cannot train on a single patch
                continue
            x = net.prepare(augment(torch.from_numpy(images[sel]).to(device), gen))
            y = torch.from_numpy(labels[sel]).to(device)
            logits = net(x)
            loss = torch.nn.functional.cross_entropy(logits, y, weight=class_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(sel)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(sel)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        recalibrate_batchnorm(net, images[np.sort(train_idx[order[:BN_CALIBRATION_PATCHES]])], settings.batch_size, device)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": round(loss_sum / max(seen, 1), 5),
            "train_accuracy": round(correct / max(seen, 1), 5),
            "lr": opt.param_groups[0]["lr"],
        }
        if len(val_idx):
            val = evaluate(net, val_x, val_y, settings.batch_size)
            row |= {f"val_{k}": (round(v, 5) if isinstance(v, float) else v) for k, v in val.items()
                    if k in ("loss", "accuracy", "balanced_accuracy", "auc")}
            if best is None or val["loss"] < best["loss"]:
                best = val | {"epoch": epoch}
                best_state = copy.deepcopy(net.state_dict())
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["patches_per_s"] = round(seen / max(row["seconds"], 1e-9), 1)
        history.append(row)
        if progress:
            tqdm.write(f"epoch {epoch}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "epoch"))
    if best_state is not None:
        net.load_state_dict(best_state)

    metrics = {
        "filter": FILTER_NAME,
        "validation": best,  # None when --val-fraction 0
        "selected_epoch": best["epoch"] if best else settings.epochs,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "n_train_tissue": int((train_y == 1).sum()),
        "n_train_background": int((train_y == 0).sum()),
        "device": str(device),
        "train_seconds": round(sum(r["seconds"] for r in history), 2),
    }
    root = Path(data)
    split_rows = [{"path": paths[i].relative_to(root).as_posix(), "label": LABELS[labels[i]], "subset": subset}
                  for subset, idx in (("train", train_idx), ("val", val_idx)) for i in idx]
    extra = {
        "training": settings.model_dump(mode="json") | {"optimizer": "AdamW", "schedule": "cosine",
                                                          "augment": "random flip + rot90",
                                                          "class_weights": [round(float(w), 4) for w in class_weights]},
        "data": {"path": str(root.resolve()), "n_tissue": int((labels == 1).sum()),
                 "n_background": int((labels == 0).sum())},
        "split": {"strategy": "stratified random, seeded", "val_fraction": settings.val_fraction,
                  "seed": settings.seed, "n_train": metrics["n_train"], "n_val": metrics["n_val"],
                  "file": "split.csv"},
    }
    # weights and config first, so a crash later never leaves metrics describing other weights
    save_filter_run(net.cpu(), out, extra)
    write_text(out / "split.csv", _csv(split_rows))
    write_json(out / "metrics.json", metrics)
    write_text(out / "history.csv", _csv(history))
    write_text(out / "README.md", _card(out, settings, metrics))
    return metrics


def _csv(rows: list[dict[str, Any]]) -> str:
    return csv_rows_text(rows)


def _card(out: Path, s: TrainFilterSettings, m: dict[str, Any]) -> str:
    val = m["validation"]
    if val:
        auc = "n/a" if val["auc"] is None else f"{val['auc']:.4f}"
        result = (f"| accuracy | balanced accuracy | AUC | loss | patches (tissue / background) |\n|---|---|---|---|---|\n"
                  f"| {val['accuracy']:.4f} | {val['balanced_accuracy']:.4f} | {auc} | {val['loss']:.4f} | "
                  f"{val['n']} ({val['n_tissue']} / {val['n_background']}) |\n\n"
                  f"Held-out patches, threshold 0.5, weights of epoch {val['epoch']} (lowest validation loss).")
    else:
        result = "No validation set (--val-fraction 0): the weights are those of the last epoch, unevaluated."
    return f"""# {out.name}: `{FILTER_NAME}` background filter

A {s.arch} classifying {s.input_size}x{s.input_size} RGB patches as background or tissue, for
tiling: `clotclf tile ... --filter otsu --filter {FILTER_NAME}:weights={out}`.
Score = P(tissue); tiles scoring >= the filter's `threshold` (default 0.5) are kept.
Not a clot (CE / LAA) classifier.

## Training

{m['n_train']} patches ({m['n_train_tissue']} tissue, {m['n_train_background']} background), {s.epochs} epochs,
AdamW lr {s.lr} (cosine), batch {s.batch_size}, flips + 90-degree rotations, ImageNet normalisation,
{'ImageNet-pretrained' if s.pretrained else 'random'} initialisation, seed {s.seed}, device {m['device']},
{m['train_seconds']} s.

## Validation

{result}

The split is stratified random over patches (split.csv). Patches from one slide can be on both
sides, so these numbers are optimistic for unseen slides; evaluate on slides held out entirely.
"""
