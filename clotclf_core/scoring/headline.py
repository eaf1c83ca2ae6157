"""The headline of a result: its most honest number, said the same way everywhere.

The headline is the held-out test patients (never trained on, never used for early stopping),
else — under ``--fold all`` — the out-of-fold patients, else the validation patients, labelled as
what early stopping chose on. It always carries n, the competition metric (patient-level weighted
log loss) and the constant-0.5 baseline (ln 2 = 0.693 for two classes) beside it, and whether the
data were synthetic. ``clotclf train``, ``evaluate``, ``metrics.json`` and the model card use it.
"""

from __future__ import annotations

import math
from typing import Any

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
             what: str | None = None) -> dict[str, Any]:
    """The headline record (``metrics.json``'s first entry) of ``levels`` = ``{"slide"?, "patient", ...}``."""
    patient = levels["patient"]
    out = {
        "on": on,
        "what": what or WHAT[on],
        "n_patients": patient.get("n"),
        "weighted_log_loss": patient.get("weighted_log_loss"),
        "baseline_weighted_log_loss": baseline(n_classes),
        "balanced_accuracy": patient.get("balanced_accuracy"),
        "roc_auc": patient.get("roc_auc"),
        "accuracy": patient.get("accuracy"),
    }
    if synthetic is not None:
        out["synthetic"] = bool(synthetic)
    return out


def headline_sentence(h: dict[str, Any]) -> str:
    """One line: 'Held-out test patients (n=6, ...): weighted log loss 0.658 (constant 0.5: 0.693) ...'."""
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    what = h["what"][0].upper() + h["what"][1:]
    synthetic = " SYNTHETIC DATA: says nothing about real clots." if h.get("synthetic") else ""
    return (f"{what}; n = {h['n_patients']} patients: patient-level weighted log loss {f(h['weighted_log_loss'])} "
            f"(equal probabilities score {h['baseline_weighted_log_loss']:.3f}; lower is better), balanced accuracy "
            f"{f(h['balanced_accuracy'])}, ROC AUC {f(h['roc_auc'])}.{synthetic}")
