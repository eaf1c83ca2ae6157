"""`clotclf import-features`: TRIDENT / CLAM patch-feature .h5 files (written the way those tools
write them, tests/h5_writers.py) become a clotclf feature store that `train --features`,
`evaluate --features` and `predict --features` use; bad files and options are one clear line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from badinput import assert_clean_error, invoke
from h5_writers import clam_file, trident_file

from clotclf_core.features.store import FeatureStore

D = 8
MIL_TRAIN = ["--epochs", "1", "--folds", "2", "--batch-size", "2", "--workers", "0", "--patience", "0", "--device", "cpu"]


def _slide(i: int, n: int):
    rng = np.random.default_rng(i)
    label = "CE" if (i // 2) % 2 else "LAA"
    feats = rng.normal(0, 1, (n, D)).astype(np.float32) + (0.8 if label == "LAA" else 0.0)
    coords = np.stack([np.arange(n) * 512, np.full(n, 1024 * i)], axis=1)
    return feats, coords, label


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """16 slides of 8 patients as TRIDENT files, one slide with no patch, one manifest row without a
    file and one file without a manifest row."""
    d = tmp_path_factory.mktemp("h5")
    (d / "feats").mkdir()
    rows, data = [], {}
    for i in range(16):
        feats, coords, label = _slide(i, 3 + i % 5)
        trident_file(d / "feats" / f"s{i}.h5", feats, coords)
        rows.append({"image_id": f"s{i}", "patient_id": f"p{i // 2}", "center_id": "c1", "label": label})
        data[f"s{i}"] = (feats, coords)
    trident_file(d / "feats" / "s16.h5", np.zeros((0, D), np.float32), np.zeros((0, 2), np.int64))
    trident_file(d / "feats" / "unlisted.h5", *_slide(99, 3)[:2])
    rows += [{"image_id": "s16", "patient_id": "p8", "center_id": "c1", "label": "CE"},
             {"image_id": "s17", "patient_id": "p9", "center_id": "c1", "label": "LAA"}]
    pd.DataFrame(rows).to_csv(d / "train.csv", index=False)
    return {"dir": d, "h5": d / "feats", "manifest": d / "train.csv", "data": data}


@pytest.fixture(scope="module")
def imported(cohort):
    out = invoke(["import-features", cohort["h5"], "--manifest", cohort["manifest"], "--encoder-name", "uni_v2",
                  "--out", cohort["dir"] / "store"])
    assert out.exit_code == 0, out.stderr
    return {**cohort, "store": cohort["dir"] / "store", "stdout": out.stdout}


def test_trident_files_become_a_feature_store(imported):
    store = FeatureStore(imported["store"])
    assert store.done == sorted(f"s{i}" for i in range(16)) and store.num_features == D
    feats, coords = imported["data"]["s3"]
    assert np.allclose(store.features("s3"), feats, atol=1e-2) and store.features("s3").dtype == np.float16
    rows = store.tiles("s3")
    assert rows["x"].tolist() == coords[:, 0].tolist() and rows["y"].tolist() == coords[:, 1].tolist()
    assert set(rows["size"]) == {512} and set(rows["downsample"]) == {2.0}  # 256 px at 20x of a 40x slide
    assert rows[["patient_id", "label"]].iloc[0].tolist() == ["p1", "CE"]
    enc = store.encoder
    assert enc["backbone"] == "uni_v2" and enc["weights_sha256"] is None and enc["imported"]["format"] == "trident"
    assert enc["input_size"] == 256 and "savetodir" not in json.dumps(store.meta)  # the writers' local paths stay out
    assert store.empty["s16"]["reason"] == "the .h5 file holds no patches" and "no s17.h5" in store.empty["s17"]["reason"]
    text = imported["stdout"]
    assert "16 slide(s) imported" in text and "weights are not known" in text and "left out, not in the manifest: unlisted" in text
    again = invoke(["import-features", imported["h5"], "--manifest", imported["manifest"], "--encoder-name", "uni_v2",
                    "--out", imported["store"], "--json"])
    assert json.loads(again.stdout)["kept"] == 16 and json.loads(again.stdout)["imported"] == 0  # resumed: nothing redone


def test_clam_files_need_their_patch_size_given(tmp_path):
    (tmp_path / "h5").mkdir()
    for i in range(2):
        clam_file(tmp_path / "h5" / f"s{i}.h5", *_slide(i, 6)[:2])
    out = invoke(["import-features", tmp_path / "h5", "--encoder-name", "resnet50-trunc", "--out", tmp_path / "f"])
    assert_clean_error(out, 2, ["s0.h5", "does not say its patch size", "--patch-size-level0"])
    assert not (tmp_path / "f").exists()
    out = invoke(["import-features", tmp_path / "h5", "--encoder-name", "resnet50-trunc", "--patch-size-level0", "256",
                  "--out", tmp_path / "f", "--weights-sha256", "ab" * 32, "-q"])
    assert out.exit_code == 0, out.stderr
    store = FeatureStore(tmp_path / "f")
    assert store.encoder["imported"]["format"] == "clam" and store.encoder["weights_sha256"] == "ab" * 32
    assert set(store.tiles("s1")["size"]) == {256} and len(store.features("s1")) == 6


def test_train_evaluate_and_predict_on_imported_features(imported, tmp_path):
    run = tmp_path / "run"
    trained = invoke(["train", "--features", imported["store"], "--aggregator", "mean", "--aggregator-opt", "hidden=8",
                      "--out", run, "-q", *MIL_TRAIN])
    assert trained.exit_code == 0, trained.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["encoder"]["imported"]["format"] == "trident"
    evaluated = invoke(["evaluate", run, "--features", imported["store"], "--patients", "all", "--out", tmp_path / "e", "--json"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["n_slides"] == 16
    test_csv = tmp_path / "test.csv"
    pd.DataFrame({"image_id": ["s0", "s1", "s2", "s16"], "patient_id": ["p0", "p0", "p1", "p8"]}).to_csv(test_csv, index=False)
    out = invoke(["predict", "--features", imported["store"], "--model", run, "--manifest", test_csv, "--out", tmp_path / "p",
                  "--json"])
    assert out.exit_code == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["n_slides"] == 3 and summary["patients_without_tiles"] == ["p8"] and summary["heatmaps"] == []
    sub = pd.read_csv(tmp_path / "p" / "submission.csv", dtype={"patient_id": str})
    assert sub["patient_id"].tolist() == ["p0", "p1", "p8"] and sub.iloc[2][["CE", "LAA"]].tolist() == [0.5, 0.5]
    # the same numbers as evaluate gave for those slides
    ev = pd.read_csv(tmp_path / "e" / "predictions.csv").set_index("image_id")
    pr = pd.read_csv(tmp_path / "p" / "predictions.csv")
    pr = pr[pr["level"] == "slide"].set_index("image_id")
    assert np.allclose(pr.loc[["s0", "s1", "s2"], "p_LAA"], ev.loc[["s0", "s1", "s2"], "p_LAA"], atol=1e-6)
    # features made elsewhere cannot be made from slides: said before anything is tiled
    (tmp_path / "slides").mkdir()
    refused = invoke(["predict", tmp_path / "slides", "--model", run, "--out", tmp_path / "q"])
    assert_clean_error(refused, 2, ["made outside clotclf", "uni_v2", "import-features", "--features"])
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("case", ["encoder name disagrees with the files", "not an encoder name", "not an HDF5 file",
                                  "no coords", "features of two sizes", "no .h5 files", "manifest names no file",
                                  "tile-level model given --features", "both SLIDES and --features"])
def test_bad_inputs(case, imported, tmp_path):
    h5 = tmp_path / "h5"
    h5.mkdir()
    args = ["import-features", h5, "--encoder-name", "uni_v2", "--out", tmp_path / "f"]
    if case == "encoder name disagrees with the files":
        trident_file(h5 / "a_0.h5", *_slide(0, 3)[:2], encoder="conch_v15")
        mentions = ["--encoder-name uni_v2 disagrees with the files", "conch_v15"]
    elif case == "not an encoder name":
        trident_file(h5 / "a_0.h5", *_slide(0, 3)[:2])
        args[3] = "UNI 2"
        mentions = ["--encoder-name 'UNI 2' is not an encoder name"]
    elif case == "not an HDF5 file":
        (h5 / "a_0.h5").write_bytes(b"\x80\x04not hdf5")
        mentions = ["a_0.h5", "is not a readable HDF5 file"]
    elif case == "no coords":
        import h5py

        with h5py.File(h5 / "a_0.h5", "w") as fh:
            fh["features"] = np.zeros((3, D), np.float32)
        mentions = ["a_0.h5", "has no coords dataset", "TRIDENT / CLAM"]
    elif case == "features of two sizes":
        trident_file(h5 / "a_0.h5", *_slide(0, 3)[:2])
        trident_file(h5 / "a_1.h5", np.zeros((3, D + 1), np.float32), np.zeros((3, 2), np.int64))
        mentions = ["do not all hold features of one size", "a_0: 8", "a_1: 9"]
    elif case == "no .h5 files":
        mentions = ["holds no .h5 files"]
    elif case == "manifest names no file":
        trident_file(h5 / "a_0.h5", *_slide(0, 3)[:2])
        args += ["--manifest", imported["manifest"]]
        mentions = ["none of the 18 slide(s) of the manifest has a file", "s0.h5", "a_0.h5"]
    elif case == "tile-level model given --features":
        from test_predict import make_run

        run = make_run(tmp_path / "tile", 1)
        args = ["predict", "--features", imported["store"], "--model", run, "--out", tmp_path / "f"]
        mentions = ["is a tile-level model", "scores tile images", "instead of --features"]
    else:
        args = ["predict", tmp_path, "--features", imported["store"], "--model", tmp_path, "--out", tmp_path / "f"]
        mentions = ["give the slides (SLIDES) or", "one of the two"]
    assert_clean_error(invoke(args), 2, mentions)
    assert not (tmp_path / "f").exists()
