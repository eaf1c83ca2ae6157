"""`clotclf train` and `clotclf evaluate` end to end, and their bad inputs: one line, exit code 2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_data import make_tileset
from test_train import TINY_CCT

from clotclf_core.cli.main import cli
from clotclf_core.plugin_manager import reset_manager

TINY = [arg for k, v in TINY_CCT.items() for arg in ("--backbone-opt", f"{k}={v}")]
FAST = ["--backbone", "cct", *TINY, "--epochs", "1", "--batch-size", "8", "--folds", "3", "--workers", "0", "--patience", "0"]


def run(*args):
    reset_manager()
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(res, *phrases):
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiles = make_tileset(root / "tiles", n_patients=8, tiles_per_slide=3, size=32)
    res = run("train", "--tiles", tiles, "--out", root / "run", *FAST, "--test-fraction", "0.25", "--json",
              "--dataset-name", "STRIP AI stand-in (synthetic)")
    assert res.exit_code == 0, res.output
    return root, tiles, json.loads(res.output)


def test_train_json_summary_and_run_directory(trained):
    root, _, summary = trained
    assert summary["run_dir"] == str(root / "run") and summary["labels"] == ["CE", "LAA"]
    fold = summary["folds"][0]
    assert set(fold["val"]) == {"tile", "slide", "patient"} and fold["test"]["patient"]["n"] == 2
    assert (root / "run" / "model.safetensors").is_file() and (root / "run" / "README.md").is_file()


def test_train_config_file_with_cli_override(trained, tmp_path):
    _, tiles, _ = trained
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(f"tiles: {tiles}\nbackbone: cct\nbackbone_options: {json.dumps(TINY_CCT)}\nepochs: 3\n"
                   "batch_size: 8\nfolds: 3\nworkers: 0\n")
    res = run("train", "--config", cfg, "--epochs", "1", "--out", tmp_path / "r", "--quiet")
    assert res.exit_code == 0, res.output
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())["training"]
    assert resolved["epochs"] == 1 and resolved["batch_size"] == 8  # CLI over YAML, YAML over defaults
    assert (tmp_path / "r" / "training.yaml").is_file()


def test_evaluate_scores_only_unseen_patients_by_default(trained):
    root, tiles, _ = trained
    config = json.loads((root / "run" / "config.json").read_text())
    unseen = len(config["split"]["val"]) + len(config["split"]["test"])
    res = run("evaluate", root / "run", "--tiles", tiles, "--workers", "0", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["patients_scored"] == unseen and report["seen_in_training"] == len(config["split"]["train"])
    # test and validation patients are scored apart, never pooled; the held-out test patients lead
    groups = report["groups"]
    assert list(groups) == ["test", "validation"]
    assert groups["test"]["metrics"]["patient"]["n"] == len(config["split"]["test"])
    assert groups["validation"]["metrics"]["patient"]["n"] == len(config["split"]["val"])
    assert "early stopping" in groups["validation"]["what"]
    assert report["headline"]["on"] == "test" and report["metrics"] == groups["test"]["metrics"]
    assert report["headline"]["baseline_weighted_log_loss"] == 0.6931
    assert (root / "run" / "eval-tiles" / "metrics.json").is_file()
    assert (root / "run" / "eval-tiles" / "plots" / "confusion_patient_evaluate_test.png").is_file()
    assert (root / "run" / "eval-tiles" / "plots" / "confusion_patient_evaluate_validation.png").is_file()
    res = run("evaluate", root / "run", "--tiles", tiles, "--workers", "0", "--patients", "all", "--out", root / "all", "-q")
    assert res.exit_code == 0 and json.loads((root / "all" / "metrics.json").read_text())["patients_scored"] == 8
    res = run("evaluate", root / "run", "--tiles", tiles, "--workers", "0", "--patients", "test", "--out", root / "t")
    assert "2 patient(s)" in res.output and "patient" in res.output


def test_evaluate_on_another_cohort_scores_everyone(trained, tmp_path):
    root, _, _ = trained
    other = make_tileset(tmp_path / "other", n_patients=4, tiles_per_slide=2, size=48, prefix="q", seed=5)
    res = run("evaluate", root / "run", "--tiles", other, "--workers", "0", "--json")
    report = json.loads(res.output)
    assert report["patients_scored"] == 4 and report["seen_in_training"] == 0
    assert "resized" in report["note"]  # 48-px tiles for a 32-px model


def test_evaluate_bad_inputs(trained, tmp_path):
    root, tiles, _ = trained
    one_line_error(run("evaluate", tmp_path / "nope", "--tiles", tiles), "is not a run directory: the path does not exist")
    one_line_error(run("evaluate", root / "run", "--tiles", tmp_path / "missing"), "does not exist")
    strange = make_tileset(tmp_path / "strange", n_patients=2, tiles_per_slide=1, labels=("CE", "Other"), prefix="z")
    one_line_error(run("evaluate", root / "run", "--tiles", strange), "label(s) Other that the model does not know")
    # a cross-validation folder is evaluated as its fold ensemble; one that is not complete is refused with the fix
    cv = tmp_path / "cv"
    (cv / "fold_0").mkdir(parents=True)
    one_line_error(run("evaluate", cv, "--tiles", tiles), "cross-validation run that did not finish", "--resume")
    (cv / "cv.json").write_text("{}")
    one_line_error(run("evaluate", cv, "--tiles", tiles), "lists no fold folders")
    (cv / "cv.json").write_text('{"folds": ["fold_0"]}')
    one_line_error(run("evaluate", cv, "--tiles", tiles), "lists fold_0, which has no model.safetensors", "--resume")
    (cv / "cv.json").write_text('{"folds": ["../run"]}')
    one_line_error(run("evaluate", cv, "--tiles", tiles), "lists no fold folders")


def test_evaluate_refuses_when_every_patient_was_trained_on():
    import pandas as pd

    from clotclf_core.plugin import ClotclfError
    from clotclf_core.scoring.evaluate import select_patients

    index = pd.DataFrame({"patient_id": ["a", "a", "b"], "image_id": ["1", "2", "3"]})
    config = {"split": {"train": ["a", "b"], "val": [], "test": []}}
    with pytest.raises(ClotclfError, match="every patient of this TileSet was used to train"):
        select_patients(index, config, "unseen")
    with pytest.raises(ClotclfError, match="has no val patients"):
        select_patients(index, config, "val")
    kept, info = select_patients(index, config, "all")
    assert len(kept) == 3 and info["seen_in_training"] == 2


def test_evaluate_of_a_published_model_with_a_redacted_split():
    """A pulled model's split is counts and a hash: which patients it trained on is unknown, so
    "unseen" cannot be promised; --patients all is the user's own call."""
    import pandas as pd

    from clotclf_core.plugin import ClotclfError
    from clotclf_core.scoring.evaluate import select_patients
    from clotclf_registry.redact import redact_split

    index = pd.DataFrame({"patient_id": ["a", "a", "b"], "image_id": ["1", "2", "3"]})
    config, n = redact_split({"split": {"train": ["a"], "val": ["b"], "test": []}, "weights_sha256": "0" * 64})
    assert n == 2 and config["split"]["redacted"] is True
    for subset in ("unseen", "val", "test"):
        with pytest.raises(ClotclfError, match="split was redacted"):
            select_patients(index, config, subset)
    kept, _ = select_patients(index, config, "all")
    assert len(kept) == 3


def test_train_bad_inputs(trained, tmp_path):
    root, tiles, _ = trained
    one_line_error(run("train", "--tiles", tmp_path / "missing", *FAST, "--out", tmp_path / "a"), "does not exist")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochz: 3\n")
    one_line_error(run("train", "--config", cfg, "--tiles", tiles), "unknown option 'epochz'", "did you mean 'epochs'")
    one_line_error(run("train", "--tiles", tiles, *FAST, "--fold", "x"), "--fold 'x' must be a fold number")
    one_line_error(run("train", "--tiles", tiles, *FAST, "--backbone-opt", "num_layers=two", "--out", tmp_path / "b"),
                   "num_layers")
    one_line_error(run("train", "--tiles", tiles, *FAST, "--folds", "9", "--out", tmp_path / "c"),
                   "8 patient(s) cannot be split into 9 folds")
    one_line_error(run("train", "--tiles", tiles, *FAST, "--out", root / "run", "--resume", "--lr", "0.5"),
                   "started with other settings")
    one_line_error(run("train", "--tiles", tiles, *FAST, "--nproc", "1"), "--nproc must be at least 2")


def test_a_bad_backbone_option_leaves_nothing_that_blocks_the_corrected_command(trained, tmp_path):
    _, tiles, _ = trained
    out = tmp_path / "r1"
    one_line_error(run("train", "--tiles", tiles, *FAST, "--out", out, "--backbone-opt", "num_layers=99x"), "num_layers")
    one_line_error(run("train", "--tiles", tiles, *FAST, "--out", out, "--backbone-opt", "embed_dim=31"),
                   "embed_dim 31 is not divisible by num_heads 2")
    assert not out.exists()
    res = run("train", "--tiles", tiles, *FAST, "--out", out, "--quiet")
    assert res.exit_code == 0, res.output


def test_data_parallel_launch_refuses_bad_runs_before_starting_processes(trained, tmp_path):
    _, tiles, _ = trained
    out = tmp_path / "ddp"
    one_line_error(run("train", "--tiles", tiles, *FAST, "--folds", "9", "--out", out, "--nproc", "2"),
                   "8 patient(s) cannot be split into 9 folds")
    one_line_error(run("train", "--tiles", tiles, *FAST, "--test-fraction", "0.6", "--out", out, "--nproc", "2"),
                   "test_fraction 0.6 would hold out more patients than are trained on")
    assert not out.exists()


def test_train_with_unlabelled_slides_says_what_it_left_out(tmp_path):
    import pandas as pd

    tiles = make_tileset(tmp_path / "tiles", n_patients=8, tiles_per_slide=2, size=32)
    index = pd.read_csv(tiles / "tiles.csv", dtype=str, keep_default_na=False)
    index.loc[index["patient_id"] == "p07", "label"] = ""  # a manifest row without a label: `clotclf tile` keeps it
    index.to_csv(tiles / "tiles.csv", index=False)
    res = CliRunner().invoke(cli, ["train", "--tiles", str(tiles), *FAST, "--folds", "2", "--out", str(tmp_path / "r"),
                                   "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "Warning: 1 slide(s) of the TileSet have no label" in res.stderr
    summary = json.loads(res.stdout)  # the warning goes to stderr: stdout stays JSON
    assert "left out of training" in summary["notes"][0]
    assert json.loads((tmp_path / "r" / "config.json").read_text())["data"]["n_unlabelled_patients_left_out"] == 1


def test_evaluate_leaves_unlabelled_slides_out_and_says_so(trained, tmp_path):
    import pandas as pd

    root, _, _ = trained
    tiles = make_tileset(tmp_path / "tiles", n_patients=8, tiles_per_slide=3, size=32)  # the fixture's patients
    index = pd.read_csv(tiles / "tiles.csv", dtype=str, keep_default_na=False)
    index.loc[index["patient_id"] == "p07", "label"] = ""
    index.to_csv(tiles / "tiles.csv", index=False)
    res = run("evaluate", root / "run", "--tiles", tiles, "--workers", "0", "--patients", "all", "--out", tmp_path / "e")
    assert res.exit_code == 0, res.output
    assert "1 slide(s) without a label left out" in res.output
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["patients_scored"] == 7 and report["unlabelled_slides_left_out"] == 1
    assert "ps07_0" not in set(pd.read_csv(tmp_path / "e" / "predictions.csv")["image_id"])


def test_the_synthetic_mark_travels_from_the_manifest_to_list_models(tmp_path):
    """demo-data's `synthetic` manifest column -> tileset.json -> config.json / metrics.json -> model card -> list-models."""
    import pandas as pd
    from test_predict import write_slide

    slides = tmp_path / "slides"
    slides.mkdir()
    rows = []
    for p in range(4):
        name = f"{p:06x}_0"
        write_slide(slides / f"{name}.tif", ((300 + 40 * p, 300, 200),), p)
        rows.append({"image_id": name, "center_id": "1", "patient_id": f"{p:06x}", "image_num": "0",
                     "label": ("CE", "LAA")[p % 2], "synthetic": "true"})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    res = run("tile", slides, "--manifest", tmp_path / "train.csv", "--out", tmp_path / "tiles", "--downsample", "2",
              "--tile-size", "100", "--train-size", "32", "--thumbnail-size", "256", "-q")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "tiles" / "tileset.json").read_text())
    assert meta["synthetic"] is True and all(s["synthetic"] is True for s in meta["slides"].values())

    res = run("train", "--tiles", tmp_path / "tiles", "--out", tmp_path / "run", *FAST, "--folds", "2", "-q")
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["synthetic"] is True
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["headline"]["synthetic"] is True
    card = (tmp_path / "run" / "README.md").read_text()
    assert "synthetic-data" in card and "Synthetic data" in card

    (tmp_path / "registry").mkdir()
    registry = f"file://{tmp_path / 'registry'}"
    res = run("push", tmp_path / "run", "--repo", "synthetic-cct", "--registry", registry, "-q")
    assert res.exit_code == 0, res.output
    res = run("list-models", "--registry", registry)
    assert res.exit_code == 0 and "SYNTHETIC" in res.output, res.output
    res = run("list-models", "--registry", registry, "--json")
    assert json.loads(res.output)[0]["synthetic"] is True


def test_the_held_out_result_comes_first_everywhere(trained):
    root, _, summary = trained
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    keys = list(metrics)
    assert keys[:2] == ["headline", "test"] and keys.index("test") < keys.index("val")  # (per-centre tables between)
    head = metrics["headline"]
    assert head["on"] == "test" and head["n_patients"] == metrics["test"]["patient"]["n"] == 2
    assert head["weighted_log_loss"] == metrics["test"]["patient"]["weighted_log_loss"]
    assert head["baseline_weighted_log_loss"] == 0.6931 and "early stopping" in metrics["val_note"]
    assert metrics["monitor"] == "patient_weighted_log_loss"  # early stopping watches the competition metric
    body = (root / "run" / "README.md").read_text()
    results = body[body.index("## Results"):]
    assert results.index("Held-out test patients") < results.index("Validation patients (what early stopping saw")
    assert "constant 0.5 / 0.5 (baseline) | 0.693" in results
    from clotclf_core.models.card import read_model_card

    meta, _ = read_model_card(body)
    assert meta["model-index"][0]["results"][0]["dataset"]["split"] == "test"
    # --dataset-name, not the TileSet folder's name ('tiles'), in config.json and the card
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "STRIP AI stand-in (synthetic)"
    assert json.loads((root / "run" / "config.json").read_text())["data"]["dataset"] == "STRIP AI stand-in (synthetic)"
    assert "Trained and validated on **STRIP AI stand-in (synthetic)**" in body
    one_line_error(run("train", "--tiles", root / "tiles", "--dataset-name", "a\nb", *FAST), "one line of visible text")
    res = run("train", "--tiles", root / "tiles", "--out", root / "noheld", *FAST)
    assert res.exit_code == 0, res.output
    first = res.output.strip().splitlines()[0]
    assert first.startswith("Validation patients only, the ones early stopping chose the epoch on (optimistic)")
    assert "equal probabilities score 0.693" in first
