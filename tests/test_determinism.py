"""Same seed, same result: bit-identical weights, history and metrics whatever ``--workers`` is,
and after a real SIGKILL in epoch 2 followed by ``--resume``.

Everything runs as real child processes of ``clotclf train`` with the *default* number of loader
workers (persistent worker processes), dropout, drop-path and augmentation on: the set-up in
which the DataLoader once drew its seed from the dropout stream. A tiny CCT on a tiny TileSet
keeps each run to a few seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml
from test_data import make_tileset
from test_train import TINY_CCT

from clotclf_core.plugin import load_state
from clotclf_core.training.checkpoints import checkpoint_state, state_digest

MODEL = {**TINY_CCT, "dropout": 0.2}  # plus the CCT's own attention dropout 0.1 and drop-path 0.1
TIMING = ["images_per_s", "seconds"]


def _cmd(tiles, out, *extra):
    opts = [a for k, v in MODEL.items() for a in ("--backbone-opt", f"{k}={v}")]
    return [sys.executable, "-m", "clotclf_core.cli", "train", "--tiles", str(tiles), "--out", str(out), "--backbone",
            "cct", *opts, "--epochs", "3", "--batch-size", "8", "--folds", "2", "--lr", "0.002", "--warmup-epochs", "0.5",
            "--patience", "0", "--test-fraction", "0.25", "--device", "cpu", "--quiet", *extra]


def _env():
    return {**os.environ, "CLOTCLF_PROGRESS": "off", "OMP_NUM_THREADS": "1"}


def _train(tiles, out, *extra):
    done = subprocess.run(_cmd(tiles, out, *extra), capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def weights_digest(path) -> str:
    return state_digest(load_state(path))


def _fingerprint(run):
    """What must be bit-identical: the weights, history (timing columns aside), metrics, predictions."""
    history = pd.read_csv(run / "history.csv").drop(columns=TIMING)
    return {
        "weights": weights_digest(run / "model.safetensors"),
        "history": history.to_csv(index=False),
        "metrics": json.loads((run / "metrics.json").read_text()),
        "predictions": (run / "predictions_val.csv").read_text() + (run / "predictions_test.csv").read_text(),
    }


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return make_tileset(tmp_path_factory.mktemp("det") / "tiles", n_patients=12, tiles_per_slide=8, size=32)


def test_same_result_with_0_1_2_workers_and_after_sigkill_in_epoch_2(tiles, tmp_path):
    """0 workers straight through, against: the default 2 persistent workers for epochs 1-2, SIGKILL
    in epoch 2, then --resume with 1 worker for the rest (benchmarks/determinism.py also runs 1 and 2
    straight through)."""
    _train(tiles, tmp_path / "w0", "--workers", "0")
    killed = tmp_path / "killed"
    child = subprocess.Popen(_cmd(tiles, killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
                             start_new_session=True)  # its own process group: the loader workers die with it
    history = killed / "history.csv"
    deadline = time.monotonic() + 240
    while not (history.is_file() and len(history.read_text().splitlines()) >= 2):  # epoch 1 saved: epoch 2 runs
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "epoch 1 never finished"
        time.sleep(0.002)
    os.killpg(child.pid, signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    state = checkpoint_state(killed / "checkpoints" / "last.safetensors")
    assert state is not None and state["epoch"] == 0, "the kill did not land in epoch 2"
    assert not (killed / "model.safetensors").exists()
    assert yaml.safe_load((killed / "training.yaml").read_text())["workers"] == 2  # the default: 2 persistent workers
    _train(tiles, killed, "--resume", "--workers", "1")  # resumed, with yet another worker count

    a, b = _fingerprint(tmp_path / "w0"), _fingerprint(killed)
    for what in ("weights", "history", "metrics", "predictions"):
        assert a[what] == b[what], f"the killed and resumed run differs from the 0-worker run in its {what}"
    assert len(pd.read_csv(tmp_path / "w0" / "history.csv")) == 3


def test_each_rank_gets_its_own_dropout_seed():
    from clotclf_core import seeds

    draws = []
    for rank in (0, 1):
        seeds.seed_epoch(7, 0, 3, rank)
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])
    seeds.seed_epoch(7, 0, 3, 0)
    assert torch.equal(torch.rand(4), draws[0])


def test_making_a_loader_iterator_leaves_the_global_rng_alone(tiles):
    """The cause of the old drift: DataLoader.__iter__ drew its base seed from the global RNG."""
    import numpy as np

    from clotclf_core.tiling.dataset import EpochSampler, TileDataset, make_loader
    from clotclf_core.tiling.tileset import TileSet

    ts = TileSet(tiles)
    ds = TileDataset(ts, np.arange(16), ["CE", "LAA"])
    loader = make_loader(ds, EpochSampler(16, 0), 4, workers=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)
