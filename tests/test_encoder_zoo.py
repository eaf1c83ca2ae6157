"""The encoder zoo: every preset's architecture on the meta device (no memory, no weights), tiny
random-init repos in each layout served by the tests' Hub server and embedded end to end, and the
bad inputs (unknown preset, loader not installed, remote code not allowed, gated, offline)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from timm_repos import TOKENS, point_client_at, start_hub
from zoo_repos import populate, tiny_dinov2_registers, tiny_phikon, tiny_virchow2

from clotclf_core.plugin import ClotclfError
from clotclf_core.plugin.encoders import encoder_info
from clotclf_core.plugin_manager import get_manager


def _presets():
    return [s for s in get_manager().components("backbone") if s.extra.get("encoder") is not None]


def test_the_zoo_names_the_encoders_the_issue_asks_for():
    names = {s.name for s in _presets()}
    assert {"uni", "uni2-h", "virchow", "virchow2", "h-optimus-0", "h-optimus-1", "h0-mini", "prov-gigapath", "phikon",
            "phikon-v2", "hibou-b", "hibou-l", "kaiko-vitb8", "lunit-vits8", "resnet50-imagenet",
            "convnext-tiny-imagenet"} <= names
    for spec in _presets():
        info = encoder_info(spec.extra)
        assert info.source and info.citation and info.licence, spec.name
        assert (info.tile_command() is None) == (info.um_per_px is None)


@pytest.mark.parametrize("name", sorted(s.name for s in _presets()))
def test_every_preset_architecture_on_the_meta_device(name):
    """The architecture each card describes, built without memory: its embedding size, the tokens it
    pools from (class + register tokens), its declared normalisation and input size."""
    spec = get_manager().get("backbone", name)
    info = encoder_info(spec.extra)
    # every pooling a preset offers on the two small ones; the card's own on all (each build costs ~1 s)
    for pooling in info.poolings if name in ("kaiko-vits16", "hibou-b") else (info.pooling,):
        opts = spec.validate_options({"pretrained": False, "pooling": pooling})
        with torch.device("meta"):
            module = spec.factory(opts)
            out = module(torch.empty(2, 3, info.input_size, info.input_size))
        assert out.shape == (2, module.num_features), (name, pooling)
        width = {"cls_mean": 2}.get(pooling, 1) * {"cls_mean": 0.5}.get(info.pooling, 1) * info.embedding_dim
        assert out.shape[-1] == width, (name, pooling)
        assert tuple(module.pretrained_cfg["mean"]) == info.mean and module.pretrained_cfg["input_size"][-1] == info.input_size
    if name in ("virchow2", "h0-mini", "h-optimus-0"):
        assert module.num_prefix_tokens == 5  # class + 4 registers: patch tokens start after them, never at 1
    if name == "uni2-h":
        assert module.num_prefix_tokens == 9


@pytest.fixture(scope="module")
def hub():
    server = start_hub()
    populate(server)
    yield server
    server.stop()


@pytest.fixture
def client(hub, monkeypatch, tmp_path):
    point_client_at(monkeypatch, hub.url, tmp_path / "hf-cache")
    return monkeypatch


def _encoder(name, options=None, **kw):
    from clotclf_core.features.encoder import build_encoder

    return build_encoder(name, options or {}, tile_size=32, device="cpu", **kw)


def _state_sha(module):
    from clotclf_core.features.encoder import state_sha256

    return state_sha256(module)


def test_virchow2_preset_loads_the_repo_and_pools_class_and_patch_tokens(client, hub):
    """A repo in Virchow2's layout under its id: the card's SwiGLU / SiLU classes passed, the class
    token and the mean of the patch tokens after the 4 registers, recorded with repo, commit and sha."""
    enc = _encoder("virchow2", input_size=32)
    ref = tiny_virchow2().eval()
    assert _state_sha(enc.module.trunk) == _state_sha(ref)  # the served weights, not a random init
    assert enc.num_features == 32 and enc.module.num_prefix_tokens == 5
    x = torch.rand(2, 3, 32, 32)
    tokens = ref.forward_features(x)
    want = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
    with torch.no_grad():
        assert torch.allclose(enc.module(x), want, atol=1e-6)
    record = enc.record()
    snap = enc.options["hub_snapshot"]
    assert record["backbone"] == "virchow2" and record["hub_repo"] == "paige-ai/Virchow2" and len(record["hub_commit"]) == 40
    assert enc.options["pooling"] == "cls_mean" and len(snap["weights_file_sha256"]) == 64
    assert record["mean"] == [0.485, 0.456, 0.406]


def test_transformers_presets_and_repos(client, hub):
    phikon = _encoder("phikon", input_size=32)
    ref = tiny_phikon().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(phikon.module(x), ref(pixel_values=x).last_hidden_state[:, 0], atol=1e-6)
    assert phikon.options["hub_snapshot"]["repo"] == "owkin/phikon" and phikon.options["trust_remote_code"] is False
    dino = _encoder("transformers", {"model": "lab/tiny-dinov2-reg", "pooling": "cls_mean"})
    ref = tiny_dinov2_registers().eval()
    with torch.no_grad():
        tokens = ref(pixel_values=x).last_hidden_state  # class, 2 registers, 16 patches
        assert tokens.shape[1] == 19 and dino.module.num_prefix_tokens == 3
        assert torch.allclose(dino.module(x), torch.cat([tokens[:, 0], tokens[:, 3:].mean(1)], -1), atol=1e-6)


def test_remote_code_needs_an_explicit_flag_that_the_run_records(client, hub):
    before = len(hub.requests)
    with pytest.raises(ClotclfError, match="own Python code .*modeling_tiny.TinyRemoteModel.*trust_remote_code=true"):
        _encoder("hibou-b")
    assert not any(p.endswith(".py") for _, p in hub.requests[before:])  # its code was not even downloaded
    enc = _encoder("hibou-b", {"trust_remote_code": True})
    assert type(enc.module.model).__name__ == "TinyRemoteModel"
    assert enc.record()["options"]["trust_remote_code"] is True and enc.options["pooling"] == "pooler"


def test_saved_transformers_model_rebuilds_offline(client, hub, tmp_path):
    from huggingface_hub import constants

    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.saved import load_model, save_model

    model = build_model(ModelConfig(backbone="phikon", input_size=32))
    save_model(model, tmp_path / "run")
    client.setattr(constants, "HF_HUB_OFFLINE", True)
    client.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    again = load_model(tmp_path / "run")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))


def test_gated_preset_without_a_token_or_access(client, hub):
    with pytest.raises(ClotclfError, match="'hf-hub:MahmoodLab/UNI2-h' is gated: accept its licence"):
        _encoder("uni2-h")
    client.setenv("HF_TOKEN", "tok-bob")
    with pytest.raises(ClotclfError, match="has no access to it: request access .*accept its licence"):
        _encoder("uni2-h")
    assert "tok-bob" in TOKENS


def test_offline_without_the_weights_in_the_cache(client):
    from huggingface_hub import constants

    client.setattr(constants, "HF_HUB_OFFLINE", True)
    for name in ("virchow2", "phikon"):
        with pytest.raises(ClotclfError, match="HF_HUB_OFFLINE=1 and config.json of .* is not in the Hugging Face cache"):
            _encoder(name)


def test_pickle_only_transformers_repo_is_refused(client, hub):
    with pytest.raises(ClotclfError, match="has no model.safetensors: clotclf loads safetensors only"):
        _encoder("transformers", {"model": "lab/pickle-transformers"})
    assert not any(p.endswith(".bin") for _, p in hub.requests)


def test_unknown_preset_names_the_closest():
    with pytest.raises(ClotclfError, match=r"unknown backbone 'uni2h'\. Known backbones: uni2-h, "):
        _encoder("uni2h")
    with pytest.raises(ClotclfError, match="pooling"):
        _encoder("uni", {"pooling": "pooler"})  # a choice this preset does not offer


def test_loader_not_installed_says_what_to_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ClotclfError, match=r"backbone 'phikon' is loaded by Hugging Face transformers, which is not "
                                           r"installed: pip install 'clotclf\[transformers\]'"):
        _encoder("phikon", {"pretrained": False})


def test_embed_warns_when_the_tileset_is_at_another_scale(tmp_path, capsys):
    """Tiles at 2 um/px seen by a 0.5 um/px encoder: one warning with the matching `clotclf tile`."""
    from clotclf_core.features.embed import embed_tileset
    from clotclf_core.tiling.writer import TileSetWriter

    writer = TileSetWriter(tmp_path / "tiles", {"synthetic": True}, 32)
    rows = [{"patient_id": "p0", "center_id": "c", "label": "CE", "x": 32 * i, "y": 0, "size": 32, "downsample": 1.0}
            for i in range(3)]
    writer.add_slide("s0", np.zeros((3, 32, 32, 3), np.uint8), rows, {"um_per_pixel": 2.0})
    small = {"input_size": 32, "device": "cpu", "progress": False}  # the encoder at the tiles' 32 px: quick
    summary = embed_tileset(tmp_path / "tiles", tmp_path / "f", "kaiko-vits16", {"pretrained": False}, **small)
    assert summary["scale_warning"] is None  # kaiko states no microns per pixel: nothing to compare
    summary = embed_tileset(tmp_path / "tiles", tmp_path / "f1", "lunit-vits8", {"pretrained": False}, **small)
    err = capsys.readouterr().err
    # 32 cached px of 2 um, seen at 32 px: 2 um/px, 4x the encoder's 0.5
    assert "2 um/px, 4x the scale it was trained at (0.5 um/px)" in err
    assert "clotclf tile SLIDES --out TILES --tile-um 112 --train-size 224" in err
    assert summary["scale_warning"] and "warning:" in err
    writer2 = TileSetWriter(tmp_path / "tiles2", {"synthetic": True}, 32)
    writer2.add_slide("s0", np.zeros((3, 32, 32, 3), np.uint8), rows, {"um_per_pixel": 0.6})  # within 1.5x: quiet
    assert embed_tileset(tmp_path / "tiles2", tmp_path / "f2", "lunit-vits8", {"pretrained": False},
                         **small)["scale_warning"] is None


def test_list_encoders_command():
    from click.testing import CliRunner

    from clotclf_core.cli.main import cli

    res = CliRunner().invoke(cli, ["list-encoders", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["uni2-h"]["repo"] == "MahmoodLab/UNI2-h" and rows["uni2-h"]["dim"] == 1536
    assert rows["virchow2"]["pooling"] == "cls_mean" and rows["hibou-b"]["remote_code"] == "yes"
    assert rows["uni"]["tile"] == "clotclf tile SLIDES --out TILES --tile-um 112 --train-size 224"
    text = CliRunner().invoke(cli, ["list-encoders"]).output
    assert "MahmoodLab/UNI2-h" in text and "CC-BY-NC-ND-4.0" in text
