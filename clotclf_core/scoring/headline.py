"""The headline of a result: its most honest number, said the same way everywhere.

The headline is the held-out test patients (never trained on, never used for early stopping),
else — under ``--fold all`` — the out-of-fold patients, else the validation patients, labelled as
what early stopping chose on. It always carries n, the competition metric (patient-level weighted
log loss) with its bootstrap 95 % interval (patients resampled, :mod:`clotclf_core.scoring.intervals`)
and the constant-0.5 baseline (ln 2 = 0.693 for two classes) beside it, and whether the data were
synthetic. When the run calibrates or clips its probabilities (:mod:`clotclf_core.scoring.calibration`)
the headline is the post-processed number — what ``clotclf predict`` outputs — with the raw one
beside it. ``clotclf train``, ``evaluate``, ``metrics.json`` and the model card use it;
:func:`held_out` assembles it, with the per-centre table and the calibration's effect, from predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clotclf_core.scoring import intervals, metrics
from clotclf_core.scoring.calibration import Calibration, calibrate_slides, expected_calibration_error

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

#: what each possible headline is, in the words metrics.json, the card and the CLI use
WHAT = {
    "test": "held-out test patients: never trained on, never used for early stopping",
    "test_ensemble": "held-out test patients, scored by the mean of the fold models: never trained on, never used "
                     "for early stopping",
    "oof": "out-of-fold patients: each scored by the one fold model that never trained on it (early stopping "
           "watched them, so slightly optimistic)",
    "val": "validation patients only, the ones early stopping chose the epoch on (optimistic): this run holds out no "
           "test set; use --test-fraction, or --fold all",
}


#: the label of the validation numbers wherever they are shown beside a held-out result
VAL_NOTE = "validation patients: early stopping chose the best epoch on them, so their numbers are optimistic"


def baseline(n_classes: int) -> float:
    """Weighted log loss of equal probabilities for every patient (ln 2 = 0.693 for CE / LAA)."""
    return round(math.log(n_classes), 4)


def headline(on: str, levels: dict[str, Any], n_classes: int, synthetic: bool | None = None,
             what: str | None = None, interval: list[float] | None = None,
             uncalibrated: dict[str, Any] | None = None, postprocessing: str | None = None,
             ece: float | None = None) -> dict[str, Any]:
    """The headline record (``metrics.json``'s first entry) of ``levels`` = ``{"slide"?, "patient", ...}``;
    ``interval``: the bootstrap 95 % interval of its weighted log loss; ``uncalibrated``: the levels
    before calibration / clipping when ``levels`` are after it, ``postprocessing`` saying how;
    ``ece``: the patients' expected calibration error."""
    patient = levels["patient"]
    out = {
        "on": on,
        "what": what or WHAT[on],
        "n_patients": patient.get("n"),
        "weighted_log_loss": patient.get("weighted_log_loss"),
        "weighted_log_loss_ci95": interval,
        "baseline_weighted_log_loss": baseline(n_classes),
        "balanced_accuracy": patient.get("balanced_accuracy"),
        "roc_auc": patient.get("roc_auc"),
        "accuracy": patient.get("accuracy"),
    }
    if interval is None:
        del out["weighted_log_loss_ci95"]
    if ece is not None:
        out["ece"] = ece
    if uncalibrated is not None:
        out["postprocessing"] = postprocessing
        out["uncalibrated_weighted_log_loss"] = uncalibrated["patient"].get("weighted_log_loss")
    if synthetic is not None:
        out["synthetic"] = bool(synthetic)
    return out


def held_out(on: str, frame: pd.DataFrame, probs: np.ndarray, levels: dict[str, Any], labels: Sequence[str],
             synthetic: bool | None = None, what: str | None = None, calibration: Calibration | None = None,
             calibrated: tuple[pd.DataFrame, np.ndarray] | None = None, in_sample: bool = False,
             seed: int = 0) -> dict[str, Any]:
    """Everything a result on some patients reports, from its predictions (``frame``/``probs``: tile or
    slide rows; ``levels``: their metrics): ``headline``, ``per_center`` (None without centres) and,
    when ``calibration`` is active, ``calibrated`` (slide and patient metrics after it) and
    ``calibration`` (ECE and weighted log loss before / after). ``calibrated``: the slide predictions
    after calibration when the caller made them (an ensemble calibrates each member, then averages);
    ``in_sample``: the calibration was fitted on these very patients (said, as optimistic). The
    ``_patients`` / ``_patients_before`` tables (one row per patient) are for the reliability diagram."""
    labels = list(labels)
    before = intervals.patient_predictions(frame, probs, labels)
    out: dict[str, Any] = {"_patients_before": before, "_patients": before}
    uncalibrated, how = None, None
    if calibration is not None and calibration.active:
        slide_frame, slide_probs = calibrated or calibrate_slides(frame, probs, labels, calibration)
        after_levels = metrics.evaluate(slide_frame, slide_probs, labels)
        after_levels = {"slide": after_levels["slide"], "patient": after_levels["patient"]}
        after = intervals.patient_predictions(slide_frame, slide_probs, labels)
        y_b, y_a = (metrics.class_indices(t["label"], labels) for t in (before, after))
        cols = [f"p_{n}" for n in labels]
        note = "calibrated on these same patients: the 'after' numbers are optimistic" if in_sample else None
        out["calibrated"] = after_levels
        out["calibration"] = {
            "how": calibration.describe(),
            "ece_before": round(expected_calibration_error(y_b, before[cols].to_numpy()), 4),
            "ece_after": round(expected_calibration_error(y_a, after[cols].to_numpy()), 4),
            "weighted_log_loss_before": levels["patient"]["weighted_log_loss"],
            "weighted_log_loss_after": after_levels["patient"]["weighted_log_loss"],
            **({"note": note} if note else {}),
        }
        uncalibrated, how = levels, calibration.describe() + (f" ({note})" if note else "")
        levels, out["_patients"] = after_levels, after
    table = out["_patients"]
    cols = [f"p_{n}" for n in labels]
    ece = round(expected_calibration_error(metrics.class_indices(table["label"], labels), table[cols].to_numpy()), 4)
    out["headline"] = headline(on, levels, len(labels), synthetic, what, intervals.interval_of(table, labels, seed),
                               uncalibrated, how, ece)
    out["per_center"] = intervals.per_centre(table, labels, seed)
    return out


def headline_sentence(h: dict[str, Any]) -> str:
    """One line: 'Held-out test patients (n=6, ...): weighted log loss 0.658 (constant 0.5: 0.693) ...'."""
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    what = h["what"][0].upper() + h["what"][1:]
    synthetic = " SYNTHETIC DATA: says nothing about real clots." if h.get("synthetic") else ""
    ci = h.get("weighted_log_loss_ci95")
    ci_text = f"95 % CI {ci[0]:.3f}-{ci[1]:.3f}; " if ci else ""
    post = (f" Post-processed ({h['postprocessing']}); before: {f(h['uncalibrated_weighted_log_loss'])}."
            if h.get("postprocessing") else "")
    return (f"{what}; n = {h['n_patients']} patients: patient-level weighted log loss {f(h['weighted_log_loss'])} "
            f"({ci_text}equal probabilities score {h['baseline_weighted_log_loss']:.3f}; lower is better), balanced "
            f"accuracy {f(h['balanced_accuracy'])}, ROC AUC {f(h['roc_auc'])}.{post}{synthetic}")
