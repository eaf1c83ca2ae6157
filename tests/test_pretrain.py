"""`clotclf pretrain`: a few steps of each method on a tiny TileSet, a bit-identical resume, the same
weights whatever the worker count, the run directory used as a backbone (`run:PATH`) by embed and
train, and the bad inputs."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from tilesets import TINY_TIMM, make_tileset

from clotclf_core.plugin import ClotclfError
from clotclf_core.plugin.weights import load_state
from clotclf_core.training.checkpoints import state_digest
from clotclf_core.training.pretrain import pretrain
from clotclf_core.training.pretrain_settings import resolve_pretrain_settings

#: the tiny ViT at any view size (DINO's local crops are smaller than the tiles)
VIT = {**TINY_TIMM, "dynamic_img_size": True}
TINY = {"epochs": 2, "batch_size": 4, "head_hidden_dim": 16, "head_output_dim": 32, "head_bottleneck_dim": 8,
        "val_tiles": 4, "workers": 0, "threads": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return make_tileset(tmp_path_factory.mktemp("pretrain") / "tiles", sizes=(6, 5, 7, 4))


def settings(tiles, out, **kw):
    values = {"tilesets": [str(tiles)], "backbone": "timm", "backbone_options": dict(VIT), "out": str(out), **TINY, **kw}
    return resolve_pretrain_settings(overrides=values)


def weights(run):
    return state_digest(load_state(run / "model.safetensors"))


@pytest.mark.parametrize("method", ["dino", "mocov3", "simclr"])
def test_each_method_pretrains_and_writes_a_backbone_run(tiles, tmp_path, method):
    summary = pretrain(settings(tiles, tmp_path / "run", method=method), progress=False)
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "backbone" and config["backbone"] == "timm" and config["pretrain"]["method"] == method
    assert config["backbone_options"]["model"] == "vit_tiny_patch16_224" and config["synthetic"] is False
    assert config["input"] == {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert config["encoder"]["redistribution"] == "yes"  # random init: its own weights
    assert summary["epochs"] == 2 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in summary["history"])
    state = load_state(run / "model.safetensors")
    import timm

    arch = {k: v for k, v in VIT.items() if k != "model"}
    assert set(state) == set(timm.create_model("vit_tiny_patch16_224", num_classes=0, **arch).state_dict())  # backbone only
    assert (run / "history.csv").is_file() and (run / "metrics.json").is_file() and (run / "README.md").is_file()


def test_resume_is_bit_identical_and_workers_do_not_matter(tiles, tmp_path):
    from clotclf_core.plugin.errors import Interrupted

    whole = tmp_path / "whole"
    pretrain(settings(tiles, whole), progress=False)

    def stop(epoch, trainer):  # in the second epoch, after its training steps, before its checkpoint
        if epoch == 1:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted, match="up to epoch 1. Continue with the same command plus --resume"):
        pretrain(settings(tiles, cut), progress=False, after_train_epoch=stop)
    pretrain(settings(tiles, cut), resume=True, progress=False)
    assert weights(cut) == weights(whole)  # teacher, DINO centre, optimizer, schedule, views: all resumed
    losses = [{k: v for k, v in json.loads((r / "metrics.json").read_text())["pretrain"].items() if k != "images_per_s"}
              for r in (cut, whole)]
    assert losses[0] == losses[1]
    workers = tmp_path / "workers"
    pretrain(settings(tiles, workers, workers=2), progress=False)
    assert weights(workers) == weights(whole)  # each tile's views are seeded by (seed, epoch, position)
    with pytest.raises(ClotclfError, match="other settings .*epochs"):
        pretrain(settings(tiles, cut, epochs=3), resume=True, progress=False)


def test_the_run_is_a_backbone_for_embed_and_train(tiles, tmp_path):
    from clotclf_core.features.embed import embed_tileset
    from clotclf_core.features.encoder import encoder_from_record
    from clotclf_core.features.store import FeatureStore
    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.saved import load_model, save_model

    run = tmp_path / "run"
    pretrain(settings(tiles, run, method="simclr", epochs=1), progress=False)
    embed_tileset(tiles, tmp_path / "features", f"run:{run}", device="cpu", progress=False)
    record = FeatureStore(tmp_path / "features").encoder
    assert record["backbone"] == "timm" and record["backbone_run"]["run"] == str(run.resolve())
    assert record["backbone_run"]["weights_sha256"] == json.loads((run / "config.json").read_text())["weights_sha256"]
    assert encoder_from_record(record, device="cpu").weights_sha256 == record["weights_sha256"]  # embedded again alike
    model = build_model(ModelConfig(backbone=f"run:{run}", input_size=32))
    assert state_digest(model.backbone.state_dict()) == weights(run)  # starts from the pre-trained weights
    save_model(model, tmp_path / "tile-model")
    saved = json.loads((tmp_path / "tile-model" / "config.json").read_text())
    assert saved["model"]["backbone"] == "timm" and saved["model"]["backbone_options"]["model"] == "vit_tiny_patch16_224"
    assert saved["plugins"]["backbone"]["backbone_run"]["run"] == str(run.resolve())
    (run / "model.safetensors").rename(tmp_path / "moved.safetensors")  # a saved model never needs the run again
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "tile-model")(x), model.eval()(x))


def test_bad_inputs(tiles, tmp_path, monkeypatch):
    other = make_tileset(tmp_path / "other", sizes=(5, 5), tile=16)
    with pytest.raises(ClotclfError, match="was cut with another geometry .*train_size 16.* one pre-training run"):
        pretrain(settings(tiles, tmp_path / "a", tilesets=[str(tiles), str(other)]), progress=False)
    with pytest.raises(ClotclfError, match=r"returns \(2, 5, 16\) for 2 images, not pooled features"):
        pretrain(settings(tiles, tmp_path / "b", backbone_options={**VIT, "global_pool": ""}), progress=False)
    with pytest.raises(ClotclfError, match="cannot take 16x16 views.*dynamic_img_size=true"):
        pretrain(settings(tiles, tmp_path / "c", backbone_options=TINY_TIMM), progress=False)
    with pytest.raises(ClotclfError, match="fewer than --batch-size 64"):
        pretrain(settings(tiles, tmp_path / "d", batch_size=64), progress=False)
    with pytest.raises(ClotclfError, match="not a pre-trained backbone .*--model"):
        pretrain(settings(tiles, tmp_path / "e", backbone=f"run:{_classifier(tmp_path)}"), progress=False)
    with pytest.raises(ClotclfError, match="local_views is a DINO setting"):
        settings(tiles, tmp_path / "f", method="simclr", local_views=4)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "training.yaml").write_text("x: 1")
    with pytest.raises(ClotclfError, match="already holds a pre-training run: add --resume"):
        pretrain(settings(tiles, tmp_path / "g"), progress=False)
    monkeypatch.setitem(sys.modules, "lightly.loss", None)
    with pytest.raises(ClotclfError, match=r"uses the lightly library, which is not installed .*pip install 'clotclf\[ssl\]'"):
        pretrain(settings(tiles, tmp_path / "h"), progress=False)
    assert not any((tmp_path / d).exists() for d in "abcdefh")  # refused before anything was written


def _classifier(tmp_path):
    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.saved import save_model

    save_model(build_model(ModelConfig(backbone="timm", backbone_options=TINY_TIMM, input_size=32)), tmp_path / "clf")
    return tmp_path / "clf"


def test_pretrain_command(tiles, tmp_path):
    from click.testing import CliRunner

    from clotclf_core.cli.main import cli

    args = ["pretrain", "--tiles", str(tiles), "--method", "simclr", "--backbone", "timm:" + ",".join(
        f"{k}={v}" for k, v in VIT.items()), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
        "--head-hidden-dim", "16", "--head-output-dim", "16", "--workers", "0", "--threads", "1", "--device", "cpu", "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(tmp_path / "run")
    res = CliRunner().invoke(cli, ["embed", "--tiles", str(tiles), "--backbone", f"run:{tmp_path / 'run'}", "--out",
                                   str(tmp_path / "f"), "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["embed", "--tiles", str(tiles), "--backbone", f"run:{tmp_path / 'nothing'}", "--out",
                                   str(tmp_path / "f2")])
    assert res.exit_code == 2 and "is not a run directory" in res.output and "never as a registry name" in res.output
