"""Bad inputs of `train`, `evaluate`, `predict` and `demo-data`: each one clear `Error:` line, the
documented exit code (2 user error, 3 partial batch, 130 interrupted), no traceback, and nothing
half-written left behind. Full and read-only disks are real (a tmpfs in a private mount namespace).

One parametrised case per input; each case builds its input, runs the command, and says what must
not be left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from badinput import Outcome, assert_clean_error, files_under, invoke, run_on_small_disk, temp_leftovers
from test_data import make_tileset
from test_predict import make_run, write_slide
from test_train import TINY_CCT

TINY = [a for k, v in TINY_CCT.items() for a in ("--backbone-opt", f"{k}={v}")]
FAST = ["--backbone", "cct", *TINY, "--epochs", "1", "--batch-size", "8", "--folds", "2", "--workers", "0",
        "--patience", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A TileSet, a run trained on it (with a test set), slides named by the STRIP AI convention, a
    prediction model, and slides whose names follow no convention."""
    root = tmp_path_factory.mktemp("bad")
    tiles = make_tileset(root / "tiles", n_patients=8, tiles_per_slide=3, size=32)
    trained = invoke(["train", "--tiles", tiles, "--out", root / "run", *FAST, "--test-fraction", "0.25", "-q"])
    assert trained.exit_code == 0, trained.stderr
    slides = root / "slides"
    slides.mkdir()
    write_slide(slides / "a_0.tif", ((300, 300, 180),), 1)
    write_slide(slides / "b_0.tif", ((400, 400, 220),), 3)
    odd = root / "odd"
    odd.mkdir()
    write_slide(odd / "slide-one.tif", ((300, 300, 180),), 1)
    return {"root": root, "tiles": tiles, "run": root / "run", "slides": slides, "odd": odd,
            "model": make_run(root / "pmodel", 1)}


def _manifest(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the cases
# each returns (outcome, exit code, words the Error line names, folder that must be left clean or None)


def case_train_out_is_a_file(d, tmp):
    (tmp / "run.txt").write_text("mine")
    return invoke(["train", "--tiles", d["tiles"], "--out", tmp / "run.txt", *FAST]), 2, ["is a file", "run.txt"], None


def case_train_tiles_is_a_run_directory(d, tmp):
    out = invoke(["train", "--tiles", d["run"], "--out", tmp / "r", *FAST])
    return out, 2, ["is a run directory", str(d["tiles"].resolve())], tmp / "r"


def case_train_tiles_is_a_symlink_loop(d, tmp):
    (tmp / "loop").symlink_to(tmp / "loop")
    return invoke(["train", "--tiles", tmp / "loop", "--out", tmp / "r", *FAST]), 2, ["symbolic link loop"], tmp / "r"


def case_train_tiles_missing(d, tmp):
    return invoke(["train", "--tiles", tmp / "nowhere", "--out", tmp / "r", *FAST]), 2, ["does not exist", "clotclf tile"], tmp / "r"


def case_train_without_patient_ids_and_require_patients(d, tmp):
    tiles = make_tileset(tmp / "t", n_patients=6, tiles_per_slide=2, size=32)
    index = pd.read_csv(tiles / "tiles.csv", dtype=str, keep_default_na=False)
    index["patient_id"] = index["image_id"]  # what `clotclf tile` does for a manifest without patient_id
    index.to_csv(tiles / "tiles.csv", index=False)
    out = invoke(["train", "--tiles", tiles, "--out", tmp / "r", *FAST, "--require-patients"])
    return out, 2, ["--require-patients", "6 of 6 slide(s)", "patient_id"], tmp / "r"


def case_train_split_file_with_a_patient_in_two_validation_folds(d, tmp):
    split = json.loads((d["run"] / "split.json").read_text())
    split["folds"][1]["val"].append(split["folds"][0]["val"][0])
    split["folds"][1]["train"].remove(split["folds"][0]["val"][0])
    (tmp / "split.json").write_text(json.dumps(split))
    out = invoke(["train", "--tiles", d["tiles"], "--out", tmp / "r", *FAST, "--split-file", tmp / "split.json"])
    return out, 2, ["validates in fold 0 and in fold 1"], tmp / "r"


def case_train_batch_size_0(d, tmp):
    return invoke(["train", "--tiles", d["tiles"], "--out", tmp / "r", *FAST, "--batch-size", "0"]), 2, ["batch_size"], tmp / "r"


def case_train_resume_with_another_world_size(d, tmp):
    shutil.copytree(d["run"], tmp / "r")
    last = tmp / "r" / "checkpoints" / "last.safetensors"
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(last), framework="pt") as fh:
        meta = fh.metadata()
    meta["clotclf_trainer_state"] = json.dumps(json.loads(meta["clotclf_trainer_state"]) | {"world_size": 4})
    save_file(load_file(str(last)), str(last), metadata=meta)
    out = invoke(["train", "--tiles", d["tiles"], "--out", tmp / "r", *FAST, "--test-fraction", "0.25", "--resume"])
    return out, 2, ["trained in 4 process(es)", "--nproc 4"], None


def case_train_disk_full(d, tmp):
    out, left = run_on_small_disk(["train", "--tiles", d["tiles"], "--out", tmp / "disk" / "r", *FAST], tmp / "disk", size_kb=96)
    assert not [p for p in left if p.endswith(".tmp")], left
    return out, 2, ["out of disk space", "--resume"], None


def case_train_read_only_out(d, tmp):
    out, left = run_on_small_disk(["train", "--tiles", d["tiles"], "--out", tmp / "ro" / "r", *FAST], tmp / "ro",
                                  readonly=True)
    assert left == []
    return out, 2, ["read-only", "--out"], None


def case_evaluate_batch_size_0(d, tmp):
    return invoke(["evaluate", d["run"], "--tiles", d["tiles"], "--out", tmp / "e", "--batch-size", "0"]), 2, ["--batch-size"], tmp / "e"


def case_evaluate_tiles_is_a_run_directory(d, tmp):
    return invoke(["evaluate", d["run"], "--tiles", d["run"], "--out", tmp / "e"]), 2, ["is a run directory"], tmp / "e"


def case_evaluate_disk_full(d, tmp):
    out, left = run_on_small_disk(["evaluate", d["run"], "--tiles", d["tiles"], "--out", tmp / "disk" / "e", "--workers", "0"],
                                  tmp / "disk", size_kb=48)
    assert left == [], left  # no partial output: all the results, or nothing
    return out, 2, ["out of disk space", "evaluation results", "needed"], None


def case_evaluate_read_only(d, tmp):
    out, left = run_on_small_disk(["evaluate", d["run"], "--tiles", d["tiles"], "--out", tmp / "ro" / "e", "--workers", "0"],
                                  tmp / "ro", readonly=True)
    assert left == []
    return out, 2, ["read-only"], None


def case_predict_batch_size_0(d, tmp):
    out = invoke(["predict", d["slides"], "--model", d["model"], "--out", tmp / "p", "--batch-size", "0"])
    return out, 2, ["--batch-size"], tmp / "p"  # refused before any tiling


def case_predict_missing_model_path(d, tmp):
    out = invoke(["predict", d["slides"], "--model", tmp / "no" / "such" / "run", "--out", tmp / "p"])
    line = assert_clean_error(out, 2, ["does not exist"])
    assert "install clotclf's registry" not in line, line  # it is installed: do not tell the user to install it
    return out, 2, ["registry name"], tmp / "p"


def case_predict_slides_without_patient_convention(d, tmp):
    out = invoke(["predict", d["odd"], "--model", d["model"], "--out", tmp / "p"])
    return out, 2, ["cannot tell which patient", "slide-one", "--manifest", "--slide-is-patient"], tmp / "p"


def case_predict_slides_folder_is_a_symlink_loop(d, tmp):
    (tmp / "loop").symlink_to(tmp / "loop")
    return invoke(["predict", tmp / "loop", "--model", d["model"], "--out", tmp / "p"]), 2, ["symbolic link loop"], tmp / "p"


def case_predict_tab_separated_manifest(d, tmp):
    m = _manifest(tmp / "m.tsv", "image_id\tpatient_id\na_0\ta\n")
    out = invoke(["predict", d["slides"], "--model", d["model"], "--out", tmp / "p", "--manifest", m])
    return out, 2, ["tab-separated, not comma-separated"], tmp / "p"


def case_predict_manifest_row_with_a_field_too_many(d, tmp):
    m = _manifest(tmp / "m.csv", "image_id,patient_id,label\na_0,a,CE\nb_0,b,LAA,extra\n")
    out = invoke(["predict", d["slides"], "--model", d["model"], "--out", tmp / "p", "--manifest", m])
    return out, 2, ["line 3 has 4 fields but the header has 3", "quotes"], tmp / "p"


def case_predict_manifest_symlink_loop(d, tmp):
    (tmp / "m.csv").symlink_to(tmp / "m.csv")
    out = invoke(["predict", d["slides"], "--model", d["model"], "--out", tmp / "p", "--manifest", tmp / "m.csv"])
    return out, 2, ["symbolic link loop"], tmp / "p"


def case_predict_a_slide_that_cannot_be_read(d, tmp):
    slides = tmp / "s"
    shutil.copytree(d["slides"], slides)
    (slides / "c_0.tif").write_bytes(b"II*\x00 not really a TIFF")
    out = invoke(["predict", slides, "--model", d["model"], "--out", tmp / "p", "-q", "--no-heatmaps"])
    sub = pd.read_csv(tmp / "p" / "submission.csv", dtype={"patient_id": str})
    assert list(sub["patient_id"]) == ["a", "b", "c"]  # written, every patient in it
    assert sub.set_index("patient_id").loc["c"].tolist() == [0.5, 0.5]
    assert "c" in out.stderr and "NO USABLE TILE" in out.stderr  # listed although -q
    return out, 3, ["1 of 3 slide(s) could not be read", "c_0"], None


def case_predict_read_only_out(d, tmp):
    out, left = run_on_small_disk(["predict", d["slides"], "--model", d["model"], "--out", tmp / "ro" / "p"], tmp / "ro",
                                  readonly=True)
    assert left == []
    return out, 2, ["read-only", "predictions"], None


def case_predict_disk_full(d, tmp):
    out, left = run_on_small_disk(["predict", d["slides"], "--model", d["model"], "--out", tmp / "disk" / "p"], tmp / "disk",
                                  size_kb=64)
    assert not [p for p in left if p.endswith(".tmp")], left
    return out, 2, ["out of disk space"], None


def case_demo_data_overwrite_of_a_folder_that_is_not_a_demo(d, tmp):
    mine = tmp / "mine"
    (mine / "slides").mkdir(parents=True)
    (mine / "slides" / "patient7.svs").write_bytes(b"precious")
    (mine / "train.csv").write_text("image_id,label\npatient7,CE\n")
    out = invoke(["demo-data", mine, "--patients", "4", "--overwrite"])
    assert (mine / "slides" / "patient7.svs").read_bytes() == b"precious" and (mine / "train.csv").is_file()
    return out, 2, ["does not hold a clotclf demo cohort"], None


def case_demo_data_disk_full(d, tmp):
    out, left = run_on_small_disk(["demo-data", tmp / "disk" / "demo", "--patients", "4", "-q"], tmp / "disk", size_kb=512)
    assert not [p for p in left if p.endswith(".tmp")] and "demo/train.csv" not in " ".join(left), left
    return out, 2, ["out of disk space", "demo cohort", "needed", "--overwrite"], None


def case_demo_data_read_only(d, tmp):
    out, left = run_on_small_disk(["demo-data", tmp / "ro" / "demo", "--patients", "4", "-q"], tmp / "ro", readonly=True)
    assert left == []
    return out, 2, ["read-only", "demo"], None


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, data, tmp_path):
    outcome, code, mentions, clean = CASES[name](data, tmp_path)
    assert_clean_error(outcome, code, mentions)
    if clean is not None:
        assert files_under(clean) == [], f"{clean} was left with {files_under(clean)}"
    assert temp_leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- what must NOT be refused, and what is said


def test_resume_accepts_the_same_tileset_given_as_an_absolute_path(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data["root"])
    first = invoke(["train", "--tiles", "tiles", "--out", tmp_path / "r", *FAST, "--epochs", "2", "--test-fraction", "0.25",
                    "-q"])
    assert first.exit_code == 0, first.stderr
    again = invoke(["train", "--tiles", str(data["tiles"].resolve()), "--out", tmp_path / "r", *FAST, "--epochs", "2",
                    "--test-fraction", "0.25", "--resume", "-q"])
    assert again.exit_code == 0, again.stderr
    # from another folder, the resume command the Ctrl-C message gives (the run's training.yaml) works too
    monkeypatch.chdir(tmp_path)
    elsewhere = invoke(["train", "--config", tmp_path / "r" / "training.yaml", "--out", tmp_path / "r", "--resume", "-q"])
    assert elsewhere.exit_code == 0, elsewhere.stderr


def test_training_without_patient_ids_warns_in_capitals(data, tmp_path):
    tiles = make_tileset(tmp_path / "t", n_patients=6, tiles_per_slide=2, size=32)
    index = pd.read_csv(tiles / "tiles.csv", dtype=str, keep_default_na=False)
    index.loc[index["image_id"].isin(["ps00_0", "ps01_0"]), "patient_id"] = index["image_id"]
    index.to_csv(tiles / "tiles.csv", index=False)
    out = invoke(["train", "--tiles", tiles, "--out", tmp_path / "r", *FAST, "-q"])
    assert out.exit_code == 0, out.stderr
    assert "Warning: PATIENT LEAKAGE POSSIBLE: 2 of 6 slide(s) have no patient_id" in out.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["data"]["n_slides_without_patient_id"] == 2


def test_training_names_the_patients_it_lost_to_failed_slides(data, tmp_path):
    tiles = make_tileset(tmp_path / "t", n_patients=8, tiles_per_slide=2, size=32)
    meta = json.loads((tiles / "tileset.json").read_text())
    meta["slides"]["ps09_0"] = {"status": "failed", "reason": "cannot open: not a TIFF", "n_tiles": 0, "patient_id": "p09"}
    meta["slides"]["ps03_1"] = {"status": "no_tissue", "reason": "no tissue found", "n_tiles": 0, "patient_id": "p03"}
    (tiles / "tileset.json").write_text(json.dumps(meta))
    out = invoke(["train", "--tiles", tiles, "--out", tmp_path / "r", *FAST, "-q"])
    assert out.exit_code == 0, out.stderr
    warning = next(line for line in out.stderr.splitlines() if "gave no tiles" in line)
    assert "failed: ps09_0" in warning and "no tissue: ps03_1" in warning
    assert "LOST PATIENT(S), trained and scored on nowhere: p09" in warning and "other slides only: p03" in warning
    data_record = json.loads((tmp_path / "r" / "config.json").read_text())["data"]
    assert data_record["n_slides_without_tiles"] == 2 and data_record["n_patients_lost"] == 1


def test_ctrl_c_in_train_says_what_was_kept_and_how_to_resume(data, tmp_path):
    cmd = [sys.executable, "-m", "clotclf_core.cli", "train", "--tiles", str(data["tiles"]), "--out", str(tmp_path / "r"),
           *FAST, "--epochs", "50", "-q"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "CLOTCLF_PROGRESS": "off"})
    deadline = time.monotonic() + 120
    while not (tmp_path / "r" / "checkpoints" / "last.safetensors").is_file():
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[1][-2000:]
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=60)
    line = assert_clean_error(Outcome(child.returncode, stdout, stderr), 130, ["interrupted", "--resume", "epoch"])
    assert str(tmp_path / "r") in line and "training.yaml" in line
    assert temp_leftovers(tmp_path) == []
