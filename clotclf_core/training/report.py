"""What a run reports: metrics.json with the held-out result first, the fold's run directory, the
model card, and the table ``clotclf train`` prints.

The **headline** of a run is its most honest number: the held-out test patients (never trained
on, never used for early stopping), else — under ``--fold all`` — the out-of-fold patients,
else the validation patients, labelled as what early stopping chose on. It always carries n, the
competition metric (patient-level weighted log loss) with its bootstrap 95 % interval and the
constant-0.5 baseline (ln 2 = 0.693 for two classes) beside it, and whether the data were synthetic
(:mod:`clotclf_core.scoring.headline`). With ``--calibrate`` / ``--clip`` (one fold: fitted on the
validation patients here; ``--fold all``: on the out-of-fold ones, :mod:`clotclf_core.training.crossval`)
the headline is after the post-processing, the raw number beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from clotclf_core.models.card import write_model_card
from clotclf_core.models.runs import read_config
from clotclf_core.models.saved import save_model
from clotclf_core.plugin.io import write_csv, write_guard, write_json
from clotclf_core.scoring.calibration import Calibration, fit_calibration, slide_predictions
from clotclf_core.scoring.evaluate import predictions_frame, write_pictures, write_reliability
from clotclf_core.scoring.headline import VAL_NOTE, headline_sentence, held_out
from clotclf_core.scoring.intervals import disagreement, format_centres
from clotclf_core.scoring.metrics import format_table
from clotclf_core.scoring.plots import plot_history
from clotclf_core.training.checkpoints import RESUME_HINT

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.training.loop import Scored, Trainer
    from clotclf_core.training.settings import TrainSettings


def run_calibration(s: "TrainSettings", frame: "pd.DataFrame", probs: Any, labels: list[str],
                    fitted_on: str) -> Calibration | None:
    """The run's ``--calibrate`` / ``--clip`` fitted on the tile or slide predictions ``frame`` /
    ``probs`` (validation or out-of-fold patients, never test ones); None when it asks for neither."""
    if s.calibrate == "none" and s.clip is None:
        return None
    slides, probs = slide_predictions(frame, probs, labels)
    return fit_calibration(slides, probs, labels, s.calibrate, s.clip, fitted_on)


def results_of(on: str, scored: "Scored", labels: list[str], synthetic: bool | None, calibration: Calibration | None,
               seed: int, in_sample: bool = False, calibrated: Any = None) -> dict[str, Any]:
    """:func:`clotclf_core.scoring.headline.held_out` of a scored set (headline, per centre, calibration)."""
    return held_out(on, scored.frame, scored.probs, scored.metrics, labels, synthetic, calibration=calibration,
                    calibrated=calibrated, in_sample=in_sample, seed=seed)


def add_results(doc: dict[str, Any], key: str, res: dict[str, Any]) -> None:
    """``res`` (:func:`results_of` of the set ``key``) into a metrics.json: the calibrated levels,
    the calibration's effect and the per-centre table, where there are any."""
    if "calibrated" in res:
        doc[f"{key}_calibrated"] = res["calibrated"]
        doc.setdefault("calibration_effect", {})[key] = res["calibration"]
    if res["per_center"] is not None:
        doc.setdefault("per_center", {})[key] = res["per_center"]


def fold_result(s: "TrainSettings", trainer: "Trainer", val: "Scored", test: "Scored | None",
                data: dict[str, Any] | None, calibration: Calibration | None = None) -> dict[str, Any]:
    """A fold's metrics.json: the headline first (with its interval; after ``calibration``, fitted on
    the validation patients), then test, then validation (labelled as such), the per-centre tables,
    the calibration and its effect, and a note when validation and test disagree beyond their intervals."""
    labels = list(trainer.model.labels)
    synthetic = None if data is None else data.get("synthetic")
    val_res = results_of("val", val, labels, synthetic, calibration, s.seed, in_sample=True)
    test_res = results_of("test", test, labels, synthetic, calibration, s.seed) if test is not None else None
    main = test_res or val_res
    result: dict[str, Any] = {"headline": main["headline"]}
    if test is not None:
        result["test"] = test.metrics
        add_results(result, "test", test_res)
    add_results(result, "val", val_res)
    if test is not None:
        result["val_headline"] = val_res["headline"]
        if (note := disagreement(val_res["headline"], test_res["headline"])):
            result["disagreement"] = note
    if calibration is not None:
        result["calibration"] = calibration.record()
    result["_results"] = {"val": val_res, **({"test": test_res} if test_res else {})}
    result |= {
        "val": val.metrics,
        "val_note": VAL_NOTE,
        "fold": trainer.fold,
        "best_epoch": trainer.best_epoch + 1,
        "epochs_run": len(trainer.history),
        "stopped_early": trainer.stopped_early,
        "monitor": s.monitor,
        "best_val_loss": trainer.best_loss,
    }
    return result


def _plot_history(history: list[dict[str, Any]], png: Path, title: str) -> None:
    frame = pd.DataFrame(history).drop(columns=["images_per_s", "seconds"], errors="ignore")
    plot_history(frame, png, title)


def write_fold(fold_dir: Path, trainer: "Trainer", result: dict[str, Any], val: "Scored", test: "Scored | None",
               labels: list[str], sections: dict[str, Any]) -> None:
    """The fold's run directory: model + config.json, metrics.json, predictions, pictures, model card."""
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    if "calibration" in result:  # what evaluate and predict apply
        sections = {**sections, "calibration": result["calibration"]}
    with write_guard("the model and its results", fold_dir, after=RESUME_HINT):  # checkpoints complete: --resume redoes this
        save_model(trainer.model, fold_dir, sections)
        write_json(fold_dir / "metrics.json", public)
        write_csv(fold_dir / "predictions_val.csv", predictions_frame(val.frame, val.probs, labels))
        _plot_history(trainer.history, fold_dir / "plots" / "history.png", f"fold {trainer.fold}")
        write_pictures(fold_dir, val.frame, val.probs, labels, val.metrics, "val")
        for name, res in result["_results"].items():
            write_reliability(fold_dir, name, res, labels)
        if test is not None:
            write_csv(fold_dir / "predictions_test.csv", predictions_frame(test.frame, test.probs, labels))
            write_pictures(fold_dir, test.frame, test.probs, labels, test.metrics, "test")
        write_card(fold_dir, public)


def write_card(run_dir: Path, metrics: dict[str, Any], config: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> None:
    """The run's README.md from its config.json (or ``config``) and metrics (headline first)."""
    write_model_card(run_dir, config if config is not None else read_config(run_dir), metrics, extra)


def report_table(summary: dict[str, Any]) -> str:
    """What ``clotclf train`` prints at the end: the headline, the metrics table(s), where the results are."""
    parts = []
    doc = summary if "cv" in summary else summary["folds"][0]
    if doc.get("disagreement"):
        parts += [f"WARNING: {doc['disagreement']}.", ""]
    parts += [headline_sentence(doc["headline"]), ""]
    if "cv" in summary:
        if "test_ensemble" in summary:
            parts += ["Held-out test patients, mean of the fold models:", format_table(summary["test_ensemble"]), ""]
        parts += ["Pooled out-of-fold predictions (each patient by the fold model that never trained on it):",
                  format_table(summary["oof"]), "",
                  "Cross-validation, mean ± std over folds (validation patients):", format_table(summary["cv"])]
    else:
        if "test" in doc:
            parts += ["Held-out test patients (never used for training or early stopping):", format_table(doc["test"]), ""]
        parts += [f"Validation patients, which early stopping watched (fold {doc['fold']}, best epoch "
                  f"{doc['best_epoch']} of {doc['epochs_run']}):", format_table(doc["val"])]
    for key, effect in (doc.get("calibration_effect") or {}).items():
        parts += ["", f"{key}: {effect['how']}: weighted log loss {effect['weighted_log_loss_before']:.3f} -> "
                      f"{effect['weighted_log_loss_after']:.3f}, ECE {effect['ece_before']:.3f} -> {effect['ece_after']:.3f}"
                      + (f" ({effect['note']})" if effect.get("note") else "")]
    rows = (doc.get("per_center") or {}).get(doc["headline"]["on"])
    if rows:
        parts += ["", f"Per centre ({doc['headline']['on']} patients):", format_centres(rows)]
    parts += ["", f"Run directory: {summary['run_dir']}  ({summary['seconds']:.0f} s)"]
    return "\n".join(parts)
