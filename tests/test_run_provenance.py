"""Runs that rebuild anywhere: resolved options and providers in config.json, loading through the
recorded provider (version warnings, exact pip install, disabled vs broken), no pretrained
downloads on rebuild, weights checked on load, absurd configs refused before memory is spent,
and the model card's "What must be installed"."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from clotclf_core.models.build import build_model
from clotclf_core.models.config import ModelConfig
from clotclf_core.models.runs import read_config
from clotclf_core.models.saved import check_buildable, load_model, save_model
from clotclf_core.plugin import ModelLoadError
from clotclf_core.plugin_manager import reset_manager

TINY = {"variant": "cct_2_3x2_32"}

VERSIONED = """
from pydantic import Field
from clotclf_core.plugin import hookimpl
from clotclf_core.plugin import ComponentSpec, Options

class O(Options):
    width: int = Field({width}, ge=1)

def build(opts):
    import torch.nn as nn
    m = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, opts.width))
    m.num_features = opts.width
    return m

@hookimpl
def clotclf_backbones():
    return [ComponentSpec("backbone", "vb", "versioned test backbone", O, build)]
"""


def install(fake_dist, site: Path, version: str, width: int, broken: bool = False) -> None:
    """(Re)install the distribution fake-versioned at ``version`` (whose default width is ``width``) in ``site``."""
    import importlib

    sys.modules.pop("fake_versioned", None)
    for old in site.glob("fake_versioned-*.dist-info"):
        shutil.rmtree(old)
    fake_dist("fake-versioned", "fake_versioned", "raise ImportError('half-installed')" if broken else
              VERSIONED.format(width=width), version=version)
    importlib.invalidate_caches()
    reset_manager()


@pytest.fixture
def saved(fake_dist, tmp_path) -> Path:
    install(fake_dist, tmp_path / "site", "1.0.0", width=8)
    torch.manual_seed(0)
    return save_model(build_model(ModelConfig(backbone="vb", input_size=32)), tmp_path / "run")


def test_config_records_resolved_options_and_every_provider(tmp_path):
    reset_manager()
    cfg = read_config(save_model(build_model(ModelConfig(backbone="cct", backbone_options=TINY, head="mlp", input_size=32)),
                                 tmp_path / "run"))
    options = cfg["model"]["backbone_options"]
    assert options["variant"] == "cct_2_3x2_32" and options["img_size"] == 32  # filled in from input_size
    assert {"drop_path_rate", "attention_dropout", "positional_embedding"} <= set(options)  # defaults recorded
    assert cfg["model"]["head_options"] == {"hidden": 512, "activation": "relu", "dropout": 0.3}
    assert cfg["plugins"]["backbone"] == {"name": "cct", "plugin": "cct", "distribution": "clotclf", "version": "0.1.0"}
    assert cfg["plugins"]["head"]["plugin"] == "heads" and cfg["plugin_api"]


def test_a_plugin_release_that_changes_a_default_leaves_old_runs_alone(fake_dist, saved, tmp_path, capsys):
    assert read_config(saved)["model"]["backbone_options"] == {"width": 8}
    install(fake_dist, tmp_path / "site", "2.0.0", width=16)  # the new release's default is another width
    model = load_model(saved)
    assert model.backbone[2].out_features == 8  # the recorded option, not the new default
    err = capsys.readouterr().err
    assert ("warning: model '" in err and "was saved with backbone 'vb' from fake-versioned 1.0.0; 2.0.0 is installed" in err
            and "pip install 'fake-versioned==1.0.0'" in err)


def test_missing_disabled_and_broken_providers_are_told_apart(fake_dist, saved, tmp_path):
    sys.modules.pop("fake_versioned", None)
    for info in (tmp_path / "site").glob("fake_versioned-*.dist-info"):  # uninstalled
        shutil.rmtree(info)
    reset_manager()
    with pytest.raises(ModelLoadError, match=r"needs backbone 'vb' from distribution fake-versioned 1\.0\.0, which is not "
                                             r"installed: pip install 'fake-versioned==1\.0\.0'"):
        load_model(saved)
    install(fake_dist, tmp_path / "site", "1.0.0", width=8)
    reset_manager(disabled=["fake_versioned"])
    with pytest.raises(ModelLoadError, match="which is disabled: plugin 'fake_versioned' .* is disabled: drop it from --disable-plugin"):
        load_model(saved)
    install(fake_dist, tmp_path / "site", "1.0.0", width=8, broken=True)
    with pytest.raises(ModelLoadError, match=r"which is broken: plugin 'fake_versioned' \(fake-versioned 1\.0\.0\) is installed but "
                                             r"broken \(ImportError: half-installed\)"):
        load_model(saved)


def test_rebuilding_a_saved_model_never_downloads_pretrained_weights(tmp_path, monkeypatch):
    import timm.models._builder as builder

    reset_manager()
    run = save_model(build_model(ModelConfig(backbone="poolformer", input_size=32)), tmp_path / "run")
    cfg = read_config(run)
    cfg["model"]["backbone_options"]["pretrained"] = True  # trained from ImageNet weights, as a real run would be
    (run / "config.json").write_text(json.dumps(cfg))
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(builder, "load_pretrained", no_network)
    monkeypatch.setattr(builder, "load_custom_pretrained", no_network)
    model = load_model(run)
    assert calls == [] and model.config.backbone_options["pretrained"] is True  # the record is kept as it was


def test_weights_changed_after_saving_are_refused(tmp_path):
    reset_manager()
    run = save_model(build_model(ModelConfig(backbone="cct", backbone_options=TINY, input_size=32)), tmp_path / "run")
    weights = run / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one flipped bit in a weight: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors' is not the file its config\.json describes \(sha256 .*"
                                             r"changed or damaged after the model was saved"):
        load_model(run)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"backbone_options": TINY | {"num_layers": 10**6}}, "describes a model with more than .* parameters and buffers, far more than its weights"),
        ({"backbone_options": TINY | {"embed_dim": 8192, "num_heads": 8}}, "far more than its weights"),
        ({"head": "mlp", "head_options": {"hidden": 10**7}}, "far more than its weights"),
        ({"input_size": 10**6}, r"option 'input_size': Input should be less than or equal to 2048"),
        ({"backbone_options": TINY | {"num_layers": "many"}}, "option 'num_layers'"),
        ({"labels": ["CE", "CE"]}, "repeat a label"),
        ({"backbone": "cct\x1b[2J"}, r"is not a component name .*\\x1b"),
    ],
)
def test_absurd_or_wrong_options_are_refused_before_memory_is_spent(tmp_path, change, pattern):
    reset_manager()
    run = save_model(build_model(ModelConfig(backbone="cct", backbone_options=TINY, input_size=32)), tmp_path / "run")
    cfg = read_config(run)
    cfg["model"] |= change
    (run / "config.json").write_text(json.dumps(cfg))
    for check in (check_buildable, load_model):
        start = time.perf_counter()
        with pytest.raises(ModelLoadError, match=pattern):
            check(run)
        assert time.perf_counter() - start < 30  # refused while building, not after exhausting memory


def test_loads_in_threads_leave_torch_as_they_found_it(tmp_path):
    import threading

    from torch import nn

    reset_manager()
    runs = [save_model(build_model(ModelConfig(backbone="cct", backbone_options=TINY, input_size=32)), tmp_path / f"r{i}")
            for i in range(2)]
    original = nn.Module.register_parameter
    errors = []

    def load(run):
        try:
            for _ in range(3):
                load_model(run)
                check_buildable(run)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(r,)) for r in runs * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and nn.Module.register_parameter is original  # the parameter guard is restored


def test_check_buildable_compares_shapes_without_building_for_real(tmp_path):
    reset_manager()
    run = save_model(build_model(ModelConfig(backbone="cct", backbone_options=TINY, input_size=32)), tmp_path / "run")
    result = check_buildable(run)
    assert result["parameters"] == sum(p.numel() for p in load_model(run).parameters())
    assert [(r["role"], r["name"], r["state"]) for r in result["needs"]] == [("backbone", "cct", "ok"), ("head", "linear", "ok")]
    cfg = read_config(run)
    cfg["model"]["labels"] = ["CE", "LAA", "OTHER"]
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"do not fit .*2 with other shapes \(e\.g\. head\.1\.bias: file \(2,\) vs model \(3,\)\)"):
        check_buildable(run)


def test_pipeline_providers_come_from_the_tileset_and_the_card_lists_what_to_install(tmp_path):
    from clotclf_core.models.card import render_model_card
    from clotclf_core.models.requirements import pipeline_provenance, requirements

    reset_manager()
    old = {"settings": {"filters": [{"name": "otsu", "options": {}}], "source": "auto"}}  # a TileSet before providers
    assert pipeline_provenance(old) == {"filters": [{"name": "otsu", "plugin": "otsu", "distribution": "clotclf",
                                                     "version": "0.1.0", "recorded_by": "train"}]}
    new = {"settings": {"filters": []}, "plugins": {
        "filters": [{"name": "mobilenetv3", "plugin": "mobilenetv3", "distribution": "clotclf", "version": "0.1.0"}],
        "sources": [{"name": "tifffile", "plugin": "tifffile", "distribution": "clotclf", "version": "0.1.0"}]}}
    assert [e["name"] for e in pipeline_provenance(new)["filters"]] == ["mobilenetv3"]
    assert pipeline_provenance({"settings": {"source": "openslide"}})["sources"][0]["distribution"] == "clotclf"
    assert pipeline_provenance(None) == {} and pipeline_provenance({"settings": "garbage"}) == {}

    model = build_model(ModelConfig(backbone="cct", backbone_options=TINY, input_size=32))
    run = save_model(model, tmp_path / "run", extra={"tileset": new})
    cfg = read_config(run)
    cfg["plugins"]["backbone"] |= {"distribution": "clotclf-cct-plus", "version": "2.1"}
    rows = requirements(cfg, pipeline=True)
    assert [(r["part"], r["role"], r["name"], r["installed"]) for r in rows] == [
        ("model", "backbone", "cct", False), ("model", "head", "linear", True),
        ("tiling", "filter", "mobilenetv3", True), ("tiling", "source", "tifffile", True)]
    card = render_model_card(cfg, {}, run_dir=run)
    section = card.split("## What must be installed")[1].split("##")[0]
    assert "| loading the model | backbone | `cct` | clotclf-cct-plus | 2.1 |" in section
    assert "| tiling new slides | filter | `mobilenetv3` | clotclf | 0.1.0 |" in section
    assert "pip install 'clotclf-cct-plus==2.1' 'clotclf==0.1.0'" in section


def teardown_module():
    reset_manager()
