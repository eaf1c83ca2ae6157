"""What a run reports: metrics.json with the held-out result first, the fold's run directory, the
model card, and the table ``clotclf train`` prints.

The **headline** of a run is its most honest number: the held-out test patients (never trained
on, never used for early stopping), else — under ``--fold all`` — the out-of-fold patients,
else the validation patients, labelled as what early stopping chose on. It always carries n, the
competition metric (patient-level weighted log loss) and the constant-0.5 baseline (ln 2 = 0.693
for two classes) beside it, and whether the data were synthetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from clotclf_core.models.card import write_model_card
from clotclf_core.models.runs import read_config
from clotclf_core.models.saved import save_model
from clotclf_core.plugin.io import write_csv, write_guard, write_json
from clotclf_core.scoring.evaluate import predictions_frame, write_pictures
from clotclf_core.scoring.headline import VAL_NOTE, headline, headline_sentence
from clotclf_core.scoring.metrics import format_table
from clotclf_core.scoring.plots import plot_history
from clotclf_core.training.checkpoints import RESUME_HINT

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.training.loop import Scored, Trainer
    from clotclf_core.training.settings import TrainSettings


def fold_result(s: "TrainSettings", trainer: "Trainer", val: "Scored", test: "Scored | None",
                data: dict[str, Any] | None) -> dict[str, Any]:
    """A fold's metrics.json: the headline first, then test, then validation (labelled as such)."""
    n_classes = val.probs.shape[1]
    synthetic = None if data is None else data.get("synthetic")
    on, levels = ("test", test.metrics) if test is not None else ("val", val.metrics)
    result: dict[str, Any] = {"headline": headline(on, levels, n_classes, synthetic)}
    if test is not None:
        result["test"] = test.metrics
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
    with write_guard("the model and its results", fold_dir, after=RESUME_HINT):  # checkpoints complete: --resume redoes this
        save_model(trainer.model, fold_dir, sections)
        write_json(fold_dir / "metrics.json", public)
        write_csv(fold_dir / "predictions_val.csv", predictions_frame(val.frame, val.probs, labels))
        _plot_history(trainer.history, fold_dir / "plots" / "history.png", f"fold {trainer.fold}")
        write_pictures(fold_dir, val.frame, val.probs, labels, val.metrics, "val")
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
    if "cv" in summary:
        parts += [headline_sentence(summary["headline"]), ""]
        if "test_ensemble" in summary:
            parts += ["Held-out test patients, mean of the fold models:", format_table(summary["test_ensemble"]), ""]
        parts += ["Pooled out-of-fold predictions (each patient by the fold model that never trained on it):",
                  format_table(summary["oof"]), "",
                  "Cross-validation, mean ± std over folds (validation patients):", format_table(summary["cv"])]
    else:
        fold = summary["folds"][0]
        parts += [headline_sentence(fold["headline"]), ""]
        if "test" in fold:
            parts += ["Held-out test patients (never used for training or early stopping):", format_table(fold["test"]), ""]
        parts += [f"Validation patients, which early stopping watched (fold {fold['fold']}, best epoch "
                  f"{fold['best_epoch']} of {fold['epochs_run']}):", format_table(fold["val"])]
    parts += ["", f"Run directory: {summary['run_dir']}  ({summary['seconds']:.0f} s)"]
    return "\n".join(parts)
