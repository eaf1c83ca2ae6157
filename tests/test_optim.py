"""The trainer's optimizer and LR schedule (clotclf_core.training.loop): which parameters decay, the
schedule's exact floats (the demo's reference weights depend on every bit), and its state round trip."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch
from test_data import make_tileset

from clotclf_core.plugin import ClotclfError
from clotclf_core.training import loop
from clotclf_core.training.loop import make_optimizer, make_scheduler
from clotclf_core.training.run import train
from clotclf_core.training.settings import resolve_settings

#: the demo's schedule (lr 1e-3, min 1e-6, 1 warm-up epoch, 10 epochs of 17 steps): the LR at the start
#: of each epoch as its history.csv recorded it in the reference run (state_digest e1a43696...)
DEMO_EPOCH_LRS = [5.882352941176471e-05, 0.001, 0.0009698764640825613, 0.0008831391993379295, 0.0007502499999999999,
                  0.0005872372647446318, 0.00041376273525536834, 0.0002507500000000001]
#: sha256 of all 170 LRs of that schedule as little-endian float64s
DEMO_LRS_SHA256 = "7df7048d6879fab08c1447cda8e15ca22a26c611ab0bf668fe6955a38966f5ba"


def lrs(opt, scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


def demo_optimizer():
    s = resolve_settings(None, {"epochs": 10, "lr": 1e-3, "warmup_epochs": 1.0, "min_lr": 1e-6})
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=s.lr)
    return s, opt


def test_weight_decay_on_matrices_and_kernels_only_decay_group_first():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[4].bias.requires_grad_(False)  # frozen: in no group
    s = resolve_settings(None, {"weight_decay": 0.05, "lr": 1e-3})
    opt = make_optimizer(model, s, "cpu")
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert [p.ndim for p in decayed["params"]] == [4, 2]  # conv kernel, linear weight
    assert all(p.ndim == 1 for p in plain["params"]) and len(plain["params"]) == 5  # conv bias, 2 norms' gain + shift
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)


def test_the_cosine_schedule_gives_the_reference_floats():
    s, opt = demo_optimizer()
    got = lrs(opt, make_scheduler(opt, s, 17), 170)
    assert got[0:8 * 17:17] == DEMO_EPOCH_LRS  # exact
    assert hashlib.sha256(struct.pack("<170d", *got)).hexdigest() == DEMO_LRS_SHA256
    assert got[16] == got[17] == 1e-3 and min(got) > 1e-6  # the peak after warm-up, never below the floor


@pytest.mark.parametrize("stop", [5, 17, 100])
def test_a_restored_schedule_continues_with_the_same_floats(stop):
    s, opt = demo_optimizer()
    straight = lrs(opt, make_scheduler(opt, s, 17), 170)
    s, opt = demo_optimizer()
    first = make_scheduler(opt, s, 17)
    head = lrs(opt, first, stop)
    state = {"opt": opt.state_dict(), "scheduler": first.state_dict()}
    s, opt = demo_optimizer()  # a new process: fresh optimizer and scheduler, then the checkpoint's state
    again = make_scheduler(opt, s, 17)
    opt.load_state_dict(state["opt"])
    again.load_state_dict(state["scheduler"])
    assert head + lrs(opt, again, 170 - stop) == straight


def test_plateau_and_constant_schedules():
    s = resolve_settings(None, {"schedule": "plateau", "lr": 1e-3, "plateau_factor": 0.5, "plateau_patience": 0,
                                "min_lr": 3e-4})
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=s.lr)
    plateau = make_scheduler(opt, s, 17)
    for loss in (1.0, 1.0, 1.0, 1.0):
        plateau.step(loss)
    assert opt.param_groups[0]["lr"] == 3e-4  # halved, then held at min_lr
    assert make_scheduler(opt, resolve_settings(None, {"schedule": "constant"}), 17) is None


def test_resume_with_an_optimizer_state_of_other_groups_is_one_clear_error(tmp_path, monkeypatch):
    """A checkpoint whose optimizer groups do not fit (another model, or a clotclf version that grouped
    the parameters otherwise) is refused by name, not with torch's traceback."""
    tiles = make_tileset(tmp_path / "tiles", n_patients=6, tiles_per_slide=2, size=32)
    values = {"tiles": str(tiles), "out": str(tmp_path / "run"), "backbone": "cct", "workers": 0, "batch_size": 8,
              "backbone_options": {"variant": "cct_2_3x2_32", "img_size": 32, "num_layers": 1, "embed_dim": 16,
                                   "num_heads": 2}, "epochs": 2, "folds": 2, "warmup_epochs": 0.0, "patience": 0}

    class Interrupt(Exception):
        pass

    def stop(epoch, trainer):  # in epoch 2, after epoch 1's checkpoint
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(resolve_settings(None, values), progress=False, after_train_epoch=stop)
    monkeypatch.setattr(loop, "make_optimizer", lambda model, s, device: torch.optim.AdamW(model.parameters(), lr=s.lr))
    with pytest.raises(ClotclfError, match=r"--resume: the optimizer state in .*last.safetensors' does not fit"):
        train(resolve_settings(None, values), resume=True, progress=False)
