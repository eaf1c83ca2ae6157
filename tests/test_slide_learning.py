"""Slide-level learning that learns by default (issue 15): the multiple-instance defaults, feature
standardisation, calibration and clipping, bootstrap intervals, the per-centre table and the
disagreement note. Unit checks on arrays, and two training runs on a 24-patient planted feature
store (a few seconds each)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tilesets import TINY_ABMIL

from clotclf_core.features.bags import FeatureBags, Slides, fit_standardisation
from clotclf_core.features.store import FeatureStore
from clotclf_core.features.synthetic import write_planted_store
from clotclf_core.scoring import metrics
from clotclf_core.scoring.calibration import (
    Calibration,
    CalibrationError,
    check_clip,
    expected_calibration_error,
    fit_calibration,
    slide_predictions,
)
from clotclf_core.scoring.intervals import bootstrap_interval, disagreement, per_centre
from clotclf_core.training.settings import MIL_DEFAULTS, TrainSettings, resolve_settings

# ----------------------------------------------------------------------------- settings


def test_mil_runs_get_their_own_defaults_and_tile_runs_keep_theirs(tmp_path):
    tile = resolve_settings(None, {"tiles": "t"})
    assert (tile.batch_size, tile.lr, tile.epochs, tile.patience, tile.weight_decay) == (32, 3e-4, 20, 3, 1e-5)
    assert tile.standardise == "off"
    for given in ({"features": "f"}, {"tiles": "t", "backbone": "cct"}):  # on features and end to end
        mil = resolve_settings(None, {**given, "aggregator": "abmil"})
        assert {k: getattr(mil, k) for k in MIL_DEFAULTS} == MIL_DEFAULTS
    assert resolve_settings(None, {"features": "f", "aggregator": "abmil"}).standardise == "on"
    assert resolve_settings(None, {"tiles": "t", "aggregator": "abmil"}).standardise == "off"  # end to end
    # what the user gives wins, on the command line and in YAML
    assert resolve_settings(None, {"features": "f", "aggregator": "abmil", "batch_size": 3}).batch_size == 3
    (tmp_path / "c.yaml").write_text("lr: 0.02\nstandardise: 'off'\n")
    from_yaml = resolve_settings(tmp_path / "c.yaml", {"features": "f", "aggregator": "mean"})
    assert from_yaml.lr == 0.02 and from_yaml.standardise == "off" and from_yaml.epochs == MIL_DEFAULTS["epochs"]
    # the demo's own preset still fills a MIL demo (no data given)
    assert resolve_settings(None, {"aggregator": "abmil", "backbone": "cct"}).batch_size == 4
    assert TrainSettings(features="f", aggregator="abmil").batch_size == MIL_DEFAULTS["batch_size"]


def test_batch_size_help_says_what_it_counts():
    from click.testing import CliRunner

    from clotclf_core.cli.main import cli

    text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    assert "tiles for a tile-level model, bags (slides) with --aggregator [default: 32; with --aggregator: 8]" in text


# ----------------------------------------------------------------------------- standardisation


def test_standardisation_statistics_are_the_training_tiles_only(tmp_path):
    store = write_planted_store(tmp_path / "f", patients=8, tiles=(3, 5), signal_tiles=(1, 2), num_features=4,
                                scale=0.01)
    data = FeatureBags(FeatureStore(store))
    train = ["P0000", "P0001", "P0002", "P0003"]
    mean, std = fit_standardisation(data, Slides(data.index, train, ["CE", "LAA"]))
    rows = data.index[data.index["patient_id"].isin(train)]
    x = np.concatenate([data.features(i)[g["feature_row"].to_numpy()].astype(np.float64)
                        for i, g in rows.groupby("image_id", sort=False)])
    assert np.allclose(mean, x.mean(0), atol=1e-7) and np.allclose(std, x.std(0), rtol=1e-5)
    everyone, _ = fit_standardisation(data, Slides(data.index, list(data.index["patient_id"].unique()), ["CE", "LAA"]))
    assert not np.allclose(mean, everyone)  # the other patients' tiles would have moved it


# ----------------------------------------------------------------------------- calibration


def _overconfident(n=400, sharpen=3.0, seed=0):
    rng = np.random.default_rng(seed)
    p1 = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < p1).astype(int)
    logit = np.log(p1 / (1 - p1)) * sharpen
    q1 = 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame({"image_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                          "label": np.where(y == 1, "LAA", "CE")})
    return frame, np.stack([1 - q1, q1], 1), y


def test_temperature_and_platt_undo_overconfidence():
    frame, probs, y = _overconfident()
    before = metrics.weighted_log_loss(y, probs)
    temp = fit_calibration(frame, probs, ["CE", "LAA"], "temperature")
    assert temp.params["temperature"] == pytest.approx(3.0, rel=0.25)
    platt = fit_calibration(frame, probs, ["CE", "LAA"], "platt")
    for cal in (temp, platt):
        after = cal.apply(probs)
        assert np.allclose(after.sum(1), 1) and metrics.weighted_log_loss(y, after) < before - 0.05
        assert expected_calibration_error(y, after) < expected_calibration_error(y, probs)
        again = Calibration.from_record(json.loads(json.dumps(cal.record())), 2)  # through config.json
        assert np.allclose(again.apply(probs), after)


def test_clipping_keeps_probabilities_inside_and_rows_summing_to_one():
    cal = Calibration("none", 0.1)
    out = cal.apply(np.array([[1.0, 0.0], [0.3, 0.7], [0.01, 0.99]]))
    assert np.allclose(out, [[0.9, 0.1], [0.3, 0.7], [0.1, 0.9]])
    assert cal.describe() == "no calibration; clipped to [0.1, 0.9]"


def test_expected_calibration_error_of_a_known_case():
    y = np.array([1, 0] * 50)
    assert expected_calibration_error(y, np.tile([0.2, 0.8], (100, 1))) == pytest.approx(0.3)
    assert expected_calibration_error(y, np.tile([0.5, 0.5], (100, 1))) == pytest.approx(0.0)


@pytest.mark.parametrize("case, mentions", [
    ("few patients", ["only 6 validation patient(s)", "at least 10", "--fold all"]),
    ("one class", ["no out-of-fold patient of class LAA"]),
])
def test_calibration_refuses_too_few_patients_or_one_class(case, mentions):
    frame, probs, _ = _overconfident(30)
    fitted_on = "validation"
    if case == "few patients":
        frame, probs = frame.iloc[:6], probs[:6]
    else:
        frame, fitted_on = frame.assign(label="CE"), "out-of-fold"
    with pytest.raises(CalibrationError) as err:
        fit_calibration(frame, probs, ["CE", "LAA"], "temperature", fitted_on=fitted_on)
    for word in mentions:
        assert word in str(err.value)


@pytest.mark.parametrize("clip", [0, 0.5, -0.1, 0.7, float("nan")])
def test_clip_outside_zero_and_a_half_is_refused(clip):
    with pytest.raises(CalibrationError, match=r"between 0 and 0.5 \(exclusive\)"):
        check_clip(clip)


def test_a_calibration_record_that_clotclf_did_not_write_is_refused():
    for record in ({"method": "magic"}, {"method": "temperature", "params": {"temperature": -1}},
                   {"method": "platt", "params": {"coef": [[1, 2]], "intercept": [0]}}, "temperature"):
        with pytest.raises(CalibrationError, match="not one clotclf writes"):
            Calibration.from_record(record, 2)


# ----------------------------------------------------------------------------- intervals


def test_bootstrap_interval_is_seeded_and_shrinks_with_more_patients():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p1 = np.clip(np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.15, 400), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], 1)
    small, large = bootstrap_interval(y[:40], probs[:40]), bootstrap_interval(y, probs)
    point = metrics.weighted_log_loss(y, probs)
    assert large[0] < point < large[1] and large[1] - large[0] < small[1] - small[0]
    assert bootstrap_interval(y, probs, seed=0) == large and bootstrap_interval(y, probs, seed=1) != large
    assert bootstrap_interval(y[:1], probs[:1]) is None


def test_per_centre_table_and_the_disagreement_note():
    table = pd.DataFrame({"patient_id": list("abcdef"), "label": ["CE", "LAA"] * 3, "center_id": ["1", "1", "2", "2", "3", "3"],
                          "p_CE": [0.9, 0.2, 0.6, 0.5, 0.1, 0.9], "p_LAA": [0.1, 0.8, 0.4, 0.5, 0.9, 0.1]})
    rows = per_centre(table, ["CE", "LAA"])
    assert [r["center_id"] for r in rows] == ["1", "2", "3"] and rows[0]["roc_auc"] == 1.0 and rows[2]["roc_auc"] == 0.0
    assert per_centre(table.drop(columns="center_id"), ["CE", "LAA"]) is None
    a = {"on": "oof", "weighted_log_loss": 0.53, "weighted_log_loss_ci95": [0.45, 0.6], "n_patients": 150}
    b = {"on": "test_ensemble", "weighted_log_loss": 0.9, "weighted_log_loss_ci95": [0.7, 1.1], "n_patients": 50}
    note = disagreement(a, b)
    assert note.startswith("OOF AND TEST_ENSEMBLE DISAGREE BEYOND THEIR 95 % INTERVALS") and "0.530" in note
    assert disagreement(a, {**b, "weighted_log_loss_ci95": [0.58, 1.1]}) is None


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return write_planted_store(tmp_path_factory.mktemp("planted") / "f", patients=28, tiles=(4, 7), signal_tiles=(1, 2),
                               num_features=8, seed=1)


def _train(out, features, **over):
    from clotclf_core.training.run import train

    values = {"features": str(features), "aggregator": "abmil", "aggregator_options": TINY_ABMIL, "epochs": 2,
              "workers": 0, "threads": 1, "out": str(out), "test_fraction": 0.25} | over
    return train(resolve_settings(None, values), progress=False)


def _slides_of(csv, labels):
    df = pd.read_csv(csv, dtype={"image_id": str, "patient_id": str, "center_id": str})
    return df, df[[f"p_{n}" for n in labels]].to_numpy()


def test_cross_validation_calibrates_on_out_of_fold_patients_only(planted, tmp_path):
    out = tmp_path / "cv"
    summary = _train(out, planted, fold="all", folds=2, calibrate="temperature", clip=0.02)
    labels = ["CE", "LAA"]
    doc = json.loads((out / "metrics.json").read_text())
    oof, oof_p = _slides_of(out / "predictions_oof.csv", labels)
    refit = fit_calibration(oof, oof_p, labels, "temperature", 0.02, "out-of-fold")
    # the out-of-fold predictions, nothing else (predictions_oof.csv holds them to 6 decimals)
    assert doc["calibration"]["params"]["temperature"] == pytest.approx(refit.params["temperature"], rel=1e-3)
    refit = Calibration.from_record(doc["calibration"], 2)
    for k in (0, 1):  # every fold model carries it, for predict
        assert json.loads((out / f"fold_{k}" / "config.json").read_text())["calibration"]["params"] == refit.params
    # the test ensemble after calibration = the mean of the calibrated fold models (what predict gives)
    tests = [_slides_of(out / f"fold_{k}" / "predictions_test.csv", labels) for k in (0, 1)]
    frame = tests[0][0]
    mean = np.mean([refit.apply(slide_predictions(f, p, labels)[1]) for f, p in tests], axis=0)
    slides, _ = slide_predictions(frame, tests[0][1], labels)
    expected = metrics.evaluate(slides, mean, labels)["patient"]["weighted_log_loss"]
    head = doc["headline"]
    assert head["on"] == "test_ensemble" and head["weighted_log_loss"] == pytest.approx(expected, abs=1e-5)
    assert head["uncalibrated_weighted_log_loss"] == doc["test_ensemble"]["patient"]["weighted_log_loss"]
    assert len(head["weighted_log_loss_ci95"]) == 2 and "temperature" in head["postprocessing"]
    assert set(doc["calibration_effect"]) == {"test_ensemble", "oof"} and "cross-fitted" in doc["calibration"]["oof_after"]
    assert {r["center_id"] for r in doc["per_center"]["test_ensemble"]} <= {"1", "2", "3", "4"}
    assert (out / "plots" / "reliability_test_ensemble.png").is_file() and summary["headline"] == head
    card = (out / "README.md").read_text()
    assert "95 % interval" in card and "### Calibration" in card and "### Per centre" in card
    # evaluate on the folder (its fold ensemble) calibrates each fold, then averages: the same headline
    from clotclf_core.scoring.evaluate import evaluate_run

    report = evaluate_run(str(out), features=str(planted), out=str(tmp_path / "e"), workers=0, progress=False)
    assert report["fold_ensemble"] == ["fold_0", "fold_1"] and report["headline"]["on"] == "test"
    assert report["headline"]["weighted_log_loss"] == pytest.approx(expected, abs=1e-5)


def test_one_fold_calibrates_on_its_validation_patients_and_evaluate_applies_it(planted, tmp_path):
    from clotclf_core.scoring.evaluate import evaluate_run

    out = tmp_path / "one"
    _train(out, planted, folds=2, calibrate="platt", test_fraction=0.0)
    doc = json.loads((out / "metrics.json").read_text())
    val, val_p = _slides_of(out / "predictions_val.csv", ["CE", "LAA"])
    refit = fit_calibration(val, val_p, ["CE", "LAA"], "platt", None, "validation")
    assert np.allclose(doc["calibration"]["params"]["coef"], refit.params["coef"], rtol=1e-3)
    assert np.allclose(doc["calibration"]["params"]["intercept"], refit.params["intercept"], rtol=1e-3, atol=1e-4)
    assert doc["headline"]["on"] == "val"
    assert "optimistic" in doc["headline"]["postprocessing"]  # calibrated on the patients it is scored on
    report = evaluate_run(str(out), features=str(planted), out=str(tmp_path / "e"), patients="val", workers=0,
                          progress=False)
    assert report["headline"]["weighted_log_loss"] == pytest.approx(doc["headline"]["weighted_log_loss"])
    assert report["groups"]["validation"]["calibration"]["ece_after"] == doc["calibration_effect"]["val"]["ece_after"]
    assert (tmp_path / "e" / "plots" / "reliability_evaluate_validation.png").is_file()


def test_a_run_recorded_before_these_settings_resumes_when_they_keep_its_behaviour():
    from clotclf_core.training.settings import differences, settings_dict

    new = settings_dict(resolve_settings(None, {"tiles": "t"}))
    old = {k: v for k, v in new.items() if k not in ("standardise", "calibrate", "clip")}
    assert differences(old, new) == []
    mil = settings_dict(resolve_settings(None, {"features": "f", "aggregator": "abmil"}))
    old = {k: v for k, v in mil.items() if k != "standardise"}
    assert differences(old, mil) == ["standardise: run has None, now 'on'"]  # it would change what is computed


def test_no_interval_where_a_class_has_a_single_patient_and_centres_sort_as_numbers():
    assert bootstrap_interval([0, 1, 1], [[0.6, 0.4], [0.3, 0.7], [0.4, 0.6]]) is None
    table = pd.DataFrame({"patient_id": list("abcd"), "label": ["CE", "LAA"] * 2, "center_id": ["10", "10", "3", "3"],
                          "p_CE": [0.6, 0.4, 0.7, 0.2], "p_LAA": [0.4, 0.6, 0.3, 0.8]})
    rows = per_centre(table, ["CE", "LAA"])
    assert [r["center_id"] for r in rows] == ["3", "10"] and rows[0]["weighted_log_loss_ci95"] is None
