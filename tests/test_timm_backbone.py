"""The timm backbone plugin: timm names, constructor options, and Hub repos in timm's layout loaded
through timm's own hf-hub code from the test Hub server on 127.0.0.1 (real HTTP, no network)."""

from __future__ import annotations

import json

import pytest
import torch
from timm_repos import TINY_MEAN, TINY_STD, TINY_VIT, point_client_at, start_hub, tiny_vit_state

from clotclf_core.models.config import ModelConfig
from clotclf_core.plugin import ClotclfError


@pytest.fixture(scope="module")
def hub():
    server = start_hub()
    yield server
    server.stop()


@pytest.fixture
def client(hub, monkeypatch, tmp_path):
    point_client_at(monkeypatch, hub.url, tmp_path / "hf-cache")
    return monkeypatch


def _encoder(options, **kw):
    from clotclf_core.features.encoder import build_encoder

    return build_encoder("timm", options, tile_size=32, device="cpu", **kw)


def test_timm_name_uses_and_records_its_own_normalisation(tmp_path):
    from clotclf_core.models.build import build_model
    from clotclf_core.models.saved import load_model, save_model

    vit = build_model(ModelConfig(backbone="timm", backbone_options={"model": "vit_tiny_patch16_224", "img_size": 32,
                                                                   "depth": 1}, input_size=32))
    assert vit.config.mean == (0.5, 0.5, 0.5) and vit.config.std == (0.5, 0.5, 0.5)  # timm's pretrained_cfg
    save_model(vit, tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert recorded["mean"] == [0.5, 0.5, 0.5]
    assert load_model(tmp_path / "run").config.mean == (0.5, 0.5, 0.5)
    conv = build_model(ModelConfig(backbone="timm", backbone_options={"model": "convnext_atto"}, input_size=32))
    assert conv.config.mean == (0.485, 0.456, 0.406) and conv.backbone.num_features == 320
    assert conv(torch.zeros(2, 3, 32, 32)).shape == (2, 2)


def test_num_features_is_what_the_backbone_outputs():
    """MobileNetV3 has a pre-logits layer: without its classifier it outputs head_hidden_size (1024)
    features, not num_features (288); the head and an aggregator are sized by what comes out."""
    from clotclf_core.models.build import build_model

    for aggregator in (None, "abmil"):
        m = build_model(ModelConfig(backbone="timm", backbone_options={"model": "mobilenetv3_small_050"}, input_size=32,
                                    **({"kind": "mil", "aggregator": aggregator} if aggregator else {}))).eval()
        assert m.backbone.num_features == 1024 == m.backbone(torch.zeros(1, 3, 32, 32)).shape[1]
        x = torch.zeros(2, 3, 32, 32) if aggregator is None else torch.zeros(1, 2, 3, 32, 32)
        out = m(x) if aggregator is None else m(x, torch.ones(1, 2, dtype=torch.bool))
        assert out.shape[-1] == 2


def test_constructor_options_pass_through():
    from clotclf_core.models.build import build_model

    m = build_model(ModelConfig(backbone="timm", input_size=32, backbone_options={
        "model": "vit_tiny_patch16_224", "img_size": 32, "depth": 1, "init_values": "1e-5",  # YAML 1.1 keeps 1e-5 a string
        "act_layer": "SiLU", "global_pool": "avg"}))
    block = m.backbone.blocks[0]
    assert isinstance(block.mlp.act, torch.nn.SiLU) and float(block.ls1.gamma[0].detach()) == pytest.approx(1e-5)
    assert m.backbone.global_pool == "avg"


def test_hub_repo_in_timm_layout(client, hub):
    import timm

    from clotclf_core.features.encoder import state_sha256

    enc = _encoder({"model": "hf-hub:lab/tiny-vit"})
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY_VIT)
    ref.load_state_dict(tiny_vit_state())
    assert enc.weights_sha256 == state_sha256(ref)  # the repo's weights, not a random init
    assert enc.spec.mean == TINY_MEAN and enc.spec.std == TINY_STD and enc.spec.source == "backbone"
    assert enc.input_size == 32 and enc.num_features == 16
    commit = enc.options["hub_snapshot"]["commit"]
    assert len(commit) == 40 and enc.record()["hub_commit"] == commit  # the commit 'main' resolved to, recorded
    assert enc.options["hub_snapshot"]["config"]["architecture"] == "vit_tiny_patch16_224"
    assert ("GET", f"/lab/tiny-vit/resolve/{commit}/model.safetensors") in hub.requests  # weights of that commit
    assert not any(p.endswith(".bin") for _, p in hub.requests)  # never asked for a pickle
    assert _encoder({"model": "hf-hub:lab/tiny-vit@main"}).weights_sha256 == enc.weights_sha256


def test_offline_from_the_cache(client, hub, tmp_path):
    online = _encoder({"model": "hf-hub:lab/tiny-vit"})
    from huggingface_hub import constants

    client.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(hub.requests)
    offline = _encoder({"model": "hf-hub:lab/tiny-vit"})
    assert offline.weights_sha256 == online.weights_sha256 and len(hub.requests) == before


def test_gated_repo_with_a_token_that_has_access(client):
    client.setenv("HF_TOKEN", "tok-alice")
    assert _encoder({"model": "hf-hub:lab/gated"}).spec.mean == TINY_MEAN


def test_extra_constructor_option_the_card_asks_for(client):
    with pytest.raises(ClotclfError, match="do not fit.*init_values"):
        _encoder({"model": "hf-hub:lab/needs-init"})
    enc = _encoder({"model": "hf-hub:lab/needs-init", "init_values": 1e-5})
    assert enc.weights_sha256 == _encoder({"model": "hf-hub:lab/tiny-vit"}).weights_sha256


@pytest.mark.parametrize("options, message", [
    ({"model": "convnext_atoo"}, "unknown timm model 'convnext_atoo'. Closest timm names: convnext_atto"),
    ({"model": "convnext_atto.in99k"}, "no pretrained tag 'in99k' for 'convnext_atto'; its tags: convnext_atto.d2_in1k"),
    ({"model": "convnext_atto", "drop_pathrate": 0.1}, "does not take the option 'drop_pathrate'"),
    ({"model": "convnext_atto", "num_classes": 5}, "option 'num_classes' cannot be set"),
    ({"model": "vit_tiny_patch16_224", "mlp_layer": "NoSuchMlp"}, "mlp_layer='NoSuchMlp' names no class"),
    ({"model": "hf-hub:lab"}, "not of the form hf-hub:ORG/NAME"),
])
def test_bad_timm_options(options, message):
    with pytest.raises(ClotclfError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        _encoder(options)


def test_saved_hub_model_rebuilds_offline_with_an_empty_cache(client, hub, tmp_path):
    """timm.create_model('hf-hub:…', pretrained=False) would still fetch config.json: the run records
    the repo's config.json and commit, and the rebuild uses them, with no network and no cache."""
    from huggingface_hub import constants

    from clotclf_core.models.build import build_model
    from clotclf_core.models.saved import check_buildable, load_model, save_model

    model = build_model(ModelConfig(backbone="timm", backbone_options={"model": "hf-hub:lab/tiny-vit"}, input_size=32))
    save_model(model, tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["backbone_options"]
    assert recorded["hub_snapshot"]["repo"] == "lab/tiny-vit" and len(recorded["hub_snapshot"]["commit"]) == 40
    client.setattr(constants, "HF_HUB_OFFLINE", True)
    client.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    before = len(hub.requests)
    again = load_model(tmp_path / "run")
    assert check_buildable(tmp_path / "run")["parameters"] == sum(p.numel() for p in again.parameters())
    assert len(hub.requests) == before and not (tmp_path / "empty-cache").exists()
    assert again.config.mean == TINY_MEAN  # the recorded pretrained_cfg's normalisation
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))


def test_encoder_is_fetched_again_at_its_recorded_commit(client, hub):
    from timm_repos import add_repo, tiny_vit_files

    from clotclf_core.features.encoder import encoder_from_record

    add_repo(hub, "lab/moving", tiny_vit_files())
    enc = _encoder({"model": "hf-hub:lab/moving"})
    record = enc.record()
    hub.raw_commit("lab/moving", tiny_vit_files(seed=1), message="new weights on main", keep=True)
    moved = _encoder({"model": "hf-hub:lab/moving"})
    assert moved.weights_sha256 != enc.weights_sha256 and moved.record()["hub_commit"] != record["hub_commit"]
    assert encoder_from_record(record, device="cpu").weights_sha256 == enc.weights_sha256  # pinned, not main
    damaged = {**record, "weights_sha256": "0" * 64}
    with pytest.raises(ClotclfError, match=f"at the recorded commit {record['hub_commit'][:12]} now serves other weights"):
        encoder_from_record(damaged, device="cpu")
