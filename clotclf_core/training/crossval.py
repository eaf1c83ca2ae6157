"""Cross-validation (``--fold all``): mean ± std over folds, the pooled out-of-fold patients, and
(with a test set) the test patients scored by the mean of the fold models' probabilities.

The headline of a cross-validated run is the test-ensemble result when there is a test set, else
the out-of-fold one: every non-test patient scored by the one fold model that never trained on it.

``--calibrate`` / ``--clip`` are fitted here, on the pooled out-of-fold predictions (never a test
patient), and recorded in every fold model's config.json (what ``clotclf predict --model RUN/fold_k``
applies). The test ensemble is the mean of the fold models' *calibrated* probabilities (as ``predict``
with the fold models would give); the out-of-fold patients after calibration are **cross-fitted**:
each fold's patients calibrated by a calibrator fitted on the other folds' out-of-fold predictions,
so that number is not scored on what it was fitted on. Out-of-fold and test results whose intervals
do not overlap get a note in capitals (``disagreement``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from clotclf_core.models.runs import read_config
from clotclf_core.plugin.io import write_csv, write_guard, write_json
from clotclf_core.scoring import metrics
from clotclf_core.scoring.calibration import Calibration, CalibrationError, calibrate_slides, slide_predictions
from clotclf_core.scoring.evaluate import predictions_frame, write_pictures, write_reliability
from clotclf_core.scoring.headline import VAL_NOTE
from clotclf_core.scoring.intervals import disagreement
from clotclf_core.training.checkpoints import RESUME_HINT
from clotclf_core.training.distributed import barrier
from clotclf_core.training.report import add_results, results_of, run_calibration, write_card
from clotclf_core.training.settings import settings_dict

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.models.runtime import Runtime
    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.training.kinds import TrainingKind
    from clotclf_core.training.settings import TrainSettings
    from clotclf_core.training.splits import Split


def reload_fold(s: "TrainSettings", ts: "TileSet", split: "Split", k: int, fold_dir: Path, rt: "Runtime",
                progress: bool, kind: "TrainingKind") -> dict[str, Any]:
    """A fold finished before an interruption: read its metrics, re-score its patients for the pooled figures."""
    result = json.loads((fold_dir / "metrics.json").read_text(encoding="utf-8"))
    result["_val"] = kind.rescore(s, fold_dir, ts, split.folds[k].val, rt, progress, "validate")
    result["_test"] = kind.rescore(s, fold_dir, ts, split.test, rt, progress, "test")
    return result


def _cross_fitted(s: "TrainSettings", results: list[dict[str, Any]], labels: list[str],
                  calibration: Calibration) -> tuple[tuple[pd.DataFrame, np.ndarray], bool]:
    """The out-of-fold slides after calibration, each fold's by a calibrator fitted on the other folds'
    out-of-fold predictions; (slides, probs) and whether that worked (else the pooled calibrator
    is applied to every fold: in sample, said so)."""
    parts = [slide_predictions(r["_val"].frame, r["_val"].probs, labels) for r in results]
    try:
        after = []
        for k in range(len(parts)):
            rest = [parts[j] for j in range(len(parts)) if j != k]
            frame = pd.concat([f for f, _ in rest], ignore_index=True)
            fitted = run_calibration(s, frame, np.concatenate([p for _, p in rest]), labels, "out-of-fold")
            after.append(fitted.apply(parts[k][1]))
        cross = True
    except CalibrationError:  # too few patients once a fold is left out
        after, cross = [calibration.apply(p) for _, p in parts], False
    return (pd.concat([f for f, _ in parts], ignore_index=True), np.concatenate(after)), cross


def _record_in_folds(results: list[dict[str, Any]], run_dir: Path, calibration: Calibration) -> None:
    """Every fold model's config.json gets the calibration (``predict --model RUN/fold_k`` applies
    it), its metrics.json and card say where it comes from."""
    note = "fitted on the out-of-fold predictions of all the folds (the cross-validation's metrics.json)"
    for r in results:
        fold_dir = run_dir / f"fold_{r['fold']}"
        config = read_config(fold_dir)
        config["calibration"] = calibration.record()
        fold_metrics = json.loads((fold_dir / "metrics.json").read_text(encoding="utf-8"))
        fold_metrics["calibration"] = {**calibration.record(), "note": note}
        write_json(fold_dir / "config.json", config)
        write_json(fold_dir / "metrics.json", fold_metrics)
        write_card(fold_dir, fold_metrics, config)


def cross_validate(s: "TrainSettings", run_dir: Path, split: "Split", results: list[dict[str, Any]], labels: list[str],
                   rt: "Runtime", records: dict[str, Any], kind: "TrainingKind") -> dict[str, Any]:
    oof_frame = pd.concat([r["_val"].frame for r in results], ignore_index=True)
    oof_probs = np.concatenate([r["_val"].probs for r in results])
    oof = kind.score(oof_frame, oof_probs, labels, s.monitor)
    synthetic = records["data"].get("synthetic")
    calibration = run_calibration(s, oof_frame, oof_probs, labels, "out-of-fold")
    out: dict[str, Any] = {}
    test = test_res = None
    if results and results[0].get("_test") is not None:
        first = results[0]["_test"]
        test = kind.score(first.frame, np.mean([r["_test"].probs for r in results], axis=0), labels, s.monitor)
        out["test_ensemble"] = test.metrics
        calibrated = None
        if calibration is not None:  # each fold model calibrated, then averaged: what predict gives
            each = [calibrate_slides(r["_test"].frame, r["_test"].probs, labels, calibration) for r in results]
            calibrated = (each[0][0], np.mean([p for _, p in each], axis=0))
        test_res = results_of("test_ensemble", test, labels, synthetic, calibration, s.seed, calibrated=calibrated)
    cross = None
    if calibration is not None:
        calibrated_oof, cross = _cross_fitted(s, results, labels, calibration)
    oof_res = results_of("oof", oof, labels, synthetic, calibration, s.seed, in_sample=cross is False,
                         calibrated=calibrated_oof if calibration is not None else None)
    out["oof"] = oof.metrics
    out["cv"] = metrics.summarise_folds([r["val"] for r in results])
    main = test_res or oof_res
    out = {"headline": main["headline"]} | out
    if test_res is not None:
        add_results(out, "test_ensemble", test_res)
        out["oof_headline"] = oof_res["headline"]
        if (note := disagreement(oof_res["headline"], test_res["headline"])):
            out["disagreement"] = note
    add_results(out, "oof", oof_res)
    if calibration is not None:
        out["calibration"] = {**calibration.record(), "oof_after": "cross-fitted: each fold's patients calibrated by a "
                              "calibrator fitted on the other folds' out-of-fold predictions" if cross else
                              "in sample: the calibrator fitted on all out-of-fold patients (too few to leave a fold out)"}
    if rt.is_main:
        doc = {**out, "cv_note": f"cv: mean ± std over folds of each fold's {VAL_NOTE}",
               "folds": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]}
        config = read_config(run_dir / f"fold_{results[0]['fold']}")
        config["split"] = {"strategy": config["split"]["strategy"], "n_folds": len(split.folds), "seed": split.seed,
                           "n_test_patients": len(split.test)}
        if calibration is not None:
            config["calibration"] = calibration.record()
        with write_guard("the cross-validation summary", run_dir, after=RESUME_HINT):
            if calibration is not None:
                _record_in_folds(results, run_dir, calibration)
            write_json(run_dir / "metrics.json", doc)
            write_json(run_dir / "cv.json", {"training": settings_dict(s), "split": split.to_dict(),
                                             "tileset": records["tileset"], "folds": [f"fold_{r['fold']}" for r in results]})
            write_csv(run_dir / "predictions_oof.csv", predictions_frame(oof_frame, oof_probs, labels))
            write_pictures(run_dir, oof_frame, oof_probs, labels, oof.metrics, "oof")
            write_reliability(run_dir, "oof", oof_res, labels)
            if test is not None:
                write_pictures(run_dir, test.frame, test.probs, labels, test.metrics, "test_ensemble")
                write_reliability(run_dir, "test_ensemble", test_res, labels)
            write_card(run_dir, doc, config, extra={
                "name": run_dir.name,
                "notes": "Cross-validation summary: each fold_k/ holds one fold's model."})
    barrier(rt)
    return out
