"""`clotclf predict` and `clotclf evaluate` with multiple-instance (MIL) runs: from slides (tiled with
the run's recipe, embedded with the encoder rebuilt from its record, pooled), ensembles mixing
tile-level and MIL models, attention heatmaps, a slide without tissue (its patient gets 0.5)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_predict import SETTINGS, make_run, manifest, slides, write_slide  # noqa: F401  (fixtures)
from tilesets import TINY_ABMIL, TINY_TIMM

from clotclf_core.predict.run import predict
from clotclf_core.training.run import train
from clotclf_core.training.settings import resolve_settings


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An abmil run on features of the tiny timm encoder, trained on 6 synthetic slides tiled with
    the predict tests' recipe (so the recipe it records is the one predict repeats)."""
    from clotclf_core.features.embed import embed_tileset
    from clotclf_core.tiling.run import tile_slides

    d = tmp_path_factory.mktemp("milpredict")
    (d / "slides").mkdir()
    rows = []
    for i in range(6):
        write_slide(d / "slides" / f"t{i}_0.tif", ((300 + 30 * i, 280, 140 + 15 * (i % 3)),), 20 + i, size=(640, 560))
        rows.append({"image_id": f"t{i}_0", "patient_id": f"t{i}", "center_id": "1", "label": "CE" if i % 2 else "LAA"})
    pd.DataFrame(rows).to_csv(d / "train.csv", index=False)
    tile_slides(d / "slides", d / "tiles", manifest=d / "train.csv", settings=SETTINGS, progress=False)
    embed_tileset(d / "tiles", d / "features", "timm", dict(TINY_TIMM), device="cpu", progress=False)
    common = {"features": str(d / "features"), "epochs": 1, "folds": 2, "batch_size": 2, "workers": 0, "patience": 0}
    train(resolve_settings(None, {**common, "aggregator": "abmil", "aggregator_options": TINY_ABMIL, "out": str(d / "abmil")}),
          progress=False)
    train(resolve_settings(None, {**common, "aggregator": "mean", "aggregator_options": {"hidden": 8}, "out": str(d / "mean")}),
          progress=False)
    return {"dir": d, "abmil": d / "abmil", "mean": d / "mean", "tile": make_run(d / "tile", 1), "features": d / "features",
            "tiles": d / "tiles"}


def _slides(out):
    df = pd.read_csv(out / "predictions.csv", dtype={"image_id": str, "patient_id": str})
    return df[df["level"] == "slide"].set_index("image_id").sort_index()


def test_mil_run_predicts_from_slides_and_mixes_with_a_tile_level_run(tmp_path, slides, manifest, trained):
    out = tmp_path / "p"
    summary = predict(slides, [str(trained["abmil"]), str(trained["tile"])], out, manifest=manifest, progress=False,
                      attention=True)
    assert [m["kind"] for m in summary["models"]] == ["mil", "tile"] and summary["n_slides"] == 3
    assert (out / "features").is_dir() and len(list((out / "features").iterdir())) == 1  # embedded once, kept
    sub = pd.read_csv(out / "submission.csv", dtype={"patient_id": str})
    assert list(sub["patient_id"]) == ["a", "b"] and np.allclose(sub[["CE", "LAA"]].sum(axis=1), 1)
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["a_0.png", "a_1.png", "b_0.png"]
    from PIL import Image

    assert Image.open(out / "heatmaps" / "a_0.png").size[0] > Image.open(out / "heatmaps" / "a_0.png").size[1] * 2.5  # 3 panels
    # the MIL member is in the pictures too: its tiles' probabilities and attention in the QuPath export
    tiles = [f["properties"] for f in json.loads((out / "qupath" / "a_0.geojson").read_text())["features"]
             if f["properties"]["objectType"] == "detection"]
    # (the two runs record different tiling recipes, so each model's tiles are its own detections)
    mil_tiles = [t for t in tiles if "attention abmil" in t["measurements"]]
    assert mil_tiles and {"P(LAA) abmil", "attention abmil"} <= set(mil_tiles[0]["measurements"])
    assert any("P(LAA) tile" in t["measurements"] for t in tiles)
    assert sum(t["measurements"]["attention abmil"] for t in mil_tiles) == pytest.approx(1.0, abs=1e-4)
    assert "abmil (MIL model abmil: each tile as a bag of one); left out: tile" in mil_tiles[0]["metadata"]["models"]
    ens = _slides(out)
    predict(slides, [str(trained["abmil"])], out, progress=False, heatmaps=False)
    mil = _slides(out)
    predict(slides, [str(trained["tile"])], out, progress=False, heatmaps=False)
    tile = _slides(out)
    assert np.allclose(ens["p_LAA"], 0.5 * mil["p_LAA"] + 0.5 * tile["p_LAA"], atol=2e-6)  # slide-level weighted mean
    # the MIL slide probability is the aggregator on every tile of the slide, from the encoder's features
    import torch

    from clotclf_core.features.store import FeatureStore
    from clotclf_core.models.saved import load_model

    store = FeatureStore(next((out / "features").iterdir()))
    model = load_model(trained["abmil"])
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(store.features("a_0").astype(np.float32))[None]), 1)[0, 1]
    assert float(p) == pytest.approx(mil.loc["a_0", "p_LAA"], abs=2e-6)
    assert mil.loc["a_0", "n_tiles"] == len(store.features("a_0"))


def test_a_slide_without_tissue_gives_its_patient_equal_probabilities(tmp_path, slides, trained):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "a_0.tif").write_bytes((slides / "a_0.tif").read_bytes())
    write_slide(folder / "e_0.tif", (), 9)  # glass only: a bag with zero tiles
    summary = predict(folder, [str(trained["abmil"])], tmp_path / "o", progress=False, heatmaps=False)
    sub = pd.read_csv(tmp_path / "o" / "submission.csv", dtype={"patient_id": str}).set_index("patient_id")
    assert sub.loc["e"].tolist() == [0.5, 0.5] and summary["patients_without_tiles"] == ["e"]
    assert sub.loc["a", "LAA"] != 0.5


def test_evaluate_a_mil_run_on_features_or_on_tiles(tmp_path, trained):
    from clotclf_core.scoring.evaluate import evaluate_run

    on_features = evaluate_run(str(trained["abmil"]), features=str(trained["features"]), out=str(tmp_path / "f"),
                               patients="all", workers=0, progress=False)
    on_tiles = evaluate_run(str(trained["abmil"]), tiles=str(trained["tiles"]), out=str(tmp_path / "t"),
                            patients="all", workers=0, progress=False)
    assert set(on_features["metrics"]) == {"slide", "patient"} and on_features["n_slides"] == 6
    a = pd.read_csv(tmp_path / "f" / "predictions.csv").sort_values("image_id")
    b = pd.read_csv(tmp_path / "t" / "predictions.csv").sort_values("image_id")
    assert np.allclose(a["p_LAA"], b["p_LAA"], atol=2e-6)  # the tiles embedded again give the same features
    assert on_tiles["groups"].keys() == on_features["groups"].keys()
    assert not list(tmp_path.glob(".clotclf-embed-*"))  # the temporary feature store is gone
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["headline"]["n_patients"] > 0


def test_predict_applies_each_models_calibration_and_says_so(tmp_path, slides, trained):
    """A run's calibration (config.json) post-processes its slide probabilities before the ensemble
    mean, so submission.csv holds them; summary.json records how."""
    import shutil

    from clotclf_core.scoring.calibration import Calibration

    run = tmp_path / "calibrated"
    shutil.copytree(trained["abmil"], run)
    config = json.loads((run / "config.json").read_text())
    record = {"method": "temperature", "params": {"temperature": 2.5}, "clip": 0.2, "fitted_on": "validation",
              "n_patients": 12, "n_slides": 12}
    config["calibration"] = record
    (run / "config.json").write_text(json.dumps(config))
    raw = predict(slides, [str(trained["abmil"])], tmp_path / "raw", progress=False, heatmaps=False)
    done = predict(slides, [str(run), str(trained["tile"])], tmp_path / "cal", progress=False, heatmaps=False)
    assert raw["models"][0]["calibration"] is None
    assert done["models"][0]["calibration"] == "temperature 2.5 fitted on 12 validation patients; clipped to [0.2, 0.8]"
    tile_only = predict(slides, [str(trained["tile"])], tmp_path / "tile", progress=False, heatmaps=False)
    assert tile_only["models"][0]["calibration"] is None
    mil, ens, tile = _slides(tmp_path / "raw"), _slides(tmp_path / "cal"), _slides(tmp_path / "tile")
    expected = Calibration.from_record(record, 2).apply(mil[["p_CE", "p_LAA"]].to_numpy())[:, 1]
    assert np.allclose(ens["p_LAA"], 0.5 * expected + 0.5 * tile["p_LAA"], atol=2e-6)
    sub = pd.read_csv(tmp_path / "cal" / "submission.csv", dtype={"patient_id": str})
    assert np.allclose(sub[["CE", "LAA"]].sum(axis=1), 1)
