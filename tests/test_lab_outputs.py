"""What a lab opens from `predict` and `evaluate`: QuPath GeoJSON (checked against QuPath's import
rules, the GeoJSON spec and shapely), report.html (opened in headless Chromium), per-model columns,
and cross-validation folders used as the ensemble of their folds (synthetic slides throughout)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_predict import make_run, slides  # noqa: F401  (fixture)

from clotclf_core.cli.main import cli
from clotclf_core.predict.run import predict

#: the objectType values QuPath's GeoJSON reader knows (QuPathTypeAdapters); a missing one makes an annotation
QUPATH_OBJECT_TYPES = {"annotation", "detection", "tile", "cell", "tmaCore", "tma_core", "root"}
#: the synthetic slides' tissue discs (test_predict.slides): level-0 px area
DISC_AREA = {"a_0": math.pi * (180**2 + 150**2), "a_1": math.pi * 250**2, "b_0": math.pi * 220**2}


def fold_run(path: Path, seed: int, split: dict) -> Path:
    run = make_run(path, seed)
    config = json.loads((run / "config.json").read_text())
    config["split"] = split
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture(scope="module")
def lab(tmp_path_factory, slides):  # noqa: F811
    """A tile-level run m1 and a two-fold cross-validation folder, predicted together (weights 2:2)."""
    root = tmp_path_factory.mktemp("lab")
    m1 = make_run(root / "m1", 1)
    cv = root / "cv"
    fold_run(cv / "fold_0", 2, {"train": ["a"], "val": [], "test": ["b"]})
    fold_run(cv / "fold_1", 3, {"train": [], "val": ["a"], "test": ["b"]})
    (cv / "cv.json").write_text(json.dumps({"folds": ["fold_0", "fold_1"]}))
    manifest = root / "test.csv"
    pd.DataFrame({"image_id": ["a_0", "b_0"], "patient_id": ["a", "b"], "label": ["CE", "LAA"]}).to_csv(manifest, index=False)
    out = root / "out"
    summary = predict(slides, [str(m1), str(cv)], out, manifest=manifest, progress=False)
    return {"root": root, "m1": m1, "cv": cv, "out": out, "summary": summary, "slides": slides}


def read_json_strict(path: Path):
    """JSON as QuPath's Gson reads it: NaN / Infinity are not JSON."""
    def refuse(name):
        raise AssertionError(f"{path.name}: {name} is not JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def qupath_reads(feature: dict) -> str:
    """The rules QuPath's GeoJSON import applies to one Feature (see clotclf_core.scoring.qupath); its objectType."""
    assert feature["type"] == "Feature" and set(feature) >= {"geometry", "properties"}
    props = feature["properties"]
    assert props.get("objectType") in QUPATH_OBJECT_TYPES, props.get("objectType")
    cls = props.get("classification")
    if cls is not None:  # QuPath throws "Unable to parse PathClass" for an object without a colour
        assert isinstance(cls, dict) and isinstance(cls.get("name"), str) and cls["name"], cls
        colour = cls.get("color")
        assert isinstance(colour, list) and len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
    measurements = props.get("measurements", {})
    assert isinstance(measurements, dict)  # QuPath >= 0.4 writes and reads an object of name -> number
    for name, value in measurements.items():
        assert isinstance(name, str) and isinstance(value, (int, float)) and math.isfinite(value), (name, value)
    return props["objectType"]


def tiles_dir(out: Path) -> Path:
    (recipe,) = list((out / "tiles").iterdir())
    return recipe


def test_predict_writes_geojson_qupath_imports(lab):
    import geojson
    from shapely.geometry import shape

    out, summary = lab["out"], lab["summary"]
    table = pd.read_csv(out / "predictions.csv", dtype={"image_id": str, "patient_id": str})
    slides_t = table[table["level"] == "slide"].set_index("image_id")
    tileset = json.loads((tiles_dir(out) / "tileset.json").read_text())["slides"]
    assert sorted(Path(p).name for p in summary["qupath"]) == ["a_0.geojson", "b_0.geojson"]
    for image_id in ("a_0", "b_0"):
        path = out / "qupath" / f"{image_id}.geojson"
        data = read_json_strict(path)
        assert geojson.loads(path.read_text()).is_valid and data["type"] == "FeatureCollection"
        kinds = [qupath_reads(f) for f in data["features"]]
        assert kinds.count("annotation") == 1 and kinds.count("detection") == slides_t.loc[image_id, "n_tiles"]
        tissue = next(f for f in data["features"] if f["properties"]["objectType"] == "annotation")
        outline = shape(tissue["geometry"])
        assert outline.is_valid and tissue["properties"]["name"] == "tissue mask (clotclf tiling)"
        assert outline.area == pytest.approx(DISC_AREA[image_id], rel=0.03)  # level-0 px: the discs drawn on the slide
        w, h = tileset[image_id]["width"], tileset[image_id]["height"]
        tiles = [f for f in data["features"] if f["properties"]["objectType"] == "detection"]
        m = pd.DataFrame([f["properties"]["measurements"] for f in tiles])
        for f in tiles:
            box = shape(f["geometry"])
            assert box.is_valid and box.bounds[0] >= 0 and box.bounds[1] >= 0 and box.bounds[2] <= w and box.bounds[3] <= h
            assert box.intersection(outline).area > 0.05 * box.area  # a kept tile lies on tissue
            p = f["properties"]["measurements"]["P(LAA) ensemble"]
            assert f["properties"]["classification"]["name"] == ("LAA" if p >= 0.5 else "CE")
        assert {"P(LAA) ensemble", "P(LAA) m1", "P(LAA) cv/fold_0", "P(LAA) cv/fold_1", "tissue share",
                "darkness", "otsu score"} <= set(m.columns)
        # the ensemble is the weighted mean of its members (m1 half, each fold a quarter) ...
        mix = 0.5 * m["P(LAA) m1"] + 0.25 * m["P(LAA) cv/fold_0"] + 0.25 * m["P(LAA) cv/fold_1"]
        np.testing.assert_allclose(m["P(LAA) ensemble"], mix, atol=2e-6)
        # ... and a tile-level model's slide probability is the mean of these very tiles
        for name in ("m1", "cv/fold_0"):
            assert m[f"P(LAA) {name}"].mean() == pytest.approx(slides_t.loc[image_id, f"p_LAA[{name}]"], abs=2e-6)


def test_fold_ensemble_and_per_model_columns(lab):
    summary = lab["summary"]
    members = {m["name"]: m for m in summary["models"]}
    assert set(members) == {"m1", "cv/fold_0", "cv/fold_1"}
    assert members["cv/fold_0"]["fold_of"] == str(lab["cv"]) and members["cv/fold_1"]["weight"] == 0.25
    table = pd.read_csv(lab["out"] / "predictions.csv", dtype={"image_id": str, "patient_id": str})
    for level in ("slide", "patient"):
        t = table[table["level"] == level]
        mix = 0.5 * t["p_LAA[m1]"] + 0.25 * t["p_LAA[cv/fold_0]"] + 0.25 * t["p_LAA[cv/fold_1]"]
        np.testing.assert_allclose(t["p_LAA"], mix, atol=5e-6)
    # the fold ensemble's split: a fold trained on patient a, so a is a training patient of the ensemble
    patients = table[table["level"] == "patient"].set_index("patient_id")
    assert patients.loc["a", "in_model_split"] == "train" and patients.loc["b", "in_model_split"] == "test"


# ----------------------------------------------------------------------------- report.html in Chromium


def chromium() -> str:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        message = "no Chromium on this machine: `apt-get install chromium` (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


def open_in_chromium(page_path: Path, png: Path) -> dict:
    """Load ``page_path`` in headless Chromium with the network cut off; what went wrong, and a screenshot."""
    from playwright.sync_api import sync_playwright

    problems, outside = [], []

    def route(r):
        url = r.request.url
        if url.startswith(("file:", "data:")):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url[:80]}"))
            page.route("**/*", route)
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
            n_images = page.evaluate("document.images.length")
            text = page.inner_text("body")
            page.screenshot(path=str(png), full_page=True)
        finally:
            browser.close()
    return {"problems": problems, "outside": outside, "broken": broken, "images": n_images, "text": text}


def assert_not_blank(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as img:
        a = np.asarray(img.convert("RGB")).astype(np.int32)
    colours = np.unique((a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2])
    assert a.shape[0] > 900 and a.std() > 20 and len(colours) > 500, (a.shape, a.std(), len(colours))


def test_predict_report_opens_in_chromium(lab, tmp_path):
    page = lab["out"] / "report.html"
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<script" not in html.lower()
    seen = open_in_chromium(page, tmp_path / "predict.png")
    assert seen["problems"] == [] and seen["outside"] == [] and seen["broken"] == 0
    assert seen["images"] == 4  # two QC pictures and two heatmaps, inline
    assert "weighted log loss" in seen["text"] and "0.693" in seen["text"] and "p_LAA[cv/fold_1]" in seen["text"]
    assert_not_blank(tmp_path / "predict.png")


def test_evaluate_a_fold_ensemble_writes_geojson_heatmaps_and_report(lab, tmp_path):
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["evaluate", str(lab["cv"]), "--tiles", str(tiles_dir(lab["out"])), "--out", str(out),
                                   "--patients", "all", "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["fold_ensemble"] == ["fold_0", "fold_1"] and set(report["groups"]) == {"test", "train"}
    assert report["headline"]["on"] == "test" and report["headline"]["n_patients"] == 1  # b: no fold trained on it
    table = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(table["p_LAA"], (table["p_LAA[fold_0]"] + table["p_LAA[fold_1]"]) / 2, atol=2e-6)
    for image_id in ("a_0", "b_0"):
        data = read_json_strict(out / "qupath" / f"{image_id}.geojson")
        kinds = [qupath_reads(f) for f in data["features"]]
        assert kinds.count("detection") == int((table["image_id"] == image_id).sum()) and kinds.count("annotation") == 1
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["a_0.png", "b_0.png"]
    seen = open_in_chromium(out / "report.html", tmp_path / "evaluate.png")
    assert seen["problems"] == [] and seen["outside"] == [] and seen["broken"] == 0 and seen["images"] >= 4
    assert "ensemble of its 2 folds" in seen["text"] and "test patients (n = 1)" in seen["text"]
    assert_not_blank(tmp_path / "evaluate.png")


# ----------------------------------------------------------------------------- the pieces


def test_mask_outline_keeps_holes_and_tileset_without_masks_falls_back(tmp_path):
    from shapely.geometry import shape
    from tilesets import make_tileset

    from clotclf_core.scoring.qupath import mask_geometry, tissue_feature, tissue_outline
    from clotclf_core.tiling.tileset import TileSet

    mask = np.zeros((40, 60), bool)
    mask[5:35, 5:45] = True
    mask[15:25, 15:25] = False  # a hole
    mask[30:38, 50:58] = True  # a second piece
    geom = mask_geometry(mask, 8.0)
    assert geom.is_valid and geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    assert any(len(p.interiors) == 1 for p in geom.geoms)
    assert geom.area == pytest.approx(mask.sum() * 64, rel=0.15)  # traced through edge-pixel centres
    feature = tissue_feature(geom, "tissue")
    assert qupath_reads(feature) == "annotation" and shape(feature["geometry"]).equals(geom)

    ts = TileSet(make_tileset(tmp_path / "tiles", sizes=(3,), empty={}))
    outline, name = tissue_outline(ts, "s0")
    assert "candidate tiles" in name and outline.area == pytest.approx(144 * 64)  # 64-px tiles at x = 0, 40, 80


def test_headline_interval_forms_and_scale_bars():
    from clotclf_core.scoring.plots import scale_bar_length
    from clotclf_core.scoring.report_html import headline_html, headline_interval

    h = {"what": "held-out test patients", "n_patients": 6, "weighted_log_loss": 0.403, "baseline_weighted_log_loss": 0.693,
         "balanced_accuracy": 0.9, "roc_auc": 1.0, "accuracy": 0.83}
    assert headline_interval(h, "weighted_log_loss") is None
    for form in ({"intervals": {"weighted_log_loss": {"low": 0.278, "high": 0.529, "level": 0.95, "method": "bootstrap"}}},
                 {"weighted_log_loss_ci": [0.278, 0.529]}):
        low, high, _ = headline_interval({**h, **form}, "weighted_log_loss")
        assert (low, high) == (0.278, 0.529)
        assert "0.278 to 0.529" in headline_html({**h, **form})
    assert "<script>" not in headline_html({**h, "what": "<script>alert(1)</script>"})
    assert [scale_bar_length(s) for s in (500, 2600, 25_000, 90)] == [100, 500, 5000, 20]


def test_a_slide_folder_given_as_tiles_is_told_to_be_tiled_elsewhere(lab):
    slides_dir = lab["slides"]
    for args in (["evaluate", str(lab["m1"]), "--tiles", str(slides_dir)], ["train", "--tiles", str(slides_dir)]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2, res.output
        line = res.output.strip()
        assert line.count("\n") == 0 and "holds slide files" in line
        assert f"`clotclf tile {slides_dir} --out {slides_dir}-tiles`" in line  # never into the slide folder itself


def test_fold_ensembles_that_cannot_be_one_model_are_refused(lab, tmp_path):
    """Folds that score different things, and a cross-validation that did not finish: one line each."""
    odd = tmp_path / "odd"
    fold_run(odd / "fold_0", 4, {"train": ["a"]})
    make_run(odd / "fold_1", 5, labels=("LAA", "CE"))
    (odd / "cv.json").write_text(json.dumps({"folds": ["fold_0", "fold_1"]}))
    res = CliRunner().invoke(cli, ["evaluate", str(odd), "--tiles", str(tiles_dir(lab["out"]))])
    assert res.exit_code == 2 and "differ in labels" in res.output and "fold_1" in res.output, res.output
    res = CliRunner().invoke(cli, ["predict", str(lab["slides"]), "--model", str(odd), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "disagree on their labels" in res.output, res.output
    (odd / "cv.json").unlink()
    res = CliRunner().invoke(cli, ["predict", str(lab["slides"]), "--model", str(odd), "--out", str(tmp_path / "q")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "did not finish" in res.output, res.output
