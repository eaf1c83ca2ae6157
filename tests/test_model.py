"""ClotClassifier build, safetensors save/load round trip, and every way loading can go wrong."""

from __future__ import annotations

import json

import pytest
import torch

from clotclf_core.models.build import build_model
from clotclf_core.models.config import ModelConfig
from clotclf_core.models.runs import read_config
from clotclf_core.models.saved import load_model, save_model
from clotclf_core.plugin import ConfigError, ModelLoadError, PluginError


@pytest.fixture(scope="module")
def small_cfg():
    return ModelConfig(backbone="poolformer", head="mlp", head_options={"hidden": 16}, input_size=32)


def _run(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_round_trip_identical_outputs(tmp_path, small_cfg):
    torch.manual_seed(0)
    model = build_model(small_cfg)
    x = torch.randn(3, 3, 32, 32)
    before = _run(model, x)
    save_model(model, tmp_path / "run", extra={"training": {"epochs": 1}})
    cfg = read_config(tmp_path / "run")
    assert cfg["model"]["backbone"] == "poolformer" and cfg["model"]["labels"] == ["CE", "LAA"]
    assert cfg["plugins"]["backbone"]["distribution"] == "clotclf"
    assert cfg["training"] == {"epochs": 1} and len(cfg["weights_sha256"]) == 64
    loaded = load_model(tmp_path / "run")
    assert torch.equal(before, _run(loaded, x))
    assert loaded.labels == ["CE", "LAA"] and loaded.config.input_size == 32
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["backbone"] == "poolformer" and meta["head"] == "mlp" and "clotclf_version" in meta


def test_mlp_head_survives_batch_of_one(small_cfg):
    model = build_model(small_cfg).train()
    out = model(torch.randn(1, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (1, 2)


def test_freeze_stages_freezes_parameters():
    model = build_model(ModelConfig(backbone="poolformer", backbone_options={"freeze_stages": 2}))
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("backbone.stem") for n in frozen)
    assert any(n.startswith("backbone.stages.1") for n in frozen)
    assert not any(n.startswith("backbone.stages.2") for n in frozen)


def test_unknown_backbone_and_bad_options():
    with pytest.raises(PluginError, match="unknown backbone 'poolfromer'.*poolformer"):
        build_model(ModelConfig(backbone="poolfromer"))
    with pytest.raises(PluginError, match="unknown head"):
        build_model(ModelConfig(backbone="poolformer", head="transformer"))
    with pytest.raises(ConfigError, match="freeze_stages"):
        build_model(ModelConfig(backbone="poolformer", backbone_options={"freeze_stages": 9}))


def test_mismatched_weights_are_refused(tmp_path, small_cfg):
    save_model(build_model(small_cfg), tmp_path / "run")
    cfg_path = tmp_path / "run" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["head_options"] = {"hidden": 32}  # config says another shape than the weights
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"do not fit.*other shapes.*head\.bn\.bias: file \(16,\) vs model \(32,\)"):
        load_model(tmp_path / "run")
    cfg["model"]["head"] = "linear"
    cfg["model"]["head_options"] = {}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="missing.*unexpected"):
        load_model(tmp_path / "run")


def test_missing_plugin_names_distribution(tmp_path, small_cfg):
    save_model(build_model(small_cfg), tmp_path / "run")
    cfg_path = tmp_path / "run" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["backbone"] = "swinv9"
    cfg["plugins"]["backbone"] = {"name": "swinv9", "distribution": "clotclf-swin", "version": "1.2.0"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="pip install 'clotclf-swin==1.2.0'"):
        load_model(tmp_path / "run")


def test_pickle_weights_are_refused(tmp_path, small_cfg):
    model = build_model(small_cfg)
    save_model(model, tmp_path / "run")
    weights = tmp_path / "run" / "model.safetensors"
    torch.save(model.state_dict(), weights)  # a torch.save zip under the safetensors name
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(tmp_path / "run")
    weights.unlink()
    torch.save(model.state_dict(), tmp_path / "run" / "model.pth")
    with pytest.raises(ModelLoadError, match=r"pickle-based checkpoint \(\.pth\).*safetensors"):
        load_model(tmp_path / "run")


def test_truncated_and_missing_files(tmp_path, small_cfg):
    save_model(build_model(small_cfg), tmp_path / "run")
    weights = tmp_path / "run" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(tmp_path / "run")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_save_is_atomic_on_failure(tmp_path, small_cfg, monkeypatch):
    model = build_model(small_cfg)
    save_model(model, tmp_path / "run")
    good = (tmp_path / "run" / "model.safetensors").read_bytes()

    import safetensors.torch

    def boom(*args, **kwargs):
        with open(args[1], "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save_model(model, tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == good
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os
    import stat

    from clotclf_core.plugin import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_weights_follow_the_umask_like_every_other_file(tmp_path):
    """D3 (issue 17): safetensors' save_file writes a new 0600 file over the temporary one; a
    colleague reading a shared runs/ folder must be able to load the weights."""
    import os
    import stat

    import torch

    from clotclf_core.plugin.weights import save_weights

    for mask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        old = os.umask(mask)
        try:
            save_weights(torch.nn.Linear(2, 2), tmp_path / f"{mask:o}.safetensors")
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / f"{mask:o}.safetensors").stat().st_mode) == mode


def test_a_staged_folder_replaces_its_target_whole_with_normal_permissions(tmp_path):
    import os
    import stat

    import pytest

    from clotclf_core.plugin.io import staged_dir

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    old = os.umask(0o022)
    try:
        with pytest.raises(RuntimeError), staged_dir(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("failed half-way")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "old.txt").is_file()
        with staged_dir(tmp_path / "out") as tmp:
            (tmp / "new.txt").write_text("x")
    finally:
        os.umask(old)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # not mkdtemp's 0700
