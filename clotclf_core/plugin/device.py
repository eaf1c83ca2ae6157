"""Which torch device to run on: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, resolved in one place
for the core's ``--device`` (training, embedding, evaluation, prediction, the process group) and a
plugin's own ``device`` option (e.g. the ``mobilenetv3`` filter).

Importing this module does not import torch; :func:`resolve_device` does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from clotclf_core.plugin.errors import ClotclfError

if TYPE_CHECKING:  # pragma: no cover - torch is imported by the function
    import torch

_FORM = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(device: str = "auto", *, indexed: bool = True) -> "torch.device":
    """``auto``: ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``; ``cuda``; ``cuda:N`` (with
    ``indexed``; the core's commands pick the GPU themselves, one per process). A GPU asked for
    that is not there, or anything else, is one :class:`ClotclfError` saying what to write instead."""
    import torch

    choices = "auto, cpu, cuda or cuda:N" if indexed else "auto, cpu or cuda"
    text = str(device).strip().lower()
    match = _FORM.match(text)
    if match is None or (match.group(2) is not None and (match.group(1) != "cuda" or not indexed)):
        raise ClotclfError(f"device '{device}' is not a torch device clotclf runs on: choose {choices}")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ClotclfError(f"device '{device}' was asked for, but torch sees no CUDA GPU here: use cpu (or auto)")
    if index is not None and int(index) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ClotclfError(f"device '{device}' does not exist: this machine has {n} GPU(s), cuda:0 to cuda:{n - 1}")
    return torch.device(text)
