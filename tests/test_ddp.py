"""Data-parallel training: `clotclf train --nproc 2` starts two gloo processes on the CPU with
torch.distributed's launcher; the run must finish, only rank 0 writes, each rank trains on half
of the tiles, and the run directory has the shape of a single-process run's."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
from test_data import make_tileset
from test_train import TINY_CCT, settings

from clotclf_core.models.saved import load_model
from clotclf_core.plugin import load_state
from clotclf_core.training.checkpoints import read_checkpoint
from clotclf_core.training.run import train


def _optimizer_steps(run) -> int:
    _, opt_state, _, _ = read_checkpoint(run / "checkpoints" / "last.safetensors")
    return int(next(iter(opt_state["state"].values()))["step"])


def test_two_gloo_processes_train_like_one(tmp_path):
    tiles = make_tileset(tmp_path / "tiles", n_patients=8, tiles_per_slide=4, size=32)
    single = tmp_path / "single"
    train(settings(tiles, single, epochs=1, batch_size=4), progress=False)

    ddp = tmp_path / "ddp"
    opts = [arg for k, v in TINY_CCT.items() for arg in ("--backbone-opt", f"{k}={v}")]
    cmd = [sys.executable, "-m", "clotclf_core.cli", "train", "--tiles", str(tiles), "--out", str(ddp), "--backbone", "cct",
           *opts, "--epochs", "1", "--batch-size", "4", "--folds", "2", "--lr", "0.002", "--warmup-epochs", "0",
           "--patience", "0", "--workers", "0", "--device", "cpu", "--nproc", "2", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    # same files, same shapes, loadable
    files = lambda run: sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())  # noqa: E731
    assert files(ddp) == files(single)
    a, b = load_state(single / "model.safetensors"), load_state(ddp / "model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert load_model(ddp).labels == ["CE", "LAA"]
    ha, hb = pd.read_csv(single / "history.csv"), pd.read_csv(ddp / "history.csv")
    assert list(ha.columns) == list(hb.columns) and len(ha) == len(hb) == 1
    ma, mb = json.loads((single / "metrics.json").read_text()), json.loads((ddp / "metrics.json").read_text())
    assert ma.keys() == mb.keys() and ma["val"]["patient"]["n"] == mb["val"]["patient"]["n"]
    # the same patients validate, and each of the two ranks took half the steps over the same tiles
    ca, cb = json.loads((single / "config.json").read_text()), json.loads((ddp / "config.json").read_text())
    assert ca["split"]["val"] == cb["split"]["val"]
    assert _optimizer_steps(single) == 4 and _optimizer_steps(ddp) == 2  # 16 training tiles, 4 per batch
