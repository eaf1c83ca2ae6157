"""Cross-validation (``--fold all``): mean ± std over folds, the pooled out-of-fold patients, and
(with a test set) the test patients scored by the mean of the fold models' probabilities.

The headline of a cross-validated run is the test-ensemble result when there is a test set, else
the out-of-fold one: every non-test patient scored by the one fold model that never trained on it.
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
from clotclf_core.scoring.evaluate import predictions_frame, write_pictures
from clotclf_core.scoring.headline import VAL_NOTE, headline
from clotclf_core.training.checkpoints import RESUME_HINT
from clotclf_core.training.distributed import barrier
from clotclf_core.training.report import write_card
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


def cross_validate(s: "TrainSettings", run_dir: Path, split: "Split", results: list[dict[str, Any]], labels: list[str],
                   rt: "Runtime", records: dict[str, Any], kind: "TrainingKind") -> dict[str, Any]:
    oof_frame = pd.concat([r["_val"].frame for r in results], ignore_index=True)
    oof_probs = np.concatenate([r["_val"].probs for r in results])
    oof = kind.score(oof_frame, oof_probs, labels, s.monitor)
    out: dict[str, Any] = {}
    test = None
    if results and results[0].get("_test") is not None:
        first = results[0]["_test"]
        test = kind.score(first.frame, np.mean([r["_test"].probs for r in results], axis=0), labels, s.monitor)
        out["test_ensemble"] = test.metrics
    out["oof"] = oof.metrics
    out["cv"] = metrics.summarise_folds([r["val"] for r in results])
    on, levels = ("test_ensemble", test.metrics) if test is not None else ("oof", oof.metrics)
    out = {"headline": headline(on, levels, len(labels), records["data"].get("synthetic"))} | out
    if rt.is_main:
        doc = {**out, "cv_note": f"cv: mean ± std over folds of each fold's {VAL_NOTE}",
               "folds": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]}
        config = read_config(run_dir / f"fold_{results[0]['fold']}")
        config["split"] = {"strategy": config["split"]["strategy"], "n_folds": len(split.folds), "seed": split.seed,
                           "n_test_patients": len(split.test)}
        with write_guard("the cross-validation summary", run_dir, after=RESUME_HINT):
            write_json(run_dir / "metrics.json", doc)
            write_json(run_dir / "cv.json", {"training": settings_dict(s), "split": split.to_dict(),
                                             "tileset": records["tileset"], "folds": [f"fold_{r['fold']}" for r in results]})
            write_csv(run_dir / "predictions_oof.csv", predictions_frame(oof_frame, oof_probs, labels))
            write_pictures(run_dir, oof_frame, oof_probs, labels, oof.metrics, "oof")
            if test is not None:
                write_pictures(run_dir, test.frame, test.probs, labels, test.metrics, "test_ensemble")
            write_card(run_dir, doc, config, extra={
                "name": run_dir.name,
                "notes": "Cross-validation summary: each fold_k/ holds one fold's model."})
    barrier(rt)
    return out
