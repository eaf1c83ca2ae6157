"""The Python API (`import clotclf`, docs/api.md): one function per command, the settings objects
the CLI builds, result objects; the notebook-style walkthrough in examples/ runs end to end."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_predict import write_slide

import clotclf

REPO = Path(__file__).resolve().parents[1]
WALKTHROUGH = REPO / "examples" / "clotclf_api_walkthrough" / "walkthrough.py"


def test_import_clotclf_is_light_and_is_installed_as_a_package():
    code = "import sys, clotclf; assert 'torch' not in sys.modules and 'timm' not in sys.modules; print(clotclf.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert Path(out.stdout.strip()) == REPO / "clotclf" / "__init__.py"
    assert set(clotclf.__all__) >= {"tile", "embed", "train", "evaluate", "predict", "push", "pull", "Run", "Evaluation"}


def test_settings_objects_or_their_fields_not_both(tmp_path):
    from clotclf_core.plugin.errors import ClotclfError
    from clotclf_core.tiling.settings import TileSettings
    from clotclf_core.training.settings import TrainSettings

    with pytest.raises(ClotclfError, match="give settings= or the settings' fields"):
        clotclf.tile(tmp_path, tmp_path / "t", settings=TileSettings(), downsample=2)
    with pytest.raises(ClotclfError, match="give settings= or the settings' fields"):
        clotclf.train(TrainSettings(tiles=str(tmp_path)), epochs=1)
    with pytest.raises(ClotclfError, match="tile_size"):  # a bad field is the CLI's one-line error
        clotclf.tile(tmp_path, tmp_path / "t", tile_size=-3)


def test_the_walkthrough_runs_from_slides_to_a_pulled_model(tmp_path, monkeypatch):
    """The example script, on small synthetic slides (its own cohort generator is the demo's)."""
    slides = tmp_path / "slides"
    slides.mkdir()
    rows = []
    for p in range(6):
        for k in range(2):
            write_slide(slides / f"p{p}_{k}.tif", ((600 + 90 * k, 500, 380 + 20 * p), (1400, 1000, 300)), 10 * p + k,
                        size=(2000, 1600))
            rows.append({"image_id": f"p{p}_{k}", "patient_id": f"p{p}", "label": "CE" if p % 2 else "LAA"})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    for key in ("CLOTCLF_REGISTRY", "CLOTCLF_NAMESPACE", "CLOTCLF_CONFIG", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(sys, "argv", [str(WALKTHROUGH), str(tmp_path / "work"), str(slides), str(tmp_path / "train.csv")])
    scope = runpy.run_path(str(WALKTHROUGH), run_name="__main__")
    run, frame, pulled = scope["run"], scope["frame"], scope["pulled"]
    assert isinstance(run, clotclf.Run) and run.headline["n_patients"] >= 1 and (run.path / "model.safetensors").is_file()
    assert isinstance(scope["report"], clotclf.Evaluation) and len(scope["report"].predictions)
    assert set(frame.loc[frame["level"] == "patient", "patient_id"]) == {f"p{p}" for p in range(6)}
    assert (tmp_path / "work" / "predictions" / "submission.csv").read_text().startswith("patient_id,CE,LAA\n")
    assert (Path(pulled.path) / "model.safetensors").read_bytes() == (run.path / "model.safetensors").read_bytes()
    import torch

    x = torch.zeros(1, 3, 32, 32)
    assert torch.equal(pulled.load_model()(x), run.load_model()(x))
