"""The third-party aggregator in examples/ installs as its own distribution and follows the contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from example_site import env_with, install_example


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """pip-install the example distribution into its own folder (real wheel build, real entry point)."""
    target = install_example("clotclf-example-aggregator", tmp_path_factory)
    assert list(target.glob("clotclf_example_aggregator-*.dist-info"))
    return target


def _env(site):
    return env_with(site)


def test_listed_through_entry_point(site):
    out = subprocess.run(
        [sys.executable, "-m", "clotclf_core.cli", "list-plugins", "--kind", "aggregator", "--json"],
        env=_env(site), capture_output=True, text=True, check=True,
    ).stdout
    row = next(r for r in json.loads(out) if r["name"] == "topk")
    assert row["distribution"] == "clotclf-example-aggregator" and row["version"] == "0.1.0" and row["status"] == "ok"


def test_follows_the_contract_and_trains(site):
    code = """
import torch
from clotclf_core.models.aggregate import build_aggregator, run_aggregator
torch.manual_seed(0)
agg = build_aggregator("topk", {"k": 3, "hidden": 8}, 6, 2)
assert agg.clotclf_record["distribution"] == "clotclf-example-aggregator"
bags = torch.randn(3, 5, 6)
mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
logits, att = run_aggregator(agg, bags, mask, return_attention=True)
assert logits.shape == (3, 2) and att.shape == (3, 5) and torch.isfinite(logits).all()
assert torch.all(att[~mask] == 0) and (att[0] > 0).sum() == 3
assert torch.allclose(att.sum(1), torch.tensor([1.0, 1.0, 0.0]))
junk = bags.clone(); junk[~mask] = 1e4
assert torch.allclose(run_aggregator(agg, junk, mask)[0], logits)  # padding changes nothing
opt = torch.optim.Adam(agg.parameters(), 1e-2)
loss = torch.nn.functional.cross_entropy(run_aggregator(agg, bags, mask)[0], torch.tensor([0, 1, 0]))
loss.backward(); opt.step()
assert all(torch.isfinite(p.grad).all() for p in agg.parameters())
print("ok", float(loss))
"""
    out = subprocess.run([sys.executable, "-c", code], env=_env(site), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok ")


def test_passes_the_smoke_test_kit_the_docs_promise(site):
    """docs/plugins.md, 7: `clotclf smoke-test DIST` is what a plugin author runs in CI."""
    out = subprocess.run(
        [sys.executable, "-m", "clotclf_core.cli", "smoke-test", "clotclf-example-aggregator", "--json"],
        env=_env(site), capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert [(r["kind"], r["name"], r["status"]) for r in rows] == [("aggregator", "topk", "ok")]
