"""Bad inputs of slide-level learning (encoders, clotclf embed, feature stores): one clear
``Error:`` line each, the documented exit code, nothing half-written. One case per input."""

from __future__ import annotations

import json

import pytest
from badinput import assert_clean_error, files_under, invoke, run, run_on_small_disk, temp_leftovers
from tilesets import TINY_TIMM, make_tileset
from timm_repos import point_client_at, start_hub

TINY = "timm:" + ",".join(f"{k}={v}" for k, v in TINY_TIMM.items())


@pytest.fixture(scope="module")
def hub():
    server = start_hub()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return make_tileset(tmp_path_factory.mktemp("t") / "tiles")


def _embed(tiles, out, backbone=TINY, *extra):
    return invoke(["embed", "--tiles", tiles, "--backbone", backbone, "--out", out, "--device", "cpu", "-q", *extra])


HUB_CASES = {
    "unknown timm name": ("timm:model=convnext_atoo", {}, ["unknown timm model 'convnext_atoo'", "convnext_atto"]),
    "gated, no token": ("timm:model=hf-hub:lab/gated", {}, ["'hf-hub:lab/gated' is gated", "HF_TOKEN"]),
    "gated, token without access": ("timm:model=hf-hub:lab/gated", {"HF_TOKEN": "tok-bob"}, ["gated", "has no access", "request access"]),
    "absent repo": ("timm:model=hf-hub:lab/nothing-here", {}, ["Hub repo 'hf-hub:lab/nothing-here' was not found", "check ORG/NAME", "HF_TOKEN"]),
    "absent revision": ("timm:model=hf-hub:lab/tiny-vit@v9", {}, ["no revision 'v9'"]),
    "not timm's layout (no config.json)": ("timm:model=hf-hub:lab/no-config", {}, ["has no config.json", "timm's layout"]),
    "not timm's layout (transformers config)": ("timm:model=hf-hub:lab/transformers", {}, ["no 'architecture'", "timm's layout"]),
    "pickle weights only": ("timm:model=hf-hub:lab/pickle-only", {}, ["no safetensors weights", "does not load pickle"]),
}


@pytest.mark.parametrize("case", list(HUB_CASES))
def test_encoder_that_cannot_be_had(case, hub, tiles, tmp_path, monkeypatch):
    backbone, env, mentions = HUB_CASES[case]
    point_client_at(monkeypatch, hub.url, tmp_path / "cache")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = _embed(tiles, tmp_path / "f", backbone)
    line = assert_clean_error(out, 2, mentions)
    assert "tok-" not in line  # the token is never printed
    assert not (tmp_path / "f").exists()  # refused before anything was written
    assert not any(p.endswith(".bin") for _, p in hub.requests)


def test_offline_and_not_cached(hub, tiles, tmp_path, monkeypatch):
    point_client_at(monkeypatch, hub.url, tmp_path / "empty-cache", offline=True)
    before = len(hub.requests)
    out = _embed(tiles, tmp_path / "f", "timm:model=hf-hub:lab/tiny-vit")
    assert_clean_error(out, 2, ["HF_HUB_OFFLINE=1", "not in the Hugging Face cache", "lab/tiny-vit"])
    assert len(hub.requests) == before and not (tmp_path / "f").exists()


def _store(tiles, tmp_path):
    out = tmp_path / "f"
    assert _embed(tiles, out).exit_code == 0
    return out


def test_store_made_with_another_encoder(tiles, tmp_path):
    out = _store(tiles, tmp_path)
    before = {p: (out / p).read_bytes() for p in files_under(out) if (out / p).is_file()}
    other = _embed(tiles, out, TINY.replace("embed_dim=16", "embed_dim=32"))
    assert_clean_error(other, 2, ["holds features made with the encoder", "embed_dim=16", "embed_dim=32", "--overwrite"])
    assert {p: (out / p).read_bytes() for p in files_under(out) if (out / p).is_file()} == before


def test_store_of_a_tileset_cut_otherwise(tiles, tmp_path):
    out = _store(tiles, tmp_path)
    other = make_tileset(tmp_path / "other", settings={"synthetic": True, "stride": 16})
    assert_clean_error(_embed(other, out), 2, ["other tiling settings", "--overwrite"])


@pytest.mark.parametrize("case", ["out is a file", "out is another folder", "out is a cohort folder, --overwrite",
                                  "out has someone else's features.json, --overwrite", "tiles missing", "tiles without any tile",
                                  "batch size 0", "bad encoder option", "input size the encoder cannot take",
                                  "unknown backbone"])
def test_embed_arguments(case, tiles, tmp_path):
    out = tmp_path / "f"
    args, mentions = [], []
    src = tiles
    backbone = TINY
    if case == "out is a file":
        out.write_text("x")
        mentions = ["--out", "is a file"]
    elif case == "out is another folder":
        out.mkdir()
        (out / "thesis.tex").write_text("keep me")
        mentions = ["not empty and is not a feature store"]
    elif case == "out is a cohort folder, --overwrite":  # its slides/ must survive
        (out / "slides").mkdir(parents=True)
        (out / "slides" / "a.csv").write_text("image_id\n")
        (out / "slides" / "a.npy").write_bytes(b"x")
        args, mentions = ["--overwrite"], ["not empty and is not a feature store"]
    elif case == "out has someone else's features.json, --overwrite":
        (out / "slides").mkdir(parents=True)
        (out / "slides" / "a.npy").write_bytes(b"x")
        (out / "features.json").write_text('{"format": "their-tool"}')
        args, mentions = ["--overwrite"], ["not a clotclf feature store", "will not replace"]
    elif case == "tiles missing":
        src = tmp_path / "nope"
        mentions = ["does not exist", "clotclf tile"]
    elif case == "tiles without any tile":
        from clotclf_core.tiling.writer import TileSetWriter

        src = tmp_path / "empty"
        TileSetWriter(src, {}, 32).commit("a", "no_tissue", {}, reason="empty mask")
        mentions = ["holds no tiles", "tile the slides again"]
    elif case == "batch size 0":
        args, mentions = ["--batch-size", "0"], ["--batch-size"]
    elif case == "bad encoder option":
        backbone, mentions = "cct:num_layers=x", ["num_layers", "show-plugin cct"]
    elif case == "input size the encoder cannot take":
        args, mentions = ["--input-size", "48"], ["cannot take 48x48", "--input-size"]
    elif case == "unknown backbone":
        backbone, mentions = "tim:model=x", ["unknown backbone 'tim'", "timm"]
    before = {f: (out / f).read_bytes() for f in files_under(out) if (out / f).is_file()} if out.is_dir() else None
    outcome = _embed(src, out, backbone, *args)
    assert_clean_error(outcome, 2, mentions)
    if case.startswith("out is another") or case.startswith("out is a cohort") or case.startswith("out has"):
        assert {f: (out / f).read_bytes() for f in files_under(out) if (out / f).is_file()} == before
    elif case != "out is a file":
        assert not out.exists()


def test_full_disk_leaves_no_half_written_slide(tiles, tmp_path):
    mount = tmp_path / "small"
    outcome, left = run_on_small_disk(
        ["embed", "--tiles", str(tiles), "--backbone", TINY, "--out", str(mount / "f"), "--device", "cpu", "-q"],
        mount, size_kb=8)
    assert_clean_error(outcome, 2, ["out of disk space", "run the command again"])
    assert not [p for p in left if p.endswith(".tmp")]


def test_real_environment_variables(hub, tiles, tmp_path):
    """The child-process path users take: HF_ENDPOINT / HF_HOME / HF_TOKEN / HF_HUB_OFFLINE as variables."""
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    gated = run(["embed", "--tiles", tiles, "--backbone", "timm:model=hf-hub:lab/gated", "--out", tmp_path / "g", "-q"], env=env)
    assert_clean_error(gated, 2, ["is gated", "HF_TOKEN"])
    ok = run(["embed", "--tiles", tiles, "--backbone", "timm:model=hf-hub:lab/gated", "--out", tmp_path / "g", "-q"],
             env={**env, "HF_TOKEN": "tok-alice"})
    assert ok.exit_code == 0, ok.stderr
    offline = run(["embed", "--tiles", tiles, "--backbone", "timm:model=hf-hub:lab/gated", "--out", tmp_path / "g2", "-q"],
                  env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.exit_code == 0, offline.stderr  # from the cache the first run filled, no token needed
    import json

    a = json.loads((tmp_path / "g" / "features.json").read_text())["encoder"]
    b = json.loads((tmp_path / "g2" / "features.json").read_text())["encoder"]
    assert a["weights_sha256"] == b["weights_sha256"] and a["mean"] == [0.6, 0.5, 0.4]
    assert temp_leftovers(tmp_path / "g") == []


def test_demo_data_unknown_signal(tmp_path):
    outcome = invoke(["demo-data", tmp_path / "d", "--signal", "dense"])
    assert_clean_error(outcome, 2, ["--signal", "dense"])
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- multiple-instance runs

from tilesets import TINY_ABMIL, make_feature_store, make_mil_tileset  # noqa: E402

MIL_TRAIN = ["--epochs", "1", "--folds", "2", "--batch-size", "2", "--workers", "0", "--patience", "0", "--device", "cpu"]


def _opts(flag, options):
    return [a for k, v in options.items() for a in (flag, f"{k}={v}")]


@pytest.fixture(scope="module")
def mil(tmp_path_factory):
    """A feature store whose TileSet has a slide without tiles (a zero-tile bag), and two runs on
    it: abmil with --bag-size 50 (more than any slide has) and mean."""
    d = tmp_path_factory.mktemp("milbad")
    tiles = make_mil_tileset(d / "tiles", empty={"s99": "the tissue mask is empty"})
    feats = make_feature_store(tiles, d / "features")
    abmil = invoke(["train", "--features", feats, "--aggregator", "abmil", *_opts("--aggregator-opt", TINY_ABMIL),
                    "--bag-size", "50", "--out", d / "abmil", "--json", *MIL_TRAIN])
    assert abmil.exit_code == 0, abmil.stderr
    mean = invoke(["train", "--features", feats, "--aggregator", "mean", "--aggregator-opt", "hidden=8", "--out", d / "mean",
                   "-q", *MIL_TRAIN])
    assert mean.exit_code == 0, mean.stderr
    return {"dir": d, "tiles": tiles, "features": feats, "abmil": d / "abmil", "mean": d / "mean", "abmil_run": abmil}


def test_bag_with_zero_tiles_is_recorded_and_left_out(mil):
    run = mil["abmil_run"]
    assert "s99" in run.stderr and "gave no tiles" in run.stderr and "no bag" in run.stderr  # said, never a crash
    summary = json.loads(run.stdout)
    assert any("s99" in n for n in summary["notes"])
    config = json.loads((mil["abmil"] / "config.json").read_text())
    assert config["data"]["n_slides_without_tiles"] == 1 and config["features"]["n_slides_without_tiles"] == 1
    assert "s99" not in (mil["abmil"] / "predictions_val.csv").read_text()


def test_bag_size_larger_than_some_slides(mil):
    summary = json.loads(mil["abmil_run"].stdout)
    note = next(n for n in summary["notes"] if "--bag-size 50" in n)
    assert "16 of 16 slide(s) have fewer tiles" in note and "padded with a mask" in note and "no tile is repeated" in note
    assert json.loads((mil["abmil"] / "config.json").read_text())["data"]["bag_size"] == 50


def test_feature_store_of_another_encoder_than_the_run_expects(mil, tmp_path):
    other = make_feature_store(mil["tiles"], tmp_path / "other", embed_dim=32)
    out = invoke(["evaluate", mil["abmil"], "--features", other, "--out", tmp_path / "e", "-q"])
    line = assert_clean_error(out, 2, ["was made with the encoder", "embed_dim=32", "embed_dim=16", "expects",
                                       "clotclf embed --tiles"])
    assert str(mil["abmil"]) in line and not (tmp_path / "e").exists()


def test_features_and_tiles_of_different_sets(mil, tmp_path):
    other = make_mil_tileset(tmp_path / "other-tiles", sizes=(5, 8, 11, 3, 6, 7, 9, 4, 5, 6, 8, 10, 5, 6, 7, 9))  # s15 tiled again
    out = invoke(["train", "--features", mil["features"], "--tiles", other, "--aggregator", "mean", "--out", tmp_path / "r",
                  "-q", *MIL_TRAIN])
    assert_clean_error(out, 2, ["does not match the TileSet", "1 slide(s) were tiled again", "s15", "clotclf embed --tiles"])
    assert not (tmp_path / "r").exists()


def test_aggregator_without_attention_for_attention_heatmaps(mil, tmp_path):
    out = invoke(["predict", mil["dir"], "--model", mil["mean"], "--out", tmp_path / "p", "--attention-heatmaps", "-q"])
    assert_clean_error(out, 2, ["--attention-heatmaps", "aggregator 'mean' has no attention weights", "abmil"])
    assert not (tmp_path / "p").exists()  # refused before any slide was tiled


def test_encoder_whose_weights_changed_is_refused_by_predict(mil, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(mil["abmil"], run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["encoder"]["weights_sha256"] = "0" * 64  # the encoder it was trained on is not the one that rebuilds
    (run / "config.json").write_text(json.dumps(config))
    out = invoke(["predict", mil["dir"], "--model", run, "--out", tmp_path / "p", "-q"])
    assert_clean_error(out, 2, ["needs its encoder", "other weights", "embed the tiles with the encoder you have"])
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("case", ["--features without --aggregator", "--features with --backbone", "--head on a MIL model",
                                  "tile-level run given --features", "--features with --no-heatmaps too"])
def test_mil_arguments(case, mil, tmp_path):
    feats = mil["features"]
    if case == "--features without --aggregator":
        out = invoke(["train", "--features", feats, "--out", tmp_path / "r", *MIL_TRAIN])
        mentions = ["--features is for multiple-instance training", "--aggregator abmil"]
    elif case == "--features with --backbone":
        out = invoke(["train", "--features", feats, "--aggregator", "abmil", "--backbone", "cct", "--out", tmp_path / "r"])
        mentions = ["with --features the encoder is the feature store's", "give one of the two"]
    elif case == "--head on a MIL model":
        out = invoke(["train", "--tiles", mil["tiles"], "--aggregator", "abmil", "--head", "mlp", "--out", tmp_path / "r"])
        mentions = ["classifies with its aggregator", "--head"]
    elif case == "tile-level run given --features":
        from test_predict import make_run

        run = make_run(tmp_path / "tile", 1)
        out = invoke(["evaluate", run, "--features", feats, "--out", tmp_path / "r"])
        mentions = ["tile-level model", "give --tiles", "--features is for multiple-instance models"]
    else:
        out = invoke(["predict", mil["dir"], "--model", mil["abmil"], "--out", tmp_path / "r", "--attention-heatmaps",
                      "--no-heatmaps"])
        mentions = ["--attention-heatmaps and --no-heatmaps"]
    assert_clean_error(out, 2, mentions)
    assert not (tmp_path / "r").exists()


def test_evaluate_asks_a_mil_run_for_what_its_form_scores(mil, tmp_path):
    """An end-to-end MIL run scores tiles, not a feature store; a run on features needs its features or tiles."""
    cct = {"variant": "cct_2_3x2_32", "img_size": 32, "num_layers": 1, "embed_dim": 32, "num_heads": 2}
    trained = invoke(["train", "--tiles", mil["tiles"], "--backbone", "cct", *_opts("--backbone-opt", cct), "--aggregator",
                      "mean", "--aggregator-opt", "hidden=8", "--bag-size", "4", "--out", tmp_path / "e2e", "-q", *MIL_TRAIN])
    assert trained.exit_code == 0, trained.stderr
    out = invoke(["evaluate", tmp_path / "e2e", "--features", mil["features"], "--out", tmp_path / "r"])
    assert_clean_error(out, 2, ["trained end to end on tiles (backbone cct)", "give --tiles instead of --features"])
    assert not (tmp_path / "r").exists()
    from clotclf_core.plugin import ClotclfError
    from clotclf_core.scoring.evaluate import evaluate_run

    with pytest.raises(ClotclfError, match="scores tiles: give --tiles"):
        evaluate_run(str(tmp_path / "e2e"), out=str(tmp_path / "r"), progress=False)
    with pytest.raises(ClotclfError, match="scores features of its encoder: give --features .* or --tiles"):
        evaluate_run(str(mil["abmil"]), out=str(tmp_path / "r"), progress=False)
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- issue 15: defaults, standardisation, calibration


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from clotclf_core.features.synthetic import write_planted_store

    return write_planted_store(tmp_path_factory.mktemp("planted") / "f", patients=12, tiles=(3, 5), signal_tiles=(1, 1),
                               num_features=4)


@pytest.fixture(scope="module")
def planted_runs(planted, tmp_path_factory):
    """Two abmil runs on the planted store, with and without standardisation (1 epoch each)."""
    from tilesets import TINY_ABMIL

    from clotclf_core.training.run import train
    from clotclf_core.training.settings import resolve_settings

    d = tmp_path_factory.mktemp("runs")
    for name, standardise in (("on", "on"), ("off", "off")):
        train(resolve_settings(None, {"features": str(planted), "aggregator": "abmil", "aggregator_options": TINY_ABMIL,
                                      "epochs": 1, "folds": 2, "workers": 0, "standardise": standardise,
                                      "out": str(d / name)}), progress=False)
    return d


def _train_args(planted, out, *extra):
    return ["train", "--features", planted, "--aggregator", "abmil", "--aggregator-opt", "hidden=4", "--epochs", "1",
            "--workers", "0", "--folds", "2", "--out", out, "-q", *extra]


@pytest.mark.parametrize("clip", ["0", "0.5", "0.7", "-0.1"])
def test_clip_outside_zero_and_a_half(planted, tmp_path, clip):
    out = invoke(_train_args(planted, tmp_path / "r", "--clip", clip))
    assert_clean_error(out, 2, ["--clip", "between 0 and 0.5", "--clip 0.05"])
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra, mentions", [
    (["--calibrate", "temperature"], ["--calibrate", "only 6 validation patient(s)", "at least 10", "--fold all"]),
    (["--calibrate", "platt", "--fold", "all", "--test-fraction", "0.5"],
     ["--calibrate", "only 6 out-of-fold patient(s)", "at least 10"]),
])
def test_calibration_on_too_few_patients_is_refused_before_training(planted, tmp_path, extra, mentions):
    out = invoke(_train_args(planted, tmp_path / "r", *extra))
    assert_clean_error(out, 2, mentions)
    assert not (tmp_path / "r").exists()  # refused before the split or a checkpoint was written


def test_standardise_on_for_a_model_without_feature_bags(tiles, tmp_path):
    out = invoke(["train", "--tiles", tiles, "--backbone", "cct", "--standardise", "on", "--out", tmp_path / "r", "-q"])
    assert_clean_error(out, 2, ["--standardise on applies to feature bags", "tile-level"])
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("run, wanted, mentions", [
    ("off", "on", ["--standardise on", "stores no standardisation statistics", "leave --standardise out"]),
    ("on", "off", ["--standardise off", "trained on standardised features", "leave --standardise out"]),
])
def test_standardise_at_evaluate_and_predict_time_must_match_the_run(planted, planted_runs, tmp_path, command, run,
                                                                     wanted, mentions):
    model = planted_runs / run
    if command == "evaluate":
        args = ["evaluate", model, "--features", planted, "--out", tmp_path / "e", "--standardise", wanted, "-q"]
    else:
        (tmp_path / "slides").mkdir()
        args = ["predict", tmp_path / "slides", "--model", model, "--out", tmp_path / "e", "--standardise", wanted, "-q"]
    assert_clean_error(invoke(args), 2, mentions)
    assert not (tmp_path / "e").exists()


def test_a_tampered_calibration_record_is_refused(planted, planted_runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(planted_runs / "on", run)
    config = json.loads((run / "config.json").read_text())
    config["calibration"] = {"method": "temperature", "params": {"temperature": "hot"}}
    (run / "config.json").write_text(json.dumps(config))
    out = invoke(["evaluate", run, "--features", planted, "--out", tmp_path / "e", "-q"])
    assert_clean_error(out, 2, ["'calibration' section is not one clotclf writes", "config.json"])
    assert not (tmp_path / "e").exists()
def test_a_damaged_encoder_record_is_blamed_on_features_json_in_full(mil, tmp_path):
    """D4 (issue 17): it was blamed on the aggregator, cut mid-word, with `show-plugin abmil` as the hint."""
    import shutil

    feats = tmp_path / "features"
    shutil.copytree(mil["features"], feats)
    meta = json.loads((feats / "features.json").read_text())
    meta["encoder"]["weights_sha256"] = "not-a-sha256"
    meta["encoder"]["input_size"] = 99999
    (feats / "features.json").write_text(json.dumps(meta))
    out = invoke(["train", "--features", feats, "--aggregator", "abmil", "--out", tmp_path / "r", "-q", *MIL_TRAIN])
    line = assert_clean_error(out, 2, [f"the encoder record of '{feats / 'features.json'}'", "field 'weights_sha256'",
                                       "'not-a-sha256'", "field 'input_size'", "less than or equal to 2048",
                                       "clotclf embed ... --overwrite"])
    assert "abmil" not in line and "show-plugin" not in line
    assert not (tmp_path / "r").exists()
