"""Scoring a model on tiles: batched inference, metrics at three levels, pictures, and the
``clotclf evaluate RUN --tiles TILES`` command's work.

Training uses the same functions for its validation and final reports, so a number printed at
the end of ``clotclf train`` and one from ``clotclf evaluate`` on the same patients are computed
by the same code.

Honesty rule: ``evaluate`` scores, by default, only patients the model never trained on
(``--patients unseen``): the patients of the run's saved split are looked up and its training
patients are left out. A TileSet from another cohort shares no patient ids, so nothing is
dropped there; ``--patients all`` includes everything and says how many were seen in training.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from .errors import ClotclfError
from .io import write_json, write_text

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

Subset = Literal["unseen", "val", "test", "all"]


@dataclass
class Runtime:
    """Where and how tensors run: device, precision, memory format, and the data-parallel group."""

    device: "torch.device"
    precision: str = "fp32"  # "fp32" | "bf16"
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        import torch

        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_input(self, images: "torch.Tensor", mean, std) -> "torch.Tensor":
        """uint8 batch from the loader -> normalised float on the device (channels-last on request)."""
        import torch

        from .data import normalize

        x = normalize(images.to(self.device, non_blocking=True), mean, std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def pick_runtime(device: str = "auto", precision: str = "auto", channels_last: str | bool = "auto",
                 rank: int = 0, world_size: int = 1, local_rank: int = 0) -> Runtime:
    """``auto``: CUDA with bf16 autocast and channels-last when a GPU is there, else CPU in fp32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ClotclfError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu (or auto)")
    if device not in ("cpu", "cuda"):
        raise ClotclfError(f"unknown --device '{device}': choose auto, cpu or cuda")
    dev = torch.device(f"cuda:{local_rank}" if device == "cuda" else "cpu")
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if channels_last == "auto":
        channels_last = dev.type == "cuda"
    return Runtime(dev, precision, bool(channels_last), rank, world_size)


# ----------------------------------------------------------------------------- inference


def eval_loader(dataset, batch_size: int, workers: int, rt: Runtime):
    """A loader over this rank's share of ``dataset`` (in order) and the positions it covers."""
    from .data import ShardSampler, make_loader

    sampler = ShardSampler(len(dataset), rt.rank, rt.world_size)
    loader = make_loader(dataset, sampler, batch_size, workers, pin_memory=rt.device.type == "cuda")
    return loader, np.asarray(sampler.positions, dtype=np.int64)


def predict_probs(model, loader, positions: np.ndarray, n: int, rt: Runtime, progress: bool = False,
                  desc: str = "predict") -> np.ndarray:
    """Softmax probabilities (n, C) for every position of the dataset; under DDP each rank scores
    its share and the shares are gathered, so every rank returns the full array."""
    import torch
    from tqdm.auto import tqdm

    cfg = model.config
    was_training = model.training
    model.eval()
    chunks = []
    with torch.inference_mode():
        for images, _targets, _rows in tqdm(loader, desc=desc, leave=False, disable=not (progress and rt.is_main),
                                            unit="batch"):
            with rt.autocast():
                logits = model(rt.to_input(images, cfg.mean, cfg.std))
            chunks.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    model.train(was_training)
    mine = np.concatenate(chunks) if chunks else np.zeros((0, cfg.num_classes), dtype=np.float32)
    if not rt.distributed:
        return mine
    import torch.distributed as dist

    # numpy arrays, gathered as objects: on CUDA the process group has a gloo backend for CPU data
    # beside NCCL (clotclf_core.train.init_distributed), so this never needs a GPU copy
    shares: list[Any] = [None] * rt.world_size
    dist.all_gather_object(shares, (positions, mine))
    out = np.zeros((n, cfg.num_classes), dtype=np.float32)
    for pos, probs in shares:
        out[pos] = probs
    return out


# ----------------------------------------------------------------------------- metrics


def patient_loss(df: "pd.DataFrame", probs: np.ndarray, labels: Sequence[str], weighted: bool = False) -> float:
    """Log loss of the patient-level probabilities (mean of slide means): early stopping's measure."""
    from . import metrics

    table = metrics.aggregate(df, probs, labels, "patient")
    y = metrics.label_indices(table["label"], labels)
    p = table[[f"p_{name}" for name in labels]].to_numpy()
    return metrics.weighted_log_loss(y, p) if weighted else metrics.log_loss(y, p)


def score(df: "pd.DataFrame", probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics at tile, slide and patient level (``metrics.evaluate``)."""
    from . import metrics

    return metrics.evaluate(df, probs, labels)


def predictions_frame(df: "pd.DataFrame", probs: np.ndarray, labels: Sequence[str]) -> "pd.DataFrame":
    cols = [c for c in ("image_id", "patient_id", "center_id", "label", "row", "x", "y", "size") if c in df.columns]
    out = df[cols].reset_index(drop=True).copy()
    for i, name in enumerate(labels):
        out[f"p_{name}"] = np.round(probs[:, i].astype(np.float64), 6)
    out["pred"] = [labels[i] for i in probs.argmax(axis=1)]
    return out


def write_pictures(out_dir: Path, df: "pd.DataFrame", probs: np.ndarray, labels: Sequence[str],
                   result: dict[str, Any], name: str) -> list[str]:
    """Confusion matrices (tile and patient level) and the patient-level ROC curve, in ``out_dir/plots``."""
    from . import metrics, plots

    plots_dir = out_dir / "plots"
    written = []
    for level in ("tile", "patient"):
        cm = result[level]["confusion_matrix"]
        png = plots_dir / f"confusion_{level}_{name}.png"
        plots.plot_confusion(cm, labels, f"{name}: {level} level (n={result[level]['n']})", png)
        written.append(str(png))
    table = metrics.aggregate(df, probs, labels, "patient")
    y = metrics.label_indices(table["label"], labels)
    png = plots_dir / f"roc_patient_{name}.png"
    plots.plot_roc(y, table[[f"p_{n}" for n in labels]].to_numpy(), labels, png, f"{name}: patient level ROC")
    written.append(str(png))
    return written


# ----------------------------------------------------------------------------- the command


def _check_labels(model_labels: list[str], index: "pd.DataFrame", where: str) -> None:
    found = sorted(set(index["label"]) - {""})
    unknown = [lab for lab in found if lab not in model_labels]
    if unknown:
        raise ClotclfError(
            f"the TileSet '{where}' has label(s) {', '.join(unknown)} that the model does not know (its labels: "
            f"{', '.join(model_labels)}); evaluate a model trained on these labels, or re-tile with a manifest "
            "whose labels match"
        )
    if not found:
        raise ClotclfError(f"the TileSet '{where}' has no labels, so there is nothing to evaluate against; "
                           "use `clotclf predict` for unlabelled slides")


def select_patients(index: "pd.DataFrame", config: dict[str, Any], subset: str) -> tuple["pd.DataFrame", dict[str, Any]]:
    """Rows of ``index`` to score and a note on what was left out (see the module docstring)."""
    split = config.get("split") or {}
    trained = set(split.get("train", []))
    val, test = set(split.get("val", [])), set(split.get("test", []))
    patients = set(index["patient_id"])
    info = {"subset": subset, "patients_in_tileset": len(patients), "seen_in_training": len(patients & trained)}
    if subset == "all":
        keep = index
    elif subset == "unseen":
        keep = index[~index["patient_id"].isin(trained)]
    elif subset in ("val", "test"):
        wanted = val if subset == "val" else test
        if not wanted:
            raise ClotclfError(f"the run's split has no {subset} patients; use --patients unseen or all")
        keep = index[index["patient_id"].isin(wanted)]
    else:
        raise ClotclfError(f"unknown --patients '{subset}': choose unseen, val, test or all")
    if keep.empty:
        raise ClotclfError(
            f"no tiles left to evaluate with --patients {subset}: every patient of this TileSet was used to train "
            "the model. Evaluate on other patients, or pass --patients all to score training patients (optimistic)"
        )
    info["patients_scored"] = int(keep["patient_id"].nunique())
    return keep, info


def evaluate_run(run: str, tiles: str, out: str | None = None, patients: str = "unseen", batch_size: int = 64,
                 workers: int = 2, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a trained model on a TileSet; write metrics, predictions and pictures to ``out``
    (default ``RUN/eval-<tileset folder name>``). Returns the metrics dict that was written."""
    from .model import load_model, read_config, resolve_run_dir
    from .tileset import TileSet

    run_dir = resolve_run_dir(run)
    if (run_dir / "cv.json").is_file() and not (run_dir / "model.safetensors").is_file():
        folds = sorted(p.name for p in run_dir.glob("fold_*") if p.is_dir())
        raise ClotclfError(
            f"'{run_dir}' is a cross-validation run; evaluate one of its fold models, "
            f"e.g. {run_dir / (folds[0] if folds else 'fold_0')}"
        )
    config = read_config(run_dir)
    model = load_model(run_dir)
    ts = TileSet(tiles)
    labels = model.labels
    _check_labels(labels, ts.index, str(tiles))
    notes = []
    if model.config.input_size != ts.tile_size:
        notes.append(f"tiles are {ts.tile_size} px and the model takes {model.config.input_size} px: resized on the fly")
    unlabelled = ts.index["label"] == ""
    if unlabelled.any():  # nothing to score them against: left out, and said
        n_slides = int(ts.index.loc[unlabelled, "image_id"].nunique())
        notes.append(f"{n_slides} slide(s) without a label left out (nothing to score them against; "
                     "`clotclf predict` gives their probabilities)")
    subset_df, info = select_patients(ts.index[~unlabelled], config, patients)
    info["unlabelled_slides_left_out"] = int(ts.index.loc[unlabelled, "image_id"].nunique())
    note = "; ".join(notes)
    rt = pick_runtime(device)
    model.to(rt.device)
    if rt.channels_last:
        import torch

        model.to(memory_format=torch.channels_last)
    from .data import TileDataset, build_transform

    rows = subset_df.index.to_numpy()
    ds = TileDataset(ts, rows, labels, build_transform(model.config.input_size, ts.tile_size, None))
    loader, positions = eval_loader(ds, batch_size, workers, rt)
    t0 = time.perf_counter()
    probs = predict_probs(model, loader, positions, len(ds), rt, progress=progress, desc="evaluate")
    seconds = time.perf_counter() - t0
    df = ts.index.iloc[rows].reset_index(drop=True)
    result = score(df, probs, labels)
    out_dir = Path(out) if out else run_dir / f"eval-{Path(tiles).resolve().name}"
    report = {
        "run": str(run_dir),
        "tileset": str(Path(tiles).resolve()),
        **info,
        "n_tiles": int(len(df)),
        "seconds": round(seconds, 2),
        "tiles_per_s": round(len(df) / seconds, 1) if seconds > 0 else None,
        "note": note,
        "metrics": result,
    }
    write_json(out_dir / "metrics.json", report)
    write_text(out_dir / "predictions.csv", predictions_frame(df, probs, labels).to_csv(index=False))
    write_pictures(out_dir, df, probs, labels, result, "evaluate")
    report["out"] = str(out_dir)
    return report
