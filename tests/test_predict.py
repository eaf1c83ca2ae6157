"""`clotclf predict`: slides -> tiles (with the model's own tiling settings) -> probabilities,
submission.csv, heatmaps; ensembles; and the bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from clotclf_core.cli.main import cli
from clotclf_core.models.build import build_model
from clotclf_core.models.config import ModelConfig
from clotclf_core.models.saved import save_model
from clotclf_core.plugin import ClotclfError
from clotclf_core.predict.run import predict
from clotclf_core.tiling.settings import TileSettings

SETTINGS = TileSettings(downsample=2, tile_size=100, train_size=32, thumbnail_size=256, batch_size=8)


def write_slide(path: Path, blobs, seed: int, size=(1000, 800)) -> Path:
    """A tiled deflate TIFF: near-white glass with pink 'tissue' discs (synthetic)."""
    import tifffile

    rng = np.random.default_rng(seed)
    w, h = size
    img = np.clip(243 + rng.normal(0, 2, (h, w, 3)), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w]
    for cx, cy, r in blobs:
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[inside] = np.clip(np.array([200, 100, 150]) + rng.normal(0, 20, (int(inside.sum()), 3)), 0, 255)
    tifffile.imwrite(path, img.astype(np.uint8), tile=(128, 128), compression="deflate", photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    write_slide(d / "a_0.tif", ((300, 300, 180), (700, 500, 150)), 1)
    write_slide(d / "a_1.tif", ((500, 400, 250),), 2)
    write_slide(d / "b_0.tif", ((400, 400, 220),), 3)
    return d


def make_run(path: Path, seed: int, labels=("CE", "LAA"), tiling=SETTINGS, with_tileset=True) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="cct", backbone_options={"variant": "cct_2_3x2_32"}, head="linear",
                      labels=list(labels), input_size=32)
    extra = {}
    if with_tileset:
        extra["tileset"] = {"settings": {**tiling.model_dump(mode="json"), "filters": [{"name": "otsu", "options": {}}],
                                         "source": "auto"}}
    return save_model(build_model(cfg), path, extra=extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return make_run(d / "m1", 1), make_run(d / "m2", 2)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    p = tmp_path_factory.mktemp("manifest") / "test.csv"
    pd.DataFrame({"image_id": ["a_0", "a_1", "b_0"], "patient_id": ["a", "a", "b"], "center_id": ["1", "1", "2"],
                  "label": ["CE", "CE", "LAA"]}).to_csv(p, index=False)
    return p


def _slide_probs(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "predictions.csv", dtype={"image_id": str, "patient_id": str})
    return df[df["level"] == "slide"].set_index("image_id")


def test_single_model_writes_predictions_submission_heatmaps(tmp_path, slides, runs, manifest):
    out = tmp_path / "preds"
    summary = predict(slides, [str(runs[0])], out, manifest=manifest, progress=False)
    assert summary["n_slides"] == 3 and summary["n_patients"] == 2
    table = pd.read_csv(out / "predictions.csv", dtype={"image_id": str, "patient_id": str})
    slides_t = table[table["level"] == "slide"]
    patients_t = table[table["level"] == "patient"].set_index("patient_id")
    assert np.allclose(slides_t["p_CE"] + slides_t["p_LAA"], 1.0, atol=1e-5)
    # patient probability = mean of its slides' probabilities
    a = slides_t[slides_t["patient_id"] == "a"]["p_LAA"].mean()
    assert patients_t.loc["a", "p_LAA"] == pytest.approx(a, abs=2e-6)
    sub = pd.read_csv(out / "submission.csv", dtype={"patient_id": str})
    assert list(sub.columns) == ["patient_id", "CE", "LAA"] and sorted(sub["patient_id"]) == ["a", "b"]
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["a_0.png", "a_1.png", "b_0.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["patient"]["n"] == 2 and metrics["slide"]["n"] == 3


def test_ensemble_is_the_weighted_mean_of_its_members(tmp_path, slides, runs):
    for name, run in (("one", runs[0]), ("two", runs[1])):
        predict(slides, [str(run)], tmp_path / name, progress=False, heatmaps=False)
    one, two = _slide_probs(tmp_path / "one"), _slide_probs(tmp_path / "two")
    predict(slides, [str(runs[0]), str(runs[1])], tmp_path / "ens", weights=[3, 1], progress=False, heatmaps=False)
    ens = _slide_probs(tmp_path / "ens")
    expected = 0.75 * one["p_LAA"] + 0.25 * two["p_LAA"]
    assert np.allclose(ens["p_LAA"].sort_index(), expected.sort_index(), atol=2e-6)
    assert not np.allclose(one["p_LAA"], two["p_LAA"])  # the members really differ


def test_cli_predict_and_bad_inputs(tmp_path, slides, runs):
    runner = CliRunner()
    res = runner.invoke(cli, ["predict", str(slides), "--model", str(runs[0]), "--out", str(tmp_path / "p"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "submission.csv").is_file()

    empty = tmp_path / "junk"
    empty.mkdir()
    (empty / "x.tif").write_text("this is not a slide")
    res = runner.invoke(cli, ["predict", str(empty), "--model", str(runs[0]), "--out", str(tmp_path / "q"), "-q"])
    assert res.exit_code != 0 and res.output.startswith("Error:") and "Traceback" not in res.output

    res = runner.invoke(cli, ["predict", str(slides), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "nope" in res.output

    res = runner.invoke(cli, ["predict", str(slides), "--model", str(runs[0]), "--weight", "1", "--weight", "2",
                              "--out", str(tmp_path / "s")])
    assert res.exit_code != 0 and "one weight per model" in res.output


def test_models_with_other_labels_or_no_tiling_record_are_refused(tmp_path, slides, runs):
    other = make_run(tmp_path / "other", 3, labels=("LAA", "CE"))
    with pytest.raises(ClotclfError, match="disagree on their labels"):
        predict(slides, [str(runs[0]), str(other)], tmp_path / "x", progress=False)
    bare = make_run(tmp_path / "bare", 4, with_tileset=False)
    with pytest.raises(ClotclfError, match="tiling settings"):
        predict(slides, [str(bare)], tmp_path / "y", progress=False)


def test_reusing_out_scores_only_this_jobs_slides(tmp_path, slides, runs):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "a_0.tif").write_bytes((slides / "a_0.tif").read_bytes())
    (second / "b_0.tif").write_bytes((slides / "b_0.tif").read_bytes())
    out = tmp_path / "preds"
    predict(first, [str(runs[0])], out, progress=False)
    summary = predict(second, [str(runs[0])], out, progress=False)
    assert summary["n_slides"] == 1
    assert list(pd.read_csv(out / "submission.csv", dtype=str)["patient_id"]) == ["b"]  # STRIP AI <patient>_<n>
    assert [Path(h).name for h in summary["heatmaps"]] == ["b_0.png"]
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["b_0.png"]  # the first run's a_0.png is gone


def test_a_killed_run_in_a_reused_out_leaves_no_earlier_result_looking_current(tmp_path, slides, runs, monkeypatch):
    """And a patient id starting with '=' is text in submission.csv (a spreadsheet would run it)."""
    from clotclf_core.predict import run as predict_run

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "=cmd_0.tif").write_bytes((slides / "a_0.tif").read_bytes())
    out = tmp_path / "preds"
    predict(hostile, [str(runs[0])], out, progress=False)
    assert (out / "submission.csv").read_text().splitlines()[1].startswith("'=cmd,")
    assert list(pd.read_csv(out / "submission.csv", dtype=str)["patient_id"]) == ["'=cmd"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_run, "score_member", killed)
    with pytest.raises(BaseException):
        predict(slides, [str(runs[0])], out, progress=False)
    left = sorted(p.name for p in out.iterdir())
    assert not set(left) & set(predict_run.RESULTS), left  # the earlier run's CSVs and heatmaps are gone


def test_labels_the_model_does_not_know_are_kept_not_refused(tmp_path, slides, runs):
    """STRIP AI's other.csv labels its slides Other / Unknown: prediction needs no label, so they are
    kept as given, and no metrics are computed against them."""
    other = tmp_path / "other.csv"
    pd.DataFrame({"image_id": ["a_0", "b_0"], "center_id": ["1", "2"], "patient_id": ["a", "b"],
                  "image_num": ["0", "0"], "other_specified": ["dissection", ""],
                  "label": ["Other", "Unknown"]}).to_csv(other, index=False)
    summary = predict(slides, [str(runs[0])], tmp_path / "o", manifest=other, progress=False, heatmaps=False,
                      qupath=False)
    assert summary["n_patients"] == 2 and "metrics" not in summary
    assert "Other, Unknown" in summary["labels_note"] and not (tmp_path / "o" / "metrics.json").exists()
    table = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(table.loc[table["level"] == "slide", "label"]) == {"Other", "Unknown"}


# ----------------------------------------------------------------------------- Kaggle-safe submission


def read_like_kaggle(path: Path, test_csv: Path, labels=("CE", "LAA")) -> pd.DataFrame:
    """What Kaggle's scorer needs of submission.csv: exactly the columns patient_id,CE,LAA, exactly
    one row per patient of test.csv (no more, no fewer, no duplicates), finite probabilities in
    [0, 1] whose rows sum to 1."""
    sub = pd.read_csv(path, dtype={"patient_id": str})
    test = pd.read_csv(test_csv, dtype=str)
    assert list(sub.columns) == ["patient_id", *labels]
    assert sub["patient_id"].is_unique and set(sub["patient_id"]) == set(test["patient_id"])
    assert len(sub) == test["patient_id"].nunique()
    probs = sub[list(labels)].to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    return sub.set_index("patient_id")


def test_submission_has_one_row_for_every_patient_of_test_csv(tmp_path, slides, runs):
    folder = tmp_path / "test"
    folder.mkdir()
    for name in ("a_0", "a_1", "b_0"):
        (folder / f"{name}.tif").write_bytes((slides / f"{name}.tif").read_bytes())
    write_slide(folder / "e_0.tif", (), 9)  # glass only: no tissue tile
    # Kaggle's test.csv: no label; patient d's only slide is not in the folder at all
    test_csv = tmp_path / "test.csv"
    pd.DataFrame({"image_id": ["a_0", "a_1", "b_0", "d_0", "e_0"], "center_id": ["1", "1", "2", "3", "3"],
                  "patient_id": ["a", "a", "b", "d", "e"], "image_num": ["0", "1", "0", "0", "0"]}).to_csv(test_csv, index=False)
    summary = predict(folder, [str(runs[0])], tmp_path / "out", manifest=test_csv, progress=False, heatmaps=False)
    sub = read_like_kaggle(tmp_path / "out" / "submission.csv", test_csv)
    assert list(sub.index) == ["a", "b", "d", "e"]  # test.csv's order
    assert sub.loc["d"].tolist() == [0.5, 0.5] and sub.loc["e"].tolist() == [0.5, 0.5]
    assert summary["patients_without_tiles"] == ["d", "e"]
    assert list(summary["failed_slides"]) == ["d_0"]  # missing file: a failure (exit 3 from the CLI)
    assert "no slide file in the slide folder" in summary["failed_slides"]["d_0"]
    assert summary["patient_ids_from"] == "manifest"
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(table.loc[table["level"] == "slide", "image_id"]) == {"a_0", "a_1", "b_0", "d_0", "e_0"}
    assert table.loc[(table["level"] == "patient") & (table["patient_id"] == "e"), "status"].item().startswith("no usable tile")

    res = CliRunner().invoke(cli, ["predict", str(folder), "--model", str(runs[0]), "--out", str(tmp_path / "cli"),
                                   "--manifest", str(test_csv), "--no-heatmaps", "-q"])
    assert res.exit_code == 3
    assert "Warning: 2 PATIENT(S) HAVE NO USABLE TILE" in res.stderr and "d, e" in res.stderr
    assert res.stderr.count("Error:") == 1 and "d_0" in res.stderr
    read_like_kaggle(tmp_path / "cli" / "submission.csv", test_csv)
    # the summary tells the slide without tissue (e_0) from the one that is missing (d_0: the Error line)
    res = CliRunner().invoke(cli, ["predict", str(folder), "--model", str(runs[0]), "--out", str(tmp_path / "cli2"),
                                   "--manifest", str(test_csv), "--no-heatmaps"])
    assert res.exit_code == 3
    assert "no tissue tiles (not scored): e_0\n" in res.stdout
    assert "3 slide(s) scored by 1 model(s)" in res.stdout and "4 patient(s) in submission.csv (2 with equal" in res.stdout


def test_without_a_manifest_patients_come_from_the_strip_ai_image_ids(tmp_path, slides, runs):
    summary = predict(slides, [str(runs[0])], tmp_path / "out", progress=False, heatmaps=False)
    sub = pd.read_csv(tmp_path / "out" / "submission.csv", dtype={"patient_id": str})
    assert list(sub["patient_id"]) == ["a", "b"] and summary["patient_ids_from"].startswith("image-id convention")
    slides_t = _slide_probs(tmp_path / "out")
    assert sub.set_index("patient_id").loc["a", "LAA"] == pytest.approx(slides_t.loc[["a_0", "a_1"], "p_LAA"].mean(), abs=2e-6)


def test_patients_the_model_trained_on_are_flagged_and_scored_apart(tmp_path, slides, manifest):
    run = make_run(tmp_path / "m", 5)
    config = json.loads((run / "config.json").read_text())
    config["split"] = {"train": ["a"], "val": [], "test": ["b"]}
    (run / "config.json").write_text(json.dumps(config))
    summary = predict(slides, [str(run)], tmp_path / "out", manifest=manifest, progress=False, heatmaps=False)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str, keep_default_na=False)
    patients = table[table["level"] == "patient"].set_index("patient_id")
    assert patients.loc["a", "in_model_split"] == "train" and patients.loc["b", "in_model_split"] == "test"
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["patient"]["n"] == 1 and metrics["n_seen_in_training"] == 1  # the headline leaves a out
    assert metrics["patient_all"]["n"] == 2 and "TRAINING" in metrics["patient_all_note"]
    assert summary["patients_in_model_split"]["train"] == 1


def test_a_job_whose_slides_all_lack_tissue_still_gets_its_submission(tmp_path, runs):
    """Kaggle's test set can be a handful of slides: if none gives a tissue tile, every patient still
    gets a submission row (equal probabilities, the loud warning), not 'no slide could be tiled'."""
    folder = tmp_path / "glass"
    folder.mkdir()
    write_slide(folder / "e_0.tif", (), 9)
    write_slide(folder / "f_0.tif", (), 10)
    res = CliRunner().invoke(cli, ["predict", str(folder), "--model", str(runs[0]), "--out", str(tmp_path / "out"),
                                   "--no-heatmaps", "-q"])
    assert res.exit_code == 0, res.output
    assert "Warning: 2 PATIENT(S) HAVE NO USABLE TILE" in res.stderr and "Error:" not in res.stderr
    sub = pd.read_csv(tmp_path / "out" / "submission.csv", dtype={"patient_id": str})
    assert sub["patient_id"].tolist() == ["e", "f"] and (sub[["CE", "LAA"]] == 0.5).all().all()
