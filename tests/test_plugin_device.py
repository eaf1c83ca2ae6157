"""clotclf_core.plugin.device.resolve_device: the one auto|cpu|cuda[:N] resolver (the core's --device,
the process group, a plugin's own device option)."""

from __future__ import annotations

import pytest
import torch

from clotclf_core.plugin.device import resolve_device
from clotclf_core.plugin.errors import ClotclfError


@pytest.mark.parametrize("gpus", [0, 2])
def test_resolution(monkeypatch, gpus):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert resolve_device("auto") == torch.device("cuda" if gpus else "cpu")
    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    if gpus:
        assert resolve_device("cuda") == torch.device("cuda")
        assert resolve_device("cuda:1") == torch.device("cuda:1")
        with pytest.raises(ClotclfError, match=r"device 'cuda:2' does not exist: this machine has 2 GPU\(s\), cuda:0 to cuda:1"):
            resolve_device("cuda:2")
    else:
        for asked in ("cuda", "cuda:0"):
            with pytest.raises(ClotclfError, match=f"device '{asked}' was asked for, but torch sees no CUDA GPU here: use cpu"):
                resolve_device(asked)


def test_what_is_not_a_device():
    for bad in ("gpu0", "cuda:x", "cpu:1", "", "mps:0", "auto:1"):
        with pytest.raises(ClotclfError, match="is not a torch device clotclf runs on: choose auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    with pytest.raises(ClotclfError, match="choose auto, cpu or cuda$"):  # the core's commands: one GPU per process
        resolve_device("cuda:0", indexed=False)


def test_the_core_runtime_and_process_group_use_it(monkeypatch):
    from clotclf_core.models.runtime import pick_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_runtime("auto").device == torch.device("cpu")
    with pytest.raises(ClotclfError, match="no CUDA GPU"):
        pick_runtime("cuda")
    with pytest.raises(ClotclfError, match="not a torch device"):
        pick_runtime("tpu")
