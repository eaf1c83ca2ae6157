"""A pushed model whose backbone timm built loads in timm itself, through timm's own `hf-hub:`
loader against the stand-in Hub (issue 17): the trained trunk, `backbone.` prefix stripped,
safetensors only; clotclf's config stays where clotclf reads it; CCT (clotclf's own) carries none."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub

from test_registry import NS, Registry, make_run, start_hub  # noqa: E402
from tilesets import TINY_TIMM  # noqa: E402
from timm_repos import point_client_at  # noqa: E402


@pytest.fixture
def reg(tmp_path):
    server = start_hub()
    yield Registry("hub", tmp_path, server)
    server.stop()


def _timm_run(path: Path) -> Path:
    import torch

    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.saved import save_model

    torch.manual_seed(5)
    cfg = ModelConfig(backbone="timm", backbone_options=dict(TINY_TIMM), input_size=32, mean=(0.6, 0.5, 0.4), std=(0.2, 0.25, 0.3))
    save_model(build_model(cfg), path, extra={"training": {"seed": 5}})
    (path / "metrics.json").write_text('{"patient": {"weighted_log_loss": 0.6}}')
    return path


def test_timm_loads_the_trained_trunk_of_a_pushed_timm_backbone(reg, tmp_path, monkeypatch):
    import timm
    import torch

    from clotclf_core.models.saved import load_model
    from clotclf_core.plugin import load_state

    run = _timm_run(tmp_path / "run")
    result = reg.push(run, repo="tiny-vit")
    assert "timm/model.safetensors" in result.files and "timm/config.json" in result.files
    point_client_at(monkeypatch, reg.hub.url, tmp_path / "timm-cache")
    trunk = timm.create_model(f"hf-hub:{NS}/tiny-vit", pretrained=True)  # timm's own loader, over HTTP
    ours = load_model(run).eval()
    state = load_state(run / "model.safetensors")
    trunk_state = trunk.state_dict()
    assert set(trunk_state) == {k.removeprefix("backbone.") for k in state if k.startswith("backbone.")}
    assert all(torch.equal(trunk_state[k], state["backbone." + k]) for k in trunk_state)  # the trained weights
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(trunk.eval()(x), ours.backbone(x), atol=1e-6)
    assert trunk.num_classes == 0 and tuple(trunk.pretrained_cfg["mean"]) == (0.6, 0.5, 0.4) and trunk.pretrained_cfg["tag"] == "clotclf"
    # clotclf's config stays where clotclf reads it, and a clotclf pull does not fetch timm/
    pulled = reg.pull("tiny-vit")
    assert "timm/model.safetensors" not in pulled.files and pulled.ignored == []
    config = json.loads((Path(pulled.path) / "config.json").read_text())
    assert config["model"]["backbone"] == "timm" and config["architecture"] == "vit_tiny_patch16_224"
    assert torch.allclose(load_model(pulled.path)(x), ours(x))


def test_cct_is_clotclf_only_and_carries_no_timm_export(reg, tmp_path):
    run = make_run(tmp_path / "cct", seed=1)
    result = reg.push(run, repo="cct")
    assert not any(f.startswith("timm/") for f in result.files)
    config = json.loads((Path(reg.pull("cct").path) / "config.json").read_text())
    assert "architecture" not in config and "pretrained_cfg" not in config


# ----------------------------------------------------------------------------- fold ensembles (D2, push side)


def _cv_folder(root: Path) -> Path:
    """A finished `--fold all` folder as training leaves it: fold_k/ run directories, cv.json, the summary."""
    for k in range(2):
        make_run(root / f"fold_{k}", seed=10 + k)
    (root / "cv.json").write_text(json.dumps({"folds": ["fold_0", "fold_1"], "split": {"test": ["patient-0042"]}}))
    (root / "split.json").write_text(json.dumps({"test": ["patient-0042"], "folds": [{"train": ["patient-0007"], "val": []}]}))
    (root / "metrics.json").write_text(json.dumps({"headline": {"on": "oof", "n_patients": 8},
                                                   "oof": {"patient": {"weighted_log_loss": 0.61}}}))
    (root / "plots").mkdir()
    (root / "plots" / "oof_roc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    return root


@pytest.mark.parametrize("kind", ["hub", "local"])
def test_a_cross_validation_folder_is_pushed_and_pulled_as_the_ensemble_of_its_folds(kind, tmp_path):
    import torch

    from clotclf_core.models.runs import fold_runs
    from clotclf_core.models.saved import load_model

    server = start_hub() if kind == "hub" else None
    try:
        reg = Registry(kind, tmp_path, server)
        cv = _cv_folder(tmp_path / "cv")
        result = reg.push(cv, repo="cv")
        assert {"config.json", "README.md", "metrics.json", "plots/oof_roc.png", "fold_0/model.safetensors",
                "fold_0/config.json", "fold_0/metrics.json", "fold_1/model.safetensors"} <= set(result.files)
        assert "cv.json" not in result.files and "split.json" not in result.files
        pulled = reg.pull("cv")
        members = fold_runs(pulled.path)  # the one reader, on the pulled folder as on the run folder
        assert [m.name for m in members] == ["fold_0", "fold_1"]
        x = torch.randn(2, 3, 32, 32)
        for member, fold in zip(members, fold_runs(cv)):
            assert torch.equal(load_model(member)(x), load_model(fold)(x))
        root = json.loads((Path(pulled.path) / "config.json").read_text())
        assert root["kind"] == "fold_ensemble" and root["n_folds"] == 2 and pulled.weights_sha256 == root["weights_sha256"]
        assert pulled.needs and pulled.needs[0]["name"] == "cct"
        card = (Path(pulled.path) / "README.md").read_text()
        assert "ensemble_of_folds: 2" in card and "patient-0042" not in card
        # an unfinished cross-validation is refused by name, nothing pushed
        (tmp_path / "half" / "fold_0").mkdir(parents=True)
        from clotclf_registry.errors import RegistryError

        with pytest.raises(RegistryError, match="did not finish .* but no cv.json.*--resume"):
            reg.push(tmp_path / "half", repo="half")
    finally:
        if server is not None:
            server.stop()
