"""Multiple-instance training (`clotclf train --features F --aggregator abmil`, and end to end with
--tiles --backbone): the run directory, what config.json records, bit-identical resume and worker
counts, cross-validation, bag sampling, the class-balanced loss, and a registry round trip.

A tiny aggregator on a 16-slide feature store of a 1-block timm ViT (16 features); each run takes a
second or two."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from tilesets import TINY_ABMIL, TINY_TIMM, make_feature_store, make_mil_tileset

from clotclf_core.models.saved import load_model
from clotclf_core.plugin import load_state
from clotclf_core.plugin.errors import Interrupted
from clotclf_core.training.checkpoints import state_digest
from clotclf_core.training.run import train
from clotclf_core.training.settings import resolve_settings

TINY_CCT = {"variant": "cct_2_3x2_32", "img_size": 32, "num_layers": 1, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return make_mil_tileset(tmp_path_factory.mktemp("mil") / "tiles")


@pytest.fixture(scope="module")
def features(tiles):
    return make_feature_store(tiles, tiles.parent / "features")


def settings(out, **over):
    values = {"out": str(out), "aggregator": "abmil", "aggregator_options": TINY_ABMIL, "epochs": 2, "folds": 2,
              "batch_size": 2, "bag_size": 4, "workers": 0, "lr": 2e-3, "patience": 0, "test_fraction": 0.25,
              "warmup_epochs": 0.0, "threads": 1} | over
    return resolve_settings(None, values)


def _digest(run):
    history = pd.read_csv(run / "history.csv").drop(columns=["images_per_s", "seconds"])
    return (state_digest(load_state(run / "model.safetensors")), history.to_csv(index=False),
            (run / "predictions_val.csv").read_text(), (run / "predictions_test.csv").read_text())


def test_a_run_on_features_records_the_aggregator_encoder_and_recipe(features, tmp_path):
    out = tmp_path / "run"
    summary = train(settings(out, features=str(features)), progress=False)
    for name in ("model.safetensors", "config.json", "metrics.json", "history.csv", "README.md", "predictions_val.csv",
                 "predictions_test.csv", "plots/confusion_slide_val.png", "plots/confusion_patient_test.png",
                 "plots/roc_patient_val.png", "plots/history.png", "checkpoints/last.safetensors"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    store = json.loads((features / "features.json").read_text())
    model = config["model"]
    assert model["kind"] == "mil" and model["backbone"] is None and model["head"] is None
    assert model["aggregator"] == "abmil" and model["aggregator_options"] == {**TINY_ABMIL, "gated": True, "dropout": 0.1}
    assert config["plugins"]["aggregator"] == {"name": "abmil", "plugin": "mil", "distribution": "clotclf",
                                               "version": config["plugins"]["aggregator"]["version"]}
    assert model["encoder"] == store["encoder"]  # the whole record: backbone, options, provenance, sha256, normalisation
    assert model["mean"] == store["encoder"]["mean"] and model["input_size"] == store["encoder"]["input_size"]
    assert config["plugins"]["encoder"]["name"] == "timm"
    assert config["tileset"]["settings"] == store["tileset"]["settings"]  # the tiling recipe predict repeats
    assert config["features"]["path"] == str(features.resolve()) and config["data"]["bag_size"] == 4
    # the weights file holds the aggregator and the standardisation only: never the encoder (foundation-model licences)
    state = load_state(out / "model.safetensors")
    assert model["standardise"] is True and config["training"]["standardise"] == "on"
    assert all(k.startswith("aggregator.") for k in state if k not in ("feature_mean", "feature_std"))
    # the statistics are the fold's training tiles' (capped bags do not matter: every tile of a training slide)
    from clotclf_core.features.store import FeatureStore as _Store

    split = config["split"]
    train_rows = _Store(features).index[lambda f: f["patient_id"].isin(split["train"])]
    feats = np.concatenate([_Store(features).features(i)[g["feature_row"].to_numpy()].astype(np.float64)
                            for i, g in train_rows.groupby("image_id", sort=False)])
    assert np.allclose(state["feature_mean"].numpy(), feats.mean(0), atol=1e-5)
    assert np.allclose(state["feature_std"].numpy(), feats.std(0), rtol=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["headline"]["on"] == "test" and set(metrics["val"]) == set(metrics["test"]) == {"slide", "patient"}
    assert summary["folds"][0]["headline"]["n_patients"] == 2
    assert "multiple-instance" in (out / "README.md").read_text()
    # the saved model reproduces the validation predictions from the stored features
    from clotclf_core.features.store import FeatureStore
    from clotclf_core.models.aggregate import run_aggregator

    loaded, fs = load_model(out), FeatureStore(features)
    preds = pd.read_csv(out / "predictions_val.csv", dtype={"image_id": str})
    assert list(preds.columns[:5]) == ["image_id", "patient_id", "center_id", "label", "n_tiles"]
    for row in preds.itertuples():
        with torch.no_grad():
            x = torch.from_numpy(fs.features(row.image_id).astype(np.float32))[None]
            logits, _ = run_aggregator(loaded.aggregator, (x - loaded.feature_mean) / loaded.feature_std)
        assert float(torch.softmax(logits, 1)[0, 1]) == pytest.approx(row.p_LAA, abs=1e-5)
    assert row.n_tiles == len(fs.features(row.image_id))  # scoring uses every tile, not a bag of 4


def test_resume_after_an_interruption_is_bit_identical(features, tmp_path):
    s = settings(tmp_path / "straight", features=str(features), epochs=3, loss="weighted_log_loss")
    train(s, progress=False)

    def stop(epoch, trainer):
        if epoch == 1:
            raise KeyboardInterrupt

    cut = settings(tmp_path / "cut", features=str(features), epochs=3, loss="weighted_log_loss")
    with pytest.raises(Interrupted, match="--resume"):
        train(cut, progress=False, after_train_epoch=stop)
    train(cut, resume=True, progress=False)
    assert _digest(tmp_path / "cut") == _digest(tmp_path / "straight")


def test_cross_validation_of_a_mil_run(features, tmp_path):
    out = tmp_path / "cv"
    summary = train(settings(out, features=str(features), aggregator="mean", aggregator_options={"hidden": 8},
                             fold="all", bag_size=None), progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["headline"]["on"] == "test_ensemble" and set(metrics["oof"]) == {"slide", "patient"}
    assert set(metrics["cv"]) == {"slide", "patient"} and summary["oof"]["patient"]["n"] == 6
    oof = pd.read_csv(out / "predictions_oof.csv")
    assert len(oof) == oof["image_id"].nunique() and oof["patient_id"].nunique() == 6  # one row per slide
    for k in (0, 1):
        assert load_model(out / f"fold_{k}").config.aggregator == "mean"


def test_end_to_end_bags_are_the_same_whatever_the_worker_count(tiles, tmp_path):
    def run(name, workers):
        s = settings(tmp_path / name, tiles=str(tiles), backbone="cct", backbone_options=TINY_CCT, aggregator="mean",
                     aggregator_options={"hidden": 8}, bag_size=6, workers=workers)
        return train(s, progress=False)

    summary = run("w0", 0)
    run("w2", 2)
    assert _digest(tmp_path / "w0") == _digest(tmp_path / "w2")
    state = load_state(tmp_path / "w0" / "model.safetensors")
    assert any(k.startswith("backbone.") for k in state) and any(k.startswith("aggregator.") for k in state)
    config = json.loads((tmp_path / "w0" / "config.json").read_text())
    assert config["model"]["backbone"] == "cct" and config["model"]["encoder"] is None
    assert any("fewer tiles than --bag-size 6" in n and "padded with a mask" in n for n in summary["notes"])


def test_training_bags_are_drawn_per_epoch_without_repeats_and_padded():
    from clotclf_core.features.bags import FeatureBagLoader, FeatureBags, Slides, bag_rows

    assert list(bag_rows(3, 8, seed=1)) == [0, 1, 2]  # fewer tiles than the bag: all of them, no repeats
    picked = bag_rows(50, 8, seed=1)
    assert len(set(picked)) == 8 and list(picked) == sorted(picked) and list(bag_rows(50, 8, seed=1)) == list(picked)
    assert list(bag_rows(50, 8, seed=2)) != list(picked)

    class Store:  # a feature store in memory: slide i has tiles i*10 + 0..n-1 as its single feature
        num_features = 1

        def features(self, image_id):
            i = int(image_id[1:])
            return np.arange(i * 10, i * 10 + [3, 12][i], dtype=np.float16)[:, None]

    index = pd.DataFrame({"image_id": ["s0"] * 3 + ["s1"] * 12, "patient_id": ["a"] * 3 + ["b"] * 12,
                          "label": ["CE"] * 3 + ["LAA"] * 12, "feature_row": list(range(3)) + list(range(12))})
    data = FeatureBags.__new__(FeatureBags)
    data.store, data.index = Store(), index
    slides = Slides(index, ["a", "b"], ["CE", "LAA"])
    loader = FeatureBagLoader(data, slides, bag_size=5, batch_size=2, seed=7)
    epochs = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        (bags, mask, targets), = list(loader)
        assert bags.shape == (2, 5, 1) and mask.dtype == torch.bool
        by_target = {int(t): (b[m].flatten().tolist(), int(m.sum())) for b, m, t in zip(bags, mask, targets)}
        assert by_target[0] == ([0.0, 1.0, 2.0], 3)  # the short slide: all 3 tiles, 2 positions masked
        values, n = by_target[1]
        assert n == 5 and len(set(values)) == 5 and all(10 <= v < 22 for v in values)
        epochs.append(values)
    assert epochs[0] != epochs[1]  # drawn anew each epoch


def test_weighted_log_loss_is_the_competition_metric_on_the_batch():
    from clotclf_core.scoring import metrics
    from clotclf_core.training.losses import weighted_log_loss

    logits = torch.randn(9, 2, requires_grad=True)
    y = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1])
    loss = weighted_log_loss(logits, y)
    expected = metrics.weighted_log_loss(y.numpy(), torch.softmax(logits, 1).detach().numpy())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # each class weighs the same: the two LAA samples together pull as hard as the seven CE ones
    grad = logits.grad[:, 1] - logits.grad[:, 0]
    assert float(grad[7:].abs().sum()) == pytest.approx(float(grad[:7].abs().sum()), rel=0.5)


def test_tile_level_training_uses_the_input_size_the_backbone_declares(tiles, tmp_path):
    from clotclf_core.training.prepare import prepare_run

    s = resolve_settings(None, {"tiles": str(tiles), "out": str(tmp_path / "r"), "backbone": "timm", "folds": 2,
                                "backbone_options": {**TINY_TIMM, "img_size": 48}})
    run = prepare_run(s, tmp_path / "r", resume=False)
    assert run.input_size == 48 and run.records["data"]["input_size_from"] == "declared by the backbone 'timm'"
    assert any("input size 48 px, declared by the backbone 'timm'" in n for n in run.notes)
    given = prepare_run(s.model_copy(update={"input_size": 48}), tmp_path / "r", resume=False)
    assert given.input_size == 48 and given.records["data"]["input_size_from"] == "--input-size"
    from clotclf_core.plugin import ClotclfError

    with pytest.raises(ClotclfError, match="cannot take 40x40 inputs"):  # what the user asks for is checked, not overridden
        prepare_run(s.model_copy(update={"input_size": 40}), tmp_path / "r", resume=False)
    cct = resolve_settings(None, {"tiles": str(tiles), "backbone": "cct", "backbone_options": {"variant": "cct_2_3x2_32"},
                                  "folds": 2})
    assert prepare_run(cct, tmp_path / "c", resume=False).input_size == 32  # built for the tiles (img_size option)


def test_registry_round_trip_of_a_mil_run(features, tmp_path):
    from clotclf_core.models.saved import check_buildable
    from clotclf_core.plugin import ModelLoadError
    from clotclf_registry import api
    from clotclf_registry.settings import load_settings

    out = tmp_path / "run"
    train(settings(out, features=str(features), epochs=1), progress=False)
    (tmp_path / "reg").mkdir()
    st = load_settings(registry=(tmp_path / "reg").as_uri(), namespace="lab", cache_dir=str(tmp_path / "cache"))
    api.push(out, "mil", settings=st, quiet=True)
    pulled = api.pull("lab/mil", settings=st, quiet=True, out=str(tmp_path / "pulled"))
    config = json.loads((tmp_path / "pulled" / "config.json").read_text())
    assert config["split"]["redacted"] and config["features"]["path"] == "features"  # no identifiers, no local paths
    assert config["model"]["encoder"]["weights_sha256"] == json.loads((features / "features.json").read_text())["encoder"]["weights_sha256"]
    assert [n["role"] for n in pulled.needs] == ["aggregator"]
    assert type(load_model(tmp_path / "pulled")).__name__ == "MILClassifier"
    # a config whose encoder record does not fit the aggregator's weights is refused before use
    config["model"]["encoder"]["num_features"] = 32
    (tmp_path / "pulled" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="other shapes"):
        check_buildable(tmp_path / "pulled")
