"""How far a number can be trusted: a bootstrap interval for the headline, a table per centre, and a
loud note when two held-out estimates disagree beyond their intervals.

- :func:`bootstrap_interval`: the 95 % percentile interval of the patient-level weighted log loss
  over :data:`N_BOOT` resamples of the **patients** (with replacement, within each class, so every
  resample keeps the class counts the class-weighted metric needs), seeded: the same predictions
  give the same interval. Six test patients at 0.403 give about 0.28-0.53: the width is the point.
- :func:`per_centre`: the same metrics for each centre's patients (stain, scanner and cutting
  differ by centre; a model that works at one may not at another).
- :func:`disagreement`: out-of-fold (or validation) and test results whose intervals do not
  overlap — e.g. 0.533 out of fold against 0.901 on untouched test patients — get a note in
  capitals: one of them is not what it seems (a leak, a shift between the sets, or luck).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from clotclf_core.scoring import metrics

#: bootstrap resamples of the patients
N_BOOT = 2000
LEVEL = 0.95
#: what every interval says about itself (metrics.json, the card)
CI_NOTE = (f"{LEVEL:.0%} bootstrap percentile interval: patients resampled with replacement within each class, "
           f"{N_BOOT} times, seeded")


def patient_predictions(frame: pd.DataFrame, probs: Any, labels: Sequence[str]) -> pd.DataFrame:
    """One row per patient (``patient_id``, ``label``, ``center_id`` when known, ``p_<label>``…) from
    tile or slide predictions (slide = mean of its rows, patient = mean of its slides)."""
    table = metrics.aggregate(frame, probs, labels, "patient")
    if "center_id" in frame.columns:
        centre = frame.drop_duplicates("patient_id").set_index("patient_id")["center_id"].astype(str)
        table["center_id"] = table["patient_id"].map(centre).fillna("").to_numpy()
    return table


def _per_sample_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``-log p(true class)``, rescaled and clipped exactly as :func:`metrics.weighted_log_loss` does."""
    p = np.clip(p / p.sum(axis=1, keepdims=True), metrics.EPS, 1 - metrics.EPS)
    return -np.log(p[np.arange(len(y)), y])


def bootstrap_interval(y: Any, probs: Any, seed: int = 0, n_boot: int = N_BOOT) -> list[float] | None:
    """``[low, high]`` of the weighted log loss (see the module docstring); None when a class present
    has a single patient (resampling within the class could not vary it: a zero-width interval would lie)."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    counts = np.bincount(y) if len(y) else np.zeros(0, dtype=int)
    if len(y) < 2 or (counts[counts > 0] < 2).any():
        return None
    loss = _per_sample_loss(y, p)
    rng = np.random.default_rng([int(seed), 1995])
    class_means = []
    for c in np.unique(y):
        members = loss[y == c]
        picks = rng.integers(len(members), size=(n_boot, len(members)))
        class_means.append(members[picks].mean(axis=1))
    stats = np.mean(class_means, axis=0)
    low, high = np.quantile(stats, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return [round(float(low), 4), round(float(high), 4)]


def interval_of(table: pd.DataFrame, labels: Sequence[str], seed: int = 0) -> list[float] | None:
    """:func:`bootstrap_interval` of a :func:`patient_predictions` table."""
    y = metrics.class_indices(table["label"], labels)
    return bootstrap_interval(y, table[[f"p_{n}" for n in labels]].to_numpy(), seed)


def per_centre(table: pd.DataFrame, labels: Sequence[str], seed: int = 0) -> list[dict[str, Any]] | None:
    """One row per centre of a :func:`patient_predictions` table (None without centres): patients,
    class counts, weighted log loss with its interval, balanced accuracy, ROC AUC (None with one class)."""
    if "center_id" not in table.columns or not (table["center_id"].astype(str).str.strip() != "").any():
        return None
    rows = []
    cols = [f"p_{n}" for n in labels]
    centres = table["center_id"].astype(str)
    order = sorted(set(centres), key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))  # 2 before 10
    for centre in order:
        group = table[centres == centre]
        y = metrics.class_indices(group["label"], labels)
        m = metrics.classification_metrics(y, group[cols].to_numpy(), labels)
        rows.append({"center_id": centre or "(none)", "n_patients": len(group), "class_counts": m["class_counts"],
                     "weighted_log_loss": round(m["weighted_log_loss"], 4),
                     "weighted_log_loss_ci95": bootstrap_interval(y, group[cols].to_numpy(), seed),
                     "balanced_accuracy": round(m["balanced_accuracy"], 4),
                     "roc_auc": None if m["roc_auc"] is None else round(m["roc_auc"], 4)})
    return rows


def format_centres(rows: list[dict[str, Any]]) -> str:
    """The per-centre table as fixed-width text (``clotclf evaluate`` and ``train`` print it)."""
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"{'centre':>8} {'patients':>8}  {'classes':<18} {'weighted log loss (95% CI)':>27} {'bal. acc.':>9} {'ROC AUC':>8}"]
    for r in rows:
        ci = r["weighted_log_loss_ci95"]
        ci_text = f"{r['weighted_log_loss']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{r['weighted_log_loss']:.3f}"
        classes = " ".join(f"{k} {v}" for k, v in r["class_counts"].items())
        lines.append(f"{r['center_id']:>8} {r['n_patients']:>8}  {classes:<18} {ci_text:>27} {f(r['balanced_accuracy']):>9} "
                     f"{f(r['roc_auc']):>8}")
    return "\n".join(lines)


def disagreement(first: dict[str, Any], second: dict[str, Any]) -> str | None:
    """A note in capitals when two headline records' intervals do not overlap (else None)."""
    a, b = first.get("weighted_log_loss_ci95"), second.get("weighted_log_loss_ci95")
    if not a or not b or (a[0] <= b[1] and b[0] <= a[1]):
        return None
    return (f"{first['on'].upper()} AND {second['on'].upper()} DISAGREE BEYOND THEIR 95 % INTERVALS: weighted log loss "
            f"{first['weighted_log_loss']:.3f} ({a[0]:.3f}-{a[1]:.3f}, n = {first['n_patients']}) against "
            f"{second['weighted_log_loss']:.3f} ({b[0]:.3f}-{b[1]:.3f}, n = {second['n_patients']}). One of them is not "
            "what it seems: look for patients or centres that differ between the sets (the per-centre table), leakage, "
            "or too few patients; trust neither until it is explained")
