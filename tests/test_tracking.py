"""`clotclf train --track mlflow|tensorboard`, with the real libraries (the optional extras; `make
test` installs them): parameters, per-epoch metrics, the held-out headline, plots and the run
directory, and nothing that names this machine's paths or user."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
from badinput import assert_clean_error, invoke
from tilesets import make_feature_store, make_mil_tileset

import clotclf

EPOCHS = 2
SETTINGS = dict(aggregator="mean", aggregator_options={"hidden": 8}, epochs=EPOCHS, folds=2, batch_size=2, workers=0,
                patience=0, device="cpu")


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    d = tmp_path_factory.mktemp("track")
    return make_feature_store(make_mil_tileset(d / "tiles"), d / "features")


def _files_text(root: Path, skip=("meta.yaml",)) -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in root.rglob("*") if p.is_file() and p.name not in skip)


def test_mlflow_and_tensorboard_get_params_epochs_headline_plots_and_the_run(features, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the clotclf[mlflow] extra is not installed")
    pytest.importorskip("tensorboard", reason="the clotclf[tensorboard] extra is not installed")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())  # honoured over the default ./mlruns
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    run = clotclf.train(features=str(features), out=str(tmp_path / "runs" / "r1"), track=("mlflow", "tensorboard"), **SETTINGS)
    assert not (tmp_path / "mlruns").exists()
    headline = run.headline

    client = MlflowClient(tracking_uri=store.as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("clotclf").experiment_id])
    assert found.info.run_name == "r1" and found.info.status == "FINISHED"
    params = found.data.params
    assert params["aggregator"] == "mean" and params["epochs"] == str(EPOCHS) and params["aggregator_options.hidden"] == "8"
    assert params["out"] == "r1" and params["features"] == "features" and params["synthetic"] == str(run.config["data"]["synthetic"])
    history = client.get_metric_history(found.info.run_id, "val_loss")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))
    assert found.data.metrics["headline/weighted_log_loss"] == pytest.approx(headline["weighted_log_loss"])
    assert found.data.tags["clotclf.headline.on"] == headline["on"]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "run")}
    assert {"run/config.json", "run/metrics.json", "run/model.safetensors", "run/plots"} <= artifacts
    assert "run/checkpoints" not in artifacts and "run/tensorboard" not in artifacts
    # nothing names this machine's folders or its user (MLflow's own meta.yaml must say where its store is)
    user = getpass.getuser()
    assert found.info.user_id == "unknown" and user not in found.data.tags.values()
    text = _files_text(store)
    for local in (str(tmp_path), str(Path.home())):
        assert local not in text
    assert json.loads((store / found.info.experiment_id / found.info.run_id / "artifacts" / "run" / "config.json")
                      .read_text())["features"]["path"] == "features"

    board = EventAccumulator(str(tmp_path / "runs" / "r1" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in board.Scalars("val_loss")] == list(range(1, EPOCHS + 1))
    assert any(t.startswith("plots/") for t in board.Tags()["images"])
    hparams = [p for p in (tmp_path / "runs" / "r1" / "tensorboard").rglob("events.out.tfevents.*")]
    assert hparams and all(".clotclf." in p.name for p in hparams)  # renamed: no hostname, no pid


def test_the_default_mlflow_store_is_mlruns_in_the_current_folder(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the clotclf[mlflow] extra is not installed")
    from clotclf_core.training.tracking import MlflowTracker

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    tracker = MlflowTracker("r", {"lr": "0.001", "out": "r"}, {})
    tracker.finish(tmp_path, None)
    assert tracker.uri == (tmp_path / "mlruns").as_uri() and (tmp_path / "mlruns").is_dir()


def test_a_missing_extra_is_refused_before_anything_runs(features, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    out = invoke(["train", "--features", features, "--aggregator", "mean", "--track", "mlflow", "--out", tmp_path / "r"])
    assert_clean_error(out, 2, ["--track mlflow needs mlflow", "pip install 'clotclf[mlflow]'"])
    assert not (tmp_path / "r").exists()
