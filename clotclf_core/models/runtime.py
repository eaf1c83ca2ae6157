"""Where tensors run: the device, precision, memory format and data-parallel rank (:class:`Runtime`),
resolved once from ``--device`` (:func:`pick_runtime`) for training, embedding, scoring and predicting."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clotclf_core.models.inputs import to_input
from clotclf_core.plugin.device import resolve_device

if TYPE_CHECKING:  # pragma: no cover - torch is imported where tensors are made
    import torch
@dataclass
class Runtime:
    """Where and how tensors run: device, precision, memory format, and the data-parallel group."""

    device: "torch.device"
    precision: str = "fp32"  # "fp32" | "bf16"
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        import torch

        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_input(self, images: "torch.Tensor", mean, std) -> "torch.Tensor":
        """uint8 (B, 3, H, W) batch from the loader -> normalised float on the device (channels-last
        on request): :func:`clotclf_core.models.inputs.to_input`."""
        return to_input(images, mean, std, self.device, channels_last=self.channels_last)

    def place(self, model):
        """``model`` on this device (and channels-last when asked); returns it."""
        import torch

        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model


def pick_runtime(device: str = "auto", precision: str = "auto", channels_last: str | bool = "auto",
                 rank: int = 0, world_size: int = 1, local_rank: int = 0) -> Runtime:
    """``auto``: CUDA with bf16 autocast and channels-last when a GPU is there, else CPU in fp32."""
    import torch

    dev = resolve_device(device, indexed=False)  # one GPU per process: this rank's
    dev = torch.device(f"cuda:{local_rank}") if dev.type == "cuda" else dev
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if channels_last == "auto":
        channels_last = dev.type == "cuda"
    return Runtime(dev, precision, bool(channels_last), rank, world_size)
