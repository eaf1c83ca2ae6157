"""clotclf_core.training: settings, the trainer (best restored, resume, clipping, disk full) and the run directory.

Models are a one-layer CCT on 32-px tiles; TileSets have a few dozen tiles. Each run takes seconds."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from test_data import make_tileset

from clotclf_core.models.saved import load_model
from clotclf_core.plugin import ClotclfError, ConfigError, load_state
from clotclf_core.training.checkpoints import read_checkpoint
from clotclf_core.training.run import train
from clotclf_core.training.settings import TrainSettings, resolve_settings

TINY_CCT = {"variant": "cct_2_3x2_32", "img_size": 32, "num_layers": 1, "embed_dim": 32, "num_heads": 2}


def settings(tiles, out, **over) -> TrainSettings:
    values = {"tiles": str(tiles), "out": str(out), "backbone": "cct", "backbone_options": TINY_CCT, "workers": 0,
              "batch_size": 8, "epochs": 2, "folds": 2, "lr": 2e-3, "warmup_epochs": 0.0, "patience": 0} | over
    return resolve_settings(None, values)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return make_tileset(tmp_path_factory.mktemp("tiles"), n_patients=8, tiles_per_slide=4, size=32)


# ----------------------------------------------------------------------------- settings


def test_yaml_fields_are_checked_and_cli_values_override_them(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone: poolformer\nepochs: 7\nlr: 0.01\naugment:\n  hflip: 0.25\n")
    s = resolve_settings(cfg, {"epochs": 3, "tiles": "t", "augment": {"enabled": False}})
    assert (s.backbone, s.epochs, s.lr) == ("poolformer", 3, 0.01)
    assert s.augment.hflip == 0.25 and s.augment.enabled is False
    cfg.write_text("lr_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown option 'lr_rate' \\(did you mean 'lr' for 'lr_rate'\\?\\)"):
        resolve_settings(cfg)
    cfg.write_text("augment:\n  hflp: 0.1\n")
    with pytest.raises(ConfigError, match="unknown option 'augment.hflp'.*did you mean 'hflip'"):
        resolve_settings(cfg)
    with pytest.raises(ConfigError, match="fold 5 does not exist with folds=5"):
        resolve_settings(None, {"fold": 5})
    with pytest.raises(ConfigError, match="epochs"):
        resolve_settings(None, {"epochs": "many"})


def test_demo_preset_fills_only_what_the_user_left_unset():
    s = resolve_settings(None, {"backbone": "cct", "epochs": 2})
    assert s.tiles is None and s.epochs == 2  # given: kept
    assert s.backbone_options["variant"] == "cct_2_3x2_32" and s.test_fraction > 0
    s = resolve_settings(None, {"backbone": "cct", "backbone_options": {"variant": "cct_7_3x1_32"}})
    assert s.backbone_options == {"variant": "cct_7_3x1_32"}
    assert resolve_settings(None, {"tiles": "t"}).backbone_options == {}  # real data: no preset


# ----------------------------------------------------------------------------- a run


def test_a_run_writes_a_complete_loadable_run_directory(tiles, tmp_path):
    out = tmp_path / "run"
    summary = train(settings(tiles, out, epochs=2), progress=False)
    for name in ("model.safetensors", "config.json", "metrics.json", "history.csv", "split.json", "training.yaml",
                 "README.md", "predictions_val.csv", "plots/history.png", "plots/confusion_tile_val.png",
                 "plots/confusion_patient_val.png", "plots/roc_patient_val.png", "checkpoints/last.safetensors"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["epochs"] == 2 and config["training"]["backbone_options"] == TINY_CCT
    assert config["tileset"]["n_tiles"] == 32 and config["tileset"]["path"] == str(tiles.resolve())
    split = config["split"]
    assert not set(split["train"]) & set(split["val"]) and len(split["train"]) + len(split["val"]) == 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["val"]) == {"tile", "slide", "patient"}
    assert metrics["val"]["patient"]["n"] == len(split["val"]) and metrics["val"]["tile"]["n"] == 4 * len(split["val"])
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2] and history["train_loss"].notna().all()
    assert summary["folds"][0]["best_epoch"] == metrics["best_epoch"]
    # the saved model reproduces the validation predictions
    model = load_model(out)
    preds = pd.read_csv(out / "predictions_val.csv")
    from clotclf_core.models.inputs import normalize
    from clotclf_core.tiling.tileset import TileSet

    ts = TileSet(tiles)
    rows = preds["image_id"].map(lambda i: ts.index.index[ts.index["image_id"] == i][0]) + preds["row"]
    x = torch.from_numpy(np.stack([ts.tile(int(r)) for r in rows])).permute(0, 3, 1, 2)
    with torch.no_grad():
        p = torch.softmax(model(normalize(x, model.config.mean, model.config.std)), 1).numpy()
    np.testing.assert_allclose(p[:, 1], preds["p_LAA"], atol=1e-5)


def test_best_epoch_is_restored_not_the_last(tiles, tmp_path):
    out = tmp_path / "run"

    def ruin_last_epoch(epoch, trainer):  # after the last training epoch, wreck the weights
        if epoch == 2:
            with torch.no_grad():
                for p in trainer.model.head.parameters():
                    p.mul_(-40.0)

    summary = train(settings(tiles, out, epochs=3), progress=False, after_train_epoch=ruin_last_epoch)
    history = pd.read_csv(out / "history.csv")
    best = summary["folds"][0]["best_epoch"]
    assert best < 3 and history["val_loss"].iloc[2] > history["val_loss"].iloc[best - 1]
    _, _, state, _ = read_checkpoint(out / "checkpoints" / "last.safetensors")
    saved = load_state(out / "model.safetensors")
    best_file = load_state(out / "checkpoints" / state["best_file"])
    last = read_checkpoint(out / "checkpoints" / "last.safetensors")[0]
    assert all(torch.equal(saved[k], best_file[k]) for k in saved)
    assert not all(torch.equal(saved[k], last[k]) for k in saved)
    # and the restored model really scores the best epoch's validation loss
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["patient"]["log_loss"] == pytest.approx(history["val_loss"].iloc[best - 1], abs=1e-4)


def test_resume_continues_the_same_schedule(tiles, tmp_path):
    straight = tmp_path / "straight"
    train(settings(tiles, straight, epochs=3), progress=False)

    class Interrupt(Exception):
        pass

    def stop_in_epoch_2(epoch, trainer):
        if epoch == 1:
            raise Interrupt

    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        train(settings(tiles, resumed, epochs=3), progress=False, after_train_epoch=stop_in_epoch_2)
    assert not (resumed / "model.safetensors").exists()
    assert len(read_checkpoint(resumed / "checkpoints" / "last.safetensors")[2]["history"]) == 1
    train(settings(tiles, resumed, epochs=3), resume=True, progress=False)
    a, b = load_state(straight / "model.safetensors"), load_state(resumed / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)  # bit-identical, not close
    ha, hb = pd.read_csv(straight / "history.csv"), pd.read_csv(resumed / "history.csv")
    pd.testing.assert_frame_equal(ha.drop(columns=["images_per_s", "seconds"]), hb.drop(columns=["images_per_s", "seconds"]),
                                  check_exact=True)


def test_resume_refuses_other_settings_and_missing_runs(tiles, tmp_path):
    out = tmp_path / "run"
    train(settings(tiles, out, epochs=1), progress=False)
    with pytest.raises(ClotclfError, match="started with other settings \\(lr: run has 0.002, now 0.01"):
        train(settings(tiles, out, epochs=1, lr=0.01), resume=True, progress=False)
    with pytest.raises(ClotclfError, match="already holds a training run; add --resume"):
        train(settings(tiles, out, epochs=1), progress=False)
    with pytest.raises(ClotclfError, match="holds no run to resume"):
        train(settings(tiles, tmp_path / "empty", epochs=1), resume=True, progress=False)
    # changing only the number of workers is allowed: it does not change the result
    train(settings(tiles, out, epochs=1, workers=1), resume=True, progress=False)


def test_gradient_clipping_is_applied_before_the_step(tiles, tmp_path):
    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.runtime import pick_runtime
    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.training.tiles import tile_trainer

    ts = TileSet(tiles)
    s = settings(tiles, tmp_path, grad_clip=1e-3)
    model = build_model(ModelConfig(backbone="cct", backbone_options=TINY_CCT, labels=["CE", "LAA"], input_size=32))
    trainer = tile_trainer(s, model, ts, np.arange(16), np.arange(16, 32), 0, tmp_path, pick_runtime("cpu"), progress=False)
    trainer.step(next(iter(trainer.task.train_loader)))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.params]))
    assert norm <= 1e-3 * 1.001


def test_class_weights_balanced_weights_the_minority_up(tmp_path):
    tiles = make_tileset(tmp_path / "t", n_patients=8, tiles_per_slide=2, size=32,
                         label_of=lambda p: "LAA" if p in (0, 1, 2) else "CE")
    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.runtime import pick_runtime
    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.training.tiles import tile_trainer

    s = settings(tiles, tmp_path, class_weights="balanced")
    model = build_model(ModelConfig(backbone="cct", backbone_options=TINY_CCT, labels=["CE", "LAA"], input_size=32))
    trainer = tile_trainer(s, model, TileSet(tiles), np.arange(16), np.arange(2), 0, tmp_path, pick_runtime("cpu"), False)
    torch.testing.assert_close(trainer.task.class_weight, torch.tensor([16 / (2 * 10), 16 / (2 * 6)]))


def test_out_of_disk_leaves_no_corrupt_checkpoint_and_resume_recovers(tiles, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_fsync = os.fsync
    calls = {"last": 0}

    def full_disk(fd):  # the second write of last.safetensors hits a full disk, half-way
        path = os.readlink(f"/proc/self/fd/{fd}")
        if ".last.safetensors." in path:
            calls["last"] += 1
            if calls["last"] == 2:
                os.ftruncate(fd, 100)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(ClotclfError, match="out of disk space while writing the last checkpoint.*--resume"):
        train(settings(tiles, out, epochs=3), progress=False)
    monkeypatch.setattr(os, "fsync", real_fsync)
    ckpt = out / "checkpoints"
    assert not [p.name for p in ckpt.iterdir() if p.name.endswith(".tmp")]
    _, _, state, _ = read_checkpoint(ckpt / "last.safetensors")  # still the complete epoch-1 checkpoint
    assert state["epoch"] == 0 and state["best_file"] == "best-epoch001.safetensors"
    load_state(ckpt / state["best_file"])
    train(settings(tiles, out, epochs=3), resume=True, progress=False)
    assert len(pd.read_csv(out / "history.csv")) == 3 and load_model(out) is not None


# ----------------------------------------------------------------------------- bad inputs


def test_missing_or_incompatible_tileset_is_refused(tiles, tmp_path):
    from clotclf_core.tiling.tileset import TileSetError

    with pytest.raises(TileSetError, match="does not exist"):
        train(settings(tmp_path / "nowhere", tmp_path / "r"), progress=False)
    old = tmp_path / "old"
    make_tileset(old, n_patients=4, tiles_per_slide=1)
    meta = json.loads((old / "tileset.json").read_text())
    (old / "tileset.json").write_text(json.dumps(meta | {"format_version": 99}))
    with pytest.raises(TileSetError, match="format version 99"):
        train(settings(old, tmp_path / "r"), progress=False)


def test_impossible_splits_and_unknown_labels_are_refused(tmp_path):
    few = make_tileset(tmp_path / "few", n_patients=3, tiles_per_slide=1)
    with pytest.raises(ClotclfError, match="3 patient\\(s\\) cannot be split into 5 folds"):
        train(settings(few, tmp_path / "r1", folds=5), progress=False)
    one_laa = make_tileset(tmp_path / "one", n_patients=6, tiles_per_slide=1, label_of=lambda p: "LAA" if p == 0 else "CE")
    with pytest.raises(ClotclfError, match="no training patient has label LAA"):
        train(settings(one_laa, tmp_path / "r2", folds=3), progress=False)
    other = make_tileset(tmp_path / "other", n_patients=4, tiles_per_slide=1, labels=("CE", "LAA", "Other"))
    with pytest.raises(ClotclfError, match="label\\(s\\) Other that are not in --labels CE,LAA"):
        train(settings(other, tmp_path / "r3", labels=["CE", "LAA"]), progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("r")]  # no half-started run left behind


def test_a_backbone_that_cannot_take_the_input_size_is_reported(tiles, tmp_path, fake_dist):
    fake_dist("fake-fixed", "fake_fixed", """
        from clotclf_core.plugin import hookimpl
        from clotclf_core.plugin import ComponentSpec, NoOptions

        def build(opts):
            import torch

            class Fixed(torch.nn.Module):
                num_features = 4

                def __init__(self):
                    super().__init__()
                    self.fc = torch.nn.Linear(3 * 40 * 40, 4)

                def forward(self, x):
                    return self.fc(x.flatten(1))

            return Fixed()

        @hookimpl
        def clotclf_backbones():
            return [ComponentSpec("backbone", "fixed40", "40-px inputs only", NoOptions, build)]
    """)
    from clotclf_core.plugin_manager import reset_manager

    reset_manager()
    with pytest.raises(ClotclfError, match="backbone 'fixed40' cannot take 32x32 inputs.*--input-size"):
        train(settings(tiles, tmp_path / "r", backbone="fixed40", backbone_options={}), progress=False)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_cross_validation_reports_mean_std_and_out_of_fold(tiles, tmp_path):
    out = tmp_path / "cv"
    summary = train(settings(tiles, out, epochs=1, fold="all", test_fraction=0.25), progress=False)
    assert (out / "fold_0" / "model.safetensors").is_file() and (out / "fold_1" / "model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cv"]["patient"]["accuracy"]["n"] == 2  # mean ± std over the two folds
    split = json.loads((out / "split.json").read_text())
    val_patients = {p for f in split["folds"] for p in f["val"]}
    assert metrics["oof"]["patient"]["n"] == len(val_patients) == 8 - len(split["test"])
    assert metrics["test_ensemble"]["patient"]["n"] == len(split["test"]) > 0
    # the headline is the held-out test set (scored by the fold models' mean), then out-of-fold, then cv
    assert list(metrics)[:4] == ["headline", "test_ensemble", "oof", "cv"]
    assert metrics["headline"]["on"] == "test_ensemble" and metrics["headline"]["n_patients"] == len(split["test"])
    body = (out / "README.md").read_text()
    assert body.index("Held-out test patients, mean of the fold models") < body.index("### Out-of-fold patients")
    assert (out / "README.md").is_file() and (out / "plots" / "confusion_patient_oof.png").is_file()
    assert "test_ensemble" in summary and summary["cv"]["patient"]["log_loss"]["n"] == 2


@pytest.mark.parametrize("recipe, lr", [("mayo_poolformer.yaml", 3e-4), ("mayo_cct.yaml", 1e-4)])
def test_recipes_validate_against_the_installed_plugins(recipe, lr):
    from pathlib import Path

    from clotclf_core.plugin_manager import get_manager

    s = resolve_settings(Path(__file__).parents[1] / "examples" / recipe, {"tiles": "tiles/"})
    assert (s.input_size, s.lr, s.schedule, s.grad_clip, s.class_weights) == (224, lr, "plateau", 1.0, "balanced")
    assert s.backbone_options["variant"] in ("poolformer_s36", "cct_14_7x2_224") and s.group_by == "patient"
    assert s.test_fraction == 0.2 and s.monitor == "patient_weighted_log_loss"  # a held-out test set, the STRIP AI metric
    mgr = get_manager()
    mgr.get("backbone", s.backbone).validate_options(s.backbone_options)
    mgr.get("head", s.head).validate_options(s.head_options)


def test_a_safetensors_header_whose_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    # the header length is a little-endian u64: its first byte is arbitrary (this once broke --resume)
    from safetensors.torch import save

    for pad in range(300):
        data = save({"w": torch.zeros(2)}, metadata={"pad": "x" * pad})
        if data[0] == 0x80:
            break
    assert data[0] == 0x80
    (tmp_path / "w.safetensors").write_bytes(data)
    assert torch.equal(load_state(tmp_path / "w.safetensors")["w"], torch.zeros(2))


# ----------------------------------------------------------------------------- unlabelled slides, refusals that write nothing


def _blank_labels(tiles, image_ids):
    """Make slides unlabelled in a TileSet's index, as `clotclf tile` does for manifest rows without a label."""
    index = pd.read_csv(tiles / "tiles.csv", dtype=str, keep_default_na=False)
    index.loc[index["image_id"].isin(image_ids), "label"] = ""
    index.to_csv(tiles / "tiles.csv", index=False)
    return tiles


def test_unlabelled_slides_are_left_out_before_the_split_and_reported(tmp_path, capsys):
    tiles = make_tileset(tmp_path / "t", n_patients=10, slides_per_patient=2, tiles_per_slide=2, size=32)
    # p08 and p09 have no label at all; p00 has one labelled and one unlabelled slide
    _blank_labels(tiles, ["ps08_0", "ps08_1", "ps09_0", "ps09_1", "ps00_1"])
    out = tmp_path / "run"
    summary = train(settings(tiles, out, epochs=1, fold="all", test_fraction=0.2), progress=False)
    err = capsys.readouterr().err
    assert "Warning: 5 slide(s) of the TileSet have no label (10 tiles; 2 patient(s) with no labelled slide" in err
    assert "left out of training, validation and test" in summary["notes"][0]
    split = json.loads((out / "split.json").read_text())
    everyone = set(split["test"]).union(*(set(f["train"]) | set(f["val"]) for f in split["folds"]))
    assert everyone == {f"p{p:02d}" for p in range(8)} and split["n_patients"] == 8
    config = json.loads((out / "fold_0" / "config.json").read_text())
    assert config["data"]["n_unlabelled_slides_left_out"] == 5 and config["data"]["n_unlabelled_patients_left_out"] == 2
    assert config["data"]["n_slides"] == 15 and config["tileset"]["n_slides"] == 20  # used vs the whole TileSet
    scored = pd.concat([pd.read_csv(out / "predictions_oof.csv"), pd.read_csv(out / "fold_0" / "predictions_test.csv")])
    assert not {"ps08_0", "ps09_0", "ps00_1"} & set(scored["image_id"]) and "ps00_0" in set(scored["image_id"])


def test_too_few_labelled_patients_left_is_refused_in_one_error(tmp_path):
    tiles = make_tileset(tmp_path / "t", n_patients=4, tiles_per_slide=1)
    _blank_labels(tiles, ["ps02_0", "ps03_0"])  # leaves one CE and one LAA patient
    with pytest.raises(ClotclfError, match="fewer patients \\(CE: 1, LAA: 1\\) than folds \\(2\\).*after leaving out the 2 "
                       "unlabelled slide"):
        train(settings(tiles, tmp_path / "r", folds=2), progress=False)
    assert not (tmp_path / "r").exists()
    _blank_labels(tiles, ["ps00_0", "ps01_0"])
    with pytest.raises(ClotclfError, match="has no labelled tiles"):
        train(settings(tiles, tmp_path / "r"), progress=False)


def test_a_refused_run_writes_nothing_so_the_corrected_command_just_works(tiles, tmp_path, fake_dist):
    fake_dist("fake-broken", "fake_broken", """
        from clotclf_core.plugin import hookimpl
        from clotclf_core.plugin import ComponentSpec, NoOptions

        def build(opts):
            raise ValueError("depth 99 is not a depth this backbone has")

        @hookimpl
        def clotclf_backbones():
            return [ComponentSpec("backbone", "broken", "always fails to build", NoOptions, build)]
    """)
    from clotclf_core.plugin_manager import reset_manager

    reset_manager()
    out = tmp_path / "r1"
    with pytest.raises(ClotclfError, match=r"backbone 'broken' \(plugin fake_broken, distribution fake-broken 0\.1\.0\) "
                                           r"failed to build: ValueError: depth 99"):
        train(settings(tiles, out, backbone="broken", backbone_options={}), progress=False)
    with pytest.raises(ConfigError, match="num_layers"):
        train(settings(tiles, out, backbone_options=TINY_CCT | {"num_layers": "9x"}), progress=False)
    with pytest.raises(ConfigError, match="embed_dim 31 is not divisible by num_heads 2"):  # valid types, invalid model
        train(settings(tiles, out, backbone_options=TINY_CCT | {"embed_dim": 31}), progress=False)
    with pytest.raises(ClotclfError, match="cannot be split into 9 folds"):
        train(settings(tiles, out, folds=9), progress=False)
    assert not out.exists()
    train(settings(tiles, out, epochs=1), progress=False)  # no "already holds a training run"
    assert (out / "model.safetensors").is_file()


def test_the_trainer_refuses_training_rows_without_a_known_label(tmp_path):
    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.runtime import pick_runtime
    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.training.tiles import tile_trainer

    tiles = _blank_labels(make_tileset(tmp_path / "t", n_patients=4, tiles_per_slide=2, size=32), ["ps03_0"])
    model = build_model(ModelConfig(backbone="cct", backbone_options=TINY_CCT, labels=["CE", "LAA"], input_size=32))
    with pytest.raises(ClotclfError, match="fold 0: 2 training tile\\(s\\) have a label outside \\['CE', 'LAA'\\]"):
        tile_trainer(settings(tiles, tmp_path), model, TileSet(tiles), np.arange(8), np.arange(2), 0, tmp_path,
                pick_runtime("cpu"), False)


def test_model_options_are_checked_before_the_demo_cohort_is_made(tmp_path, monkeypatch):
    import clotclf_core.training.run as train_module

    def no_demo(*args, **kwargs):
        raise AssertionError("the demo cohort was generated before the options were checked")

    monkeypatch.setattr(train_module, "prepare_demo", no_demo)
    s = resolve_settings(None, {"backbone": "cct", "backbone_options": {"num_layers": "9x"}, "demo_dir": str(tmp_path / "d")})
    with pytest.raises(ConfigError, match="num_layers"):
        train(s, progress=False)
    s = resolve_settings(None, {"backbone": "cct", "head": "no-such-head", "demo_dir": str(tmp_path / "d")})
    with pytest.raises(ClotclfError, match="unknown head 'no-such-head'"):
        train(s, progress=False)


def test_a_test_fraction_above_one_half_is_refused_by_the_settings():
    with pytest.raises(ConfigError, match="test_fraction 0.7 would hold out more patients than are trained on"):
        resolve_settings(None, {"tiles": "t", "test_fraction": 0.7})


# ----------------------------------------------------------------------------- data-parallel plumbing (no GPU needed)


def test_train_loss_is_summed_over_ranks_on_the_runtime_device(monkeypatch):
    """NCCL refuses CPU tensors: the epoch's loss sum must be all-reduced on the training device.
    A 'meta' device stands in for the GPU (on a CPU runtime any tensor would pass)."""
    import torch.distributed as dist

    from clotclf_core.models.runtime import Runtime
    from clotclf_core.training.distributed import sum_over_ranks as _sum_over_ranks

    seen = []

    class Reduced(Exception):
        pass

    def fake_all_reduce(tensor, *args, **kwargs):
        seen.append((tensor.device, tensor.dtype, tuple(tensor.shape)))
        raise Reduced

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    with pytest.raises(Reduced):
        _sum_over_ranks(Runtime(torch.device("meta"), world_size=2), [3.5, 8.0])
    assert seen == [(torch.device("meta"), torch.float64, (2,))]
    assert _sum_over_ranks(Runtime(torch.device("cpu")), [3.5, 8.0]) == [3.5, 8.0]  # one process: no collective


@pytest.mark.parametrize("cuda, device, backend", [(True, "auto", "cpu:gloo,cuda:nccl"), (True, "cpu", "gloo"),
                                                   (False, "auto", "gloo")])
def test_the_process_group_has_gloo_for_cpu_objects_and_each_rank_its_own_gpu(monkeypatch, cuda, device, backend):
    import torch.distributed as dist

    from clotclf_core.training.distributed import init_distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda b, **kw: calls.append(("init", b)))
    assert init_distributed(device) == (1, 2, 1)
    gpu = cuda and device != "cpu"
    assert calls == ([("set_device", 1)] if gpu else []) + [("init", backend)]


def test_prepare_demo_retiles_when_a_pixel_file_is_damaged(tmp_path, monkeypatch):
    """A damaged demo TileSet is repaired by tiling again, not reported as an error forever."""
    import numpy as np

    import clotclf_core.training.demo as demo
    from clotclf_core.tiling.writer import TileSetWriter
    from clotclf_core.training.demo import prepare_demo

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "train.csv").write_text("image_id,center_id,patient_id,image_num,label\ns1,1,p1,0,CE\n")
    writer = TileSetWriter(tmp_path / "tiles", {"x": 1}, tile_pixels=8)
    writer.add_slide("s1", np.zeros((2, 8, 8, 3), np.uint8),
                     [{"patient_id": "p1", "center_id": "1", "label": "CE", "x": 0, "y": 0, "size": 8, "downsample": 1.0}] * 2, {})
    calls = []
    monkeypatch.setattr(demo, "tile_slides", lambda *a, **k: calls.append(a))
    assert prepare_demo(tmp_path) == tmp_path / "tiles" and calls == []  # intact: reused
    (tmp_path / "tiles" / "pixels" / "s1.npy").write_bytes(b"broken")
    prepare_demo(tmp_path)
    assert len(calls) == 1  # damaged: tiled again
