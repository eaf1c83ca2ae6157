"""The third-party plugin in examples/ installs as its own distribution and works end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from example_site import env_with, install_example


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """pip-install the example distribution into its own folder (real wheel build, real entry point)."""
    target = install_example("clotclf-example-resnet", tmp_path_factory)
    assert list(target.glob("clotclf_example_resnet-*.dist-info"))
    return target


def _env(site):
    return env_with(site)


def test_listed_through_entry_point(site):
    out = subprocess.run(
        [sys.executable, "-m", "clotclf_core.cli", "list-plugins", "--kind", "backbone", "--json"],
        env=_env(site), capture_output=True, text=True, check=True,
    ).stdout
    row = next(r for r in json.loads(out) if r["name"] == "resnet")
    assert row["distribution"] == "clotclf-example-resnet" and row["version"] == "0.1.0" and row["status"] == "ok"


def test_builds_trains_saves_and_reloads(site, tmp_path):
    code = f"""
import torch
from clotclf_core.models.config import ModelConfig
from clotclf_core.models.build import build_model
from clotclf_core.models.saved import load_model, save_model
torch.manual_seed(0)
m = build_model(ModelConfig(backbone="resnet", head="linear", input_size=32))
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
x = torch.randn(4, 3, 32, 32); y = torch.tensor([0, 1, 0, 1])
loss = torch.nn.functional.cross_entropy(m(x), y); loss.backward(); opt.step()
save_model(m, r"{tmp_path}/run")
m.eval(); r = load_model(r"{tmp_path}/run")
with torch.no_grad():
    assert torch.equal(m(x), r(x))
import json
cfg = json.load(open(r"{tmp_path}/run/config.json"))
print(cfg["plugins"]["backbone"]["distribution"], float(loss))
"""
    out = subprocess.run([sys.executable, "-c", code], env=_env(site), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("clotclf-example-resnet ")


def test_its_author_can_smoke_test_it_as_in_ci(site):
    out = subprocess.run(
        [sys.executable, "-m", "clotclf_core.cli", "smoke-test", "clotclf-example-resnet", "--json"],
        env=_env(site), capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    [row] = json.loads(out.stdout)
    assert (row["plugin"], row["kind"], row["name"], row["status"]) == ("example_resnet", "backbone", "resnet", "ok")
    assert row["checks"] == "build, features, train step, batch of 1, save/load"
    listed = subprocess.run([sys.executable, "-m", "clotclf_core.cli", "list-plugins", "--json"], env=_env(site),
                            capture_output=True, text=True, check=True).stdout
    assert next(r for r in json.loads(listed) if r["name"] == "resnet")["api"] == ">=2.0,<3"
