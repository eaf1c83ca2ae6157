"""The one reader of a cross-validation run folder (``--fold all``) as the ensemble of its folds:
``clotclf_core.models.runs.fold_runs`` (issue 17, D2)."""

from __future__ import annotations

import json

import pytest

from clotclf_core.models.runs import fold_runs
from clotclf_core.plugin.errors import ModelLoadError


def _fold(root, k, saved=True):
    d = root / f"fold_{k}"
    d.mkdir(parents=True)
    if saved:
        (d / "model.safetensors").write_bytes(b"x")
        (d / "config.json").write_text("{}")
    return d


def test_a_finished_cross_validation_folder_is_its_folds_in_order(tmp_path):
    folds = [_fold(tmp_path, k) for k in (0, 1, 2, 10)]
    (tmp_path / "cv.json").write_text(json.dumps({"folds": ["fold_0", "fold_1", "fold_2", "fold_10"]}))
    assert fold_runs(tmp_path) == folds


def test_a_pushed_ensemble_lists_its_folds_in_config_json(tmp_path):
    folds = [_fold(tmp_path, k) for k in (0, 1)]
    (tmp_path / "config.json").write_text(json.dumps({"kind": "fold_ensemble", "folds": ["fold_0", "fold_1"]}))
    assert fold_runs(tmp_path) == folds


def test_a_single_run_or_any_other_folder_is_not_an_ensemble(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "run" / "cv.json").write_text('{"folds": ["fold_0"]}')  # has weights of its own: one model
    assert fold_runs(tmp_path / "run") is None
    assert fold_runs(tmp_path / "nothing") is None
    (tmp_path / "empty").mkdir()
    assert fold_runs(tmp_path / "empty") is None


def test_unfinished_or_damaged_ensembles_are_refused_naming_the_folds(tmp_path):
    a = tmp_path / "a"
    _fold(a, 0)
    _fold(a, 1, saved=False)
    with pytest.raises(ModelLoadError, match=r"did not finish \(fold_0, fold_1 but no cv.json\).*--resume.*fold_0"):
        fold_runs(a)
    (a / "cv.json").write_text('{"folds": ["fold_0", "fold_1"]}')
    with pytest.raises(ModelLoadError, match=r"lists fold_1, which has no model.safetensors and config.json"):
        fold_runs(a)
    (a / "cv.json").write_text('{"folds": ["fold_0", "../elsewhere"]}')
    with pytest.raises(ModelLoadError, match="lists no fold folders"):
        fold_runs(a)
    (a / "cv.json").write_text('{"folds": []}')
    with pytest.raises(ModelLoadError, match="lists no fold folders"):
        fold_runs(a)
