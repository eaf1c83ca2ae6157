"""Metrics at tile, slide and patient level, and the STRIP AI competition metric.

A model scores tiles; a clinician needs one answer per patient. So every evaluation is reported
at three levels (see docs/evaluation.md):

- **tile**: one row per tile, the model's raw output;
- **slide**: the mean of a slide's tile probabilities (one row per ``image_id``);
- **patient**: the mean of the patient's *slide* probabilities (one row per ``patient_id``), so a
  slide with many tiles does not outvote a patient's other slides.

The headline number is the Mayo Clinic STRIP AI (Kaggle) metric, :func:`weighted_log_loss`, at
patient level: rows are rescaled to sum to one, clipped to ``[1e-15, 1 - 1e-15]``, the mean of
``-log p(true class)`` is taken within each class, and those class means are averaged with equal
weight, so the 72 % CE majority does not dominate.

Class-averaged metrics (balanced accuracy, macro precision / recall / F1, weighted log loss) all
average over the classes that have at least one true sample; a class with no samples has no
mean to contribute (Kaggle's formula divides by its count, zero) and is left out, not scored as 0.

Accuracy, balanced accuracy, precision / recall / F1, the confusion matrix and ROC AUC are
scikit-learn's. The two log losses are written here: the competition rescales rows and clips to
``[1e-15, 1 - 1e-15]`` (docs/evaluation.md), where ``sklearn.metrics.log_loss`` clips to the
float's machine epsilon (2.2e-16) and refuses rows that do not sum to one, so it would score a
confident mistake differently from Kaggle.

At about 410 lines this module is over the project's ~400: it is one concern (the metrics, from one
set of input checks through the three levels to the fold summary and its table), and each part is
small.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from clotclf_core.plugin.errors import ClotclfError

EPS = 1e-15
LEVELS: tuple[str, ...] = ("tile", "slide", "patient")
#: rows of :func:`format_table`, in this order, when present
TABLE_ROWS: tuple[str, ...] = (
    "n",
    "weighted_log_loss",
    "log_loss",
    "balanced_accuracy",
    "accuracy",
    "roc_auc",
    "f1_macro",
    "precision_macro",
    "recall_macro",
)


class MetricsError(ClotclfError):
    """Inputs to a metric that cannot be scored (shapes, labels, ids)."""


# ----------------------------------------------------------------------------- input checks


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(x) for x in labels]
    if len(labels) < 2:
        raise MetricsError(f"need at least two class labels, got {labels}; pass the model's labels, e.g. ['CE', 'LAA']")
    if len(set(labels)) != len(labels):
        raise MetricsError(f"class labels {labels} contain duplicates; each class needs a distinct name")
    return labels


def _check_inputs(y_true: Any, probs: Any, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate class indices and a probability matrix; return ``(y int64 (N,), p float64 (N, C))``.

    A 1-D ``probs`` is read as the probability of class 1 of a binary problem (as scikit-learn does).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise MetricsError(f"probabilities must be a (samples, classes) array, got shape {p.shape}")
    y = np.asarray(y_true)
    if y.ndim != 1 or len(y) != len(p):
        raise MetricsError(f"got {y.size} true labels for {len(p)} rows of probabilities; they must match one to one")
    if len(y) == 0:
        raise MetricsError("nothing to score: no samples (is the validation split empty?)")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise MetricsError(
            f"true labels must be class indices 0..C-1, got values like {y[:3].tolist()}; "
            "map label names to indices with metrics.class_indices(names, labels)"
        )
    y = y.astype(np.int64)
    n_classes = p.shape[1] if n_classes is None else int(n_classes)
    if p.shape[1] != n_classes:
        raise MetricsError(f"probabilities have {p.shape[1]} columns but there are {n_classes} classes")
    if n_classes < 2:
        raise MetricsError(f"need at least two classes, got {n_classes}")
    if y.min() < 0 or y.max() >= n_classes:
        raise MetricsError(f"true class index {int(y.max() if y.max() >= n_classes else y.min())} is outside 0..{n_classes - 1}")
    if not np.all(np.isfinite(p)):
        raise MetricsError("probabilities contain NaN or infinity; check the model's output (diverged training?)")
    if np.any(p < 0):
        raise MetricsError("probabilities contain negative values; pass softmax probabilities, not logits")
    zero = np.flatnonzero(p.sum(axis=1) <= 0)
    if len(zero):
        raise MetricsError(f"probability row {int(zero[0])} sums to 0 and cannot be rescaled; every row needs some mass")
    return y, p


def _rescale(p: np.ndarray) -> np.ndarray:
    """Rows divided by their sum (Kaggle rescales submissions the same way)."""
    return p / p.sum(axis=1, keepdims=True)


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(p, EPS, 1.0 - EPS)


def class_indices(names: Iterable[Any], labels: Sequence[str]) -> np.ndarray:
    """Label names -> class indices in ``labels`` order; an unknown name is an error naming it
    (unlike :func:`clotclf_core.tiling.dataset.label_indices`, which gives -1 to unlabelled tiles)."""
    lookup = {name: i for i, name in enumerate(labels)}
    names = pd.Series(list(names) if not isinstance(names, pd.Series) else names, dtype=object).astype(str)
    idx = names.map(lookup)
    if idx.isna().any():
        unknown = sorted(names[idx.isna()].unique())
        raise MetricsError(
            f"label(s) {unknown} are not among the model's labels {list(labels)}; "
            "fix the manifest's label column or train with --labels matching it"
        )
    return idx.to_numpy(dtype=np.int64)


# ----------------------------------------------------------------------------- losses


def log_loss(y_true: Any, probs: Any, n_classes: int | None = None) -> float:
    """Plain mean ``-log p(true class)`` over samples, with the same rescaling and clipping."""
    y, p = _check_inputs(y_true, probs, n_classes)
    p = _clip(_rescale(p))
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def weighted_log_loss(y_true: Any, probs: Any, n_classes: int | None = None) -> float:
    """The STRIP AI competition metric: class-balanced multi-class log loss (lower is better).

    Rows are rescaled to sum to 1, then clipped to ``[1e-15, 1 - 1e-15]``; within each class c the
    mean of ``-log p[i, c]`` over its samples is taken; the result is the equal-weighted mean of
    those class means. A class with no samples is left out of the mean (Kaggle's per-class term
    divides by its sample count, zero), so the score stays a mean over the classes actually present.
    Perfect predictions score ~0; uniform predictions score ``log(C)``.
    """
    y, p = _check_inputs(y_true, probs, n_classes)
    p = _clip(_rescale(p))
    per_sample = -np.log(p[np.arange(len(y)), y])
    class_means = [per_sample[y == c].mean() for c in range(p.shape[1]) if np.any(y == c)]
    return float(np.mean(class_means))


# ----------------------------------------------------------------------------- classification


def _roc_auc(y: np.ndarray, p: np.ndarray, labels: list[str]) -> tuple[float | None, str | None]:
    """Binary: AUC of the positive (second) label; multi-class: macro one-vs-rest. None + reason if undefined."""
    absent = [labels[c] for c in range(len(labels)) if not np.any(y == c)]
    if absent:
        return None, f"not defined: no true samples of {', '.join(repr(a) for a in absent)}"
    if len(labels) == 2:
        return float(roc_auc_score(y == 1, p[:, 1])), None
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(len(labels))))), None


def classification_metrics(y_true_idx: Any, probs: Any, labels: Sequence[str]) -> dict[str, Any]:
    """All metrics of one level: counts, accuracy, balanced accuracy, per-class and macro
    precision / recall / F1, ROC AUC, log loss, weighted log loss and the confusion matrix.

    The predicted class is the arg-max of the (rescaled) probabilities. Per-class values that are
    undefined are ``None``: recall and F1 of a class with no true samples, precision of a class
    never predicted. Macro averages run over classes with true samples (an undefined precision
    there counts as 0, as scikit-learn's ``zero_division=0``). ``confusion_matrix[i][j]`` counts
    samples of true class i predicted as j. Everything is JSON-serialisable.
    """
    labels = _check_labels(labels)
    y, p = _check_inputs(y_true_idx, probs, len(labels))
    p = _rescale(p)
    n_classes = len(labels)
    classes = list(range(n_classes))
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=classes)
    # NaN where undefined: precision of a class never predicted, recall of a class with no true samples
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=classes, zero_division=np.nan)
    f1[support == 0] = np.nan  # scikit-learn scores a predicted class with no true samples 0; it has no F1

    def defined(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    per_class = {name: {"precision": defined(precision[c]), "recall": defined(recall[c]), "f1": defined(f1[c]),
                        "support": int(support[c])} for c, name in enumerate(labels)}
    present = [c for c in classes if support[c] > 0]
    # macro over the classes with true samples; an undefined precision there counts as 0
    macro = precision_recall_fscore_support(y, pred, labels=present, average="macro", zero_division=0)
    with warnings.catch_warnings():  # a class without true samples is left out (as documented above), not a warning
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        balanced = balanced_accuracy_score(y, pred)
    roc_auc, roc_note = _roc_auc(y, p, labels)
    return {
        "n": len(y),
        "class_counts": {name: int(support[c]) for c, name in enumerate(labels)},
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced),
        "precision_macro": float(macro[0]),
        "recall_macro": float(macro[1]),
        "f1_macro": float(macro[2]),
        "roc_auc": roc_auc,
        "roc_auc_note": roc_note,
        "log_loss": log_loss(y, p, n_classes),
        "weighted_log_loss": weighted_log_loss(y, p, n_classes),
        "per_class": per_class,
        "labels": labels,
        "confusion_matrix": cm.tolist(),
    }


# ----------------------------------------------------------------------------- levels


def _prob_columns(labels: Sequence[str]) -> list[str]:
    return [f"p_{name}" for name in labels]


def _group_mean(frame: pd.DataFrame, key: str, prob_cols: list[str], keep: list[str], count_col: str) -> pd.DataFrame:
    """Mean of ``prob_cols`` per ``key``; ``keep`` columns must be constant within a group."""
    grouped = frame.groupby(key, sort=True)
    for col in keep:
        varying = grouped[col].nunique(dropna=False)
        bad = varying[varying > 1]
        if len(bad):
            example = bad.index[0]
            values = sorted(map(str, frame.loc[frame[key] == example, col].unique()))
            raise MetricsError(
                f"{key} '{example}' has several {col} values {values}; each {key} must have one {col} "
                "(fix the manifest)"
            )
    out = grouped[prob_cols].mean()
    out[count_col] = grouped.size()
    if keep:
        out = grouped[keep].first().join(out)
    return out.reset_index()


def aggregate(df: pd.DataFrame, probs: Any, labels: Sequence[str], level: str = "patient") -> pd.DataFrame:
    """Tile probabilities -> one row per tile, slide or patient.

    ``df`` has one row per tile with ``image_id`` and (for patient level) ``patient_id``; its
    ``label`` column (label names) is carried along when present. ``probs`` is ``(len(df), C)`` in
    ``labels`` order. Slide = mean of its tiles; patient = mean of its slides' means (not of all
    its tiles). Returns the ids, ``label``, ``p_<label>`` columns and ``n_tiles`` / ``n_slides``.
    """
    if level not in LEVELS:
        raise MetricsError(f"unknown level '{level}'; choose one of {', '.join(LEVELS)}")
    return _aggregate_up_to(df, probs, _check_labels(labels), level)[level]


def _aggregate_up_to(df: pd.DataFrame, probs: Any, labels: list[str], level: str) -> dict[str, pd.DataFrame]:
    """The tables of every level up to ``level``, each built from the one below (see :func:`aggregate`)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (len(df), len(labels)):
        raise MetricsError(
            f"probabilities have shape {p.shape}, expected ({len(df)} tiles, {len(labels)} classes {labels})"
        )
    needed = ["image_id"] + (["patient_id"] if level == "patient" else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise MetricsError(
            f"the tile table lacks column(s) {missing}; add them to the manifest "
            "(use the image_id as patient_id if each slide is its own patient)"
        )
    for col in needed:  # groupby would silently drop NaN ids, or pool every "" into one patient
        if any(pd.isna(v) or not str(v).strip() for v in df[col].unique()):
            raise MetricsError(
                f"some tile rows have an empty {col}; every tile needs one "
                "(use the image_id as patient_id if the patient is unknown)"
            )
    cols = _prob_columns(labels)
    ids = [c for c in ("image_id", "patient_id", "label") if c in df.columns]
    tiles = df[ids].reset_index(drop=True).copy()
    tiles[cols] = p
    out = {"tile": tiles}
    if level == "tile":
        return out
    keep = [c for c in ("patient_id", "label") if c in tiles.columns]
    slides = out["slide"] = _group_mean(tiles, "image_id", cols, keep, "n_tiles")
    if level == "slide":
        return out
    keep = [c for c in ("label",) if c in slides.columns]
    patients = out["patient"] = _group_mean(slides, "patient_id", cols, keep, "n_slides")
    patients["n_tiles"] = slides.groupby("patient_id", sort=True)["n_tiles"].sum().to_numpy()
    return out


def evaluate(df: pd.DataFrame, probs: Any, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`classification_metrics` at tile, slide and patient level: ``{"tile": ..., "slide": ..., "patient": ...}``."""
    labels = _check_labels(labels)
    if "label" not in df.columns:
        raise MetricsError("the tile table has no 'label' column: evaluation needs the true label of every slide")
    tables = _aggregate_up_to(df, probs, labels, "patient")
    out: dict[str, dict[str, Any]] = {}
    for level, table in tables.items():
        y = class_indices(table["label"], labels)
        out[level] = classification_metrics(y, table[_prob_columns(labels)].to_numpy(), labels)
    return out


# ----------------------------------------------------------------------------- folds and tables


def _scalars(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Numbers worth averaging over folds: top-level scalars and ``recall[CE]``-style per-class values."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if value is None or isinstance(value, (int, float, np.integer, np.floating)):
            out[key] = None if value is None else float(value)
    for name, values in (metrics.get("per_class") or {}).items():
        for key in ("precision", "recall", "f1"):
            if key in values:
                out[f"{key}[{name}]"] = None if values[key] is None else float(values[key])
    return out


def _stats(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None and not math.isnan(v)]
    if not got:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "values": values}
    arr = np.asarray(got)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": len(got),
        "values": values,
    }


def summarise_folds(fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample standard deviation (ddof=1) of every metric over cross-validation folds.

    Takes a list of :func:`evaluate` results and returns ``{level: {metric: {"mean", "std", "min",
    "max", "n", "values"}}}``; ``n`` counts the folds where the metric was defined (ROC AUC is not
    when a fold lacks a class). A list of single-level :func:`classification_metrics` results gives
    ``{metric: {...}}`` instead.
    """
    if not fold_metrics:
        raise MetricsError("no fold metrics to summarise; run at least one fold")
    levels = [lv for lv in LEVELS if any(lv in fold for fold in fold_metrics)]

    def summarise(dicts: list[dict[str, Any] | None]) -> dict[str, Any]:
        scalars = [_scalars(d) if d else {} for d in dicts]
        keys: list[str] = []
        for s in scalars:
            keys += [k for k in s if k not in keys]
        return {key: _stats([s.get(key) for s in scalars]) for key in keys}

    if not levels:
        return summarise(fold_metrics)
    return {lv: summarise([fold.get(lv) for fold in fold_metrics]) for lv in levels}


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, dict):  # a summarise_folds entry
        if value.get("mean") is None:
            return "n/a"
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(metrics: dict[str, Any], rows: Sequence[str] = TABLE_ROWS, digits: int = 3) -> str:
    """A fixed-width text table: one row per metric, one column per level.

    Accepts :func:`evaluate` output, :func:`summarise_folds` output (cells read ``mean ± std``), or a
    single-level dict (one column, ``value``). Undefined values print as ``n/a``.
    """
    levels = [lv for lv in LEVELS if lv in metrics]
    columns = {lv: metrics[lv] for lv in levels} if levels else {"value": metrics}
    shown = [r for r in rows if any(r in col for col in columns.values())]
    if not shown:
        raise MetricsError(f"no known metric in the given dict (keys: {sorted(metrics)[:8]}); pass evaluate()'s output")
    cells = [[_cell(col.get(r), digits) for col in columns.values()] for r in shown]
    name_w = max(len("metric"), *(len(r) for r in shown))
    col_w = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(columns)]
    lines = ["metric".ljust(name_w) + "  " + "  ".join(h.rjust(w) for h, w in zip(columns, col_w))]
    lines.append("-" * len(lines[0]))
    for r, row in zip(shown, cells):
        lines.append(r.ljust(name_w) + "  " + "  ".join(c.rjust(w) for c, w in zip(row, col_w)))
    return "\n".join(lines)
