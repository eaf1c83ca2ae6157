"""Data-parallel set-up: the process group under ``torchrun`` and the few collectives the trainer
needs. (``clotclf train --nproc N``, which starts N processes: :mod:`clotclf_core.training.launch`.)"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from clotclf_core.plugin.device import resolve_device

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.models.runtime import Runtime


def init_distributed(device: str) -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device, indexed=False).type == "cuda"
    if use_cuda:  # before any CUDA work, so NCCL and every collective use this rank's GPU, not GPU 0
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # on CUDA, NCCL for CUDA tensors (DDP's gradients) and gloo for CPU ones: the object
        # collectives (broadcast_object_list, all_gather_object) and barrier then go over gloo, in CPU memory
        dist.init_process_group("cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    return rank, world, local_rank


def barrier(rt: "Runtime") -> None:
    if rt.distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast(rt: "Runtime", value: Any) -> Any:
    """Rank 0's ``value`` on every rank (over gloo, in CPU memory: see :func:`init_distributed`)."""
    if not rt.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(rt: "Runtime", values: list[float]) -> list[float]:
    """``values`` summed over the data-parallel ranks. The tensor is made on ``rt.device``: the CUDA
    backend (NCCL) refuses CPU tensors, and on the CPU the device is the CPU anyway."""
    if not rt.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    totals = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(totals)
    return totals.tolist()
