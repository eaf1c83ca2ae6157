"""Calibration and clipping of a model's probabilities, and how calibrated they are (ECE).

A model's probabilities are often over- or under-confident (an abmil on features: 0.000-0.996; a
tile-mean CCT: 0.11-0.69), and the STRIP AI metric punishes confident mistakes hard. So a run may
post-process its **slide** probabilities (a MIL model's bag output; a tile-level model's mean of
tiles), before patients are averaged:

1. ``--calibrate temperature``: ``softmax(log p / T)`` with one temperature ``T`` (> 1 softens);
   ``--calibrate platt``: a logistic regression on the log-odds (scikit-learn's
   :class:`~sklearn.linear_model.LogisticRegression`; more than two classes: on the log
   probabilities, multinomial), which can also shift the balance between the classes;
2. ``--clip P``: every probability clipped to ``[P, 1 - P]`` (the STRIP AI winners shrank theirs
   toward 0.5), after any calibration.

The calibrator is **fitted on out-of-fold predictions** (``--fold all``: every non-test patient, by
the fold model that never trained on it) **or on the validation patients** (one fold) — never on
test patients — to minimise the class-balanced log loss the competition scores: each patient
weighs 1 / (patients of its class), shared among its slides. At least :data:`MIN_PATIENTS` patients
in all, every class among them, or the fit is refused. It is stored in the run's
``config.json`` (``calibration``: a few numbers) and applied by ``clotclf evaluate`` and ``clotclf
predict`` to each model's slide probabilities.

:func:`expected_calibration_error` and :func:`reliability` measure the result at patient level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression

from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.scoring.metrics import aggregate, class_indices

METHODS = ("temperature", "platt")
#: the fewest out-of-fold / validation patients a calibrator is fitted on
MIN_PATIENTS = 10
#: probabilities are kept in [EPS, 1 - EPS] before their logarithm is taken
EPS = 1e-12
#: bins of the expected calibration error and the reliability diagram (equal width on [0, 1])
N_BINS = 10
#: the temperatures searched (log-uniform bounds)
T_RANGE = (0.05, 20.0)


class CalibrationError(ClotclfError):
    """A calibration that cannot be fitted, or a stored one that cannot be read."""


def check_clip(clip: float | None, what: str = "--clip") -> None:
    """``clip`` is None or strictly between 0 and 0.5: one clear line otherwise."""
    if clip is None:
        return
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or not 0 < clip < 0.5:
        raise CalibrationError(f"{what} {clip!r} must be a number between 0 and 0.5 (exclusive): probabilities are "
                               "clipped to [P, 1 - P], e.g. --clip 0.05 keeps them within [0.05, 0.95]")


def _log(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    return np.log(np.clip(p, EPS, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Calibration:
    """How a run post-processes its slide probabilities: ``method`` (``none``, ``temperature``,
    ``platt``), its fitted ``params``, ``clip`` (None or P) and what it was fitted on."""

    method: str = "none"
    clip: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fitted_on: str | None = None  #: "out-of-fold" or "validation"
    n_patients: int | None = None
    n_slides: int | None = None

    @property
    def active(self) -> bool:
        return self.method != "none" or self.clip is not None

    def apply(self, probs: Any) -> np.ndarray:
        """Calibrated (and clipped) probabilities, rows summing to 1, same shape as ``probs``."""
        p = np.asarray(probs, dtype=np.float64)
        if self.method == "temperature":
            p = _softmax(_log(p) / float(self.params["temperature"]))
        elif self.method == "platt":
            coef, intercept = np.asarray(self.params["coef"]), np.asarray(self.params["intercept"])
            logp = _log(p)
            if p.shape[1] == 2:
                x = logp[:, 1] - logp[:, 0]
                p1 = 1.0 / (1.0 + np.exp(-(coef[0, 0] * x + intercept[0])))
                p = np.stack([1.0 - p1, p1], axis=1)
            else:
                p = _softmax(logp @ coef.T + intercept)
        else:
            p = p / p.sum(axis=1, keepdims=True)
        if self.clip is not None:
            if p.shape[1] == 2:
                p1 = np.clip(p[:, 1], self.clip, 1.0 - self.clip)
                p = np.stack([1.0 - p1, p1], axis=1)
            else:
                p = np.clip(p, self.clip, 1.0 - self.clip)
                p = p / p.sum(axis=1, keepdims=True)
        return p

    def describe(self) -> str:
        """One phrase: ``temperature 1.83 fitted on 150 out-of-fold patients; clipped to [0.05, 0.95]``."""
        if self.method == "temperature":
            text = f"temperature {self.params['temperature']:.3g}"
        elif self.method == "platt":
            coef, intercept = np.asarray(self.params["coef"]), np.asarray(self.params["intercept"])
            text = (f"Platt scaling (log-odds x {coef[0, 0]:.3g} {intercept[0]:+.3g})" if coef.shape == (1, 1)
                    else "Platt scaling (multinomial, on the log probabilities)")
        else:
            text = "no calibration"
        if self.method != "none" and self.fitted_on:
            text += f" fitted on {self.n_patients} {self.fitted_on} patients"
        if self.clip is not None:
            text += f"; clipped to [{self.clip:g}, {1 - self.clip:g}]"
        return text

    def record(self) -> dict[str, Any]:
        """``config.json``'s ``calibration``."""
        return {"method": self.method, "clip": self.clip, "params": self.params, "fitted_on": self.fitted_on,
                "n_patients": self.n_patients, "n_slides": self.n_slides, "level": "slide",
                "description": self.describe()}

    @classmethod
    def from_record(cls, record: Any, n_classes: int, where: str = "config.json") -> Calibration:
        """A stored calibration, checked (a config from elsewhere is refused before it is used)."""
        if record is None:
            return cls()
        bad = CalibrationError(f"{where}: its 'calibration' section is not one clotclf writes; remove it or "
                               "train the model again")
        if not isinstance(record, dict) or record.get("method") not in ("none", *METHODS):
            raise bad
        clip = record.get("clip")
        check_clip(clip, f"{where}: calibration clip")
        params = record.get("params") or {}
        try:
            if record["method"] == "temperature":
                t = float(params["temperature"])
                if not (math.isfinite(t) and t > 0):
                    raise ValueError
                params = {"temperature": t}
            elif record["method"] == "platt":
                coef = np.asarray(params["coef"], dtype=np.float64)
                intercept = np.asarray(params["intercept"], dtype=np.float64)
                shape = (1, 1) if n_classes == 2 else (n_classes, n_classes)
                if coef.shape != shape or intercept.shape != (shape[0],) or not np.isfinite(coef).all() \
                        or not np.isfinite(intercept).all():
                    raise ValueError
                params = {"coef": coef.tolist(), "intercept": intercept.tolist()}
        except (KeyError, TypeError, ValueError):
            raise bad from None
        return cls(record["method"], clip, params, record.get("fitted_on"), record.get("n_patients"),
                   record.get("n_slides"))


def patient_weights(frame: Any, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each slide row's class index and weight: 1 / (patients of its class) per patient (scaled to a
    mean of 1 over patients), shared equally among the patient's slides."""
    y = class_indices(frame["label"], labels)
    patients = frame["patient_id"].astype(str).to_numpy()
    slides_of = {p: n for p, n in zip(*np.unique(patients, return_counts=True))}
    first = dict(zip(patients[::-1], y[::-1]))  # a patient's class (one label per patient: checked by metrics)
    counts = np.bincount(np.array(list(first.values())), minlength=len(labels))
    n_present = int((counts > 0).sum())
    per_patient = {p: len(first) / (n_present * counts[c]) for p, c in first.items()}
    w = np.array([per_patient[p] / slides_of[p] for p in patients])
    return y, w


def check_calibration_set(n_patients: int, class_counts: dict[str, int], fitted_on: str) -> None:
    """Refuse a calibration set that is too small or lacks a class (before training, and at the fit)."""
    absent = [name for name, n in class_counts.items() if n == 0]
    if n_patients < MIN_PATIENTS or absent:
        why = (f"only {n_patients} {fitted_on} patient(s) (at least {MIN_PATIENTS} are needed)" if n_patients < MIN_PATIENTS
               else f"no {fitted_on} patient of class {', '.join(absent)}")
        fix = ("use --fold all (calibration on every out-of-fold patient), fewer folds, or more data"
               if fitted_on == "validation" else "use more data or fewer test patients")
        raise CalibrationError(f"--calibrate: cannot fit a calibration on {why}: {fix}; or leave --calibrate out")


def fit_calibration(frame: Any, probs: Any, labels: Sequence[str], method: str, clip: float | None = None,
                    fitted_on: str = "validation") -> Calibration:
    """Fit ``method`` on slide predictions (``frame`` one row per slide with ``patient_id`` and
    ``label``; ``probs`` (slides, C)) of out-of-fold or validation patients; see the module docstring."""
    check_clip(clip)
    if method == "none":
        return Calibration("none", clip)
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration '{method}': choose {', '.join(METHODS)} (or none)")
    y, w = patient_weights(frame, labels)
    patients = frame.drop_duplicates("patient_id")
    counts = {name: int((patients["label"] == name).sum()) for name in labels}
    check_calibration_set(len(patients), counts, fitted_on)
    logp = _log(probs)
    if method == "temperature":
        def loss(log_t: float) -> float:
            z = logp / math.exp(log_t)
            z = z - z.max(axis=1, keepdims=True)
            return float(-(w * (z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1)))).sum())

        res = minimize_scalar(loss, bounds=tuple(math.log(t) for t in T_RANGE), method="bounded")
        params: dict[str, Any] = {"temperature": round(math.exp(res.x), 6)}
    else:
        x = (logp[:, 1] - logp[:, 0])[:, None] if len(labels) == 2 else logp
        model = LogisticRegression(C=1.0, max_iter=1000).fit(x, y, sample_weight=w)
        coef, intercept = model.coef_, model.intercept_
        params = {"coef": coef.tolist(), "intercept": intercept.tolist()}
    return Calibration(method, clip, params, fitted_on, len(patients), len(frame))


def slide_predictions(frame: Any, probs: Any, labels: Sequence[str]) -> tuple[Any, np.ndarray]:
    """Tile or slide predictions -> one row per slide (``image_id``, ``patient_id``, ``label``,
    ``center_id`` when known) and its probabilities (slide = mean of its rows): what is calibrated."""
    slides = aggregate(frame, probs, labels, "slide")
    if "center_id" in frame.columns:
        slides["center_id"] = slides["image_id"].map(frame.drop_duplicates("image_id").set_index("image_id")["center_id"])
    cols = [f"p_{n}" for n in labels]
    return slides.drop(columns=cols), slides[cols].to_numpy(dtype=np.float64)


def calibrate_slides(frame: Any, probs: Any, labels: Sequence[str], calibration: Calibration) -> tuple[Any, np.ndarray]:
    """:func:`slide_predictions` with ``calibration`` applied to the probabilities."""
    slides, p = slide_predictions(frame, probs, labels)
    return slides, calibration.apply(p)


# ----------------------------------------------------------------------------- how calibrated


def _confidence(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted probability, outcome): of the second class for two classes, else of the top class."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    if p.shape[1] == 2:
        return p[:, 1], (y == 1).astype(float)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(float)


def expected_calibration_error(y: Any, probs: Any, n_bins: int = N_BINS) -> float:
    """ECE: the mean over equal-width bins of |observed frequency - mean predicted probability|,
    weighted by the bin's share of samples (two classes: P(second class); more: top-class confidence)."""
    conf, hit = _confidence(np.asarray(y), probs)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.mean() * abs(hit[inside].mean() - conf[inside].mean())
    return float(total)


def reliability(y: Any, probs: Any, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(mean predicted probability, observed frequency) per non-empty bin (scikit-learn's
    :func:`~sklearn.calibration.calibration_curve`, uniform bins), for the reliability diagram."""
    conf, hit = _confidence(np.asarray(y), probs)
    observed, predicted = calibration_curve(hit, conf, n_bins=n_bins, strategy="uniform")
    return predicted, observed
