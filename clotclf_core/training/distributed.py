"""Data-parallel set-up: the process group under ``torchrun``, the few collectives the trainer
needs, and ``clotclf train --nproc N`` (which starts N processes with torch's launcher)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clotclf_core.plugin.device import resolve_device
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import write_text

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.models.runtime import Runtime
    from clotclf_core.training.settings import TrainSettings


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


def _check_world_size(s: "TrainSettings", run_dir: Path, nproc: int) -> None:
    """The check each rank's Trainer.resume makes, once before N processes start (one line, not N)."""
    from clotclf_core.training.checkpoints import LAST, checkpoint_state

    folds = range(s.folds) if s.fold == "all" else [int(s.fold)]
    for k in folds:
        fold_dir = run_dir / f"fold_{k}" if s.fold == "all" else run_dir
        state = checkpoint_state(fold_dir / "checkpoints" / LAST)
        if state is not None and int(state.get("world_size", 1)) != nproc:
            world = int(state.get("world_size", 1))
            how = f"with --nproc {world}" if world > 1 else "in one process (without --nproc)"
            raise ClotclfError(
                f"--resume: fold {k} in '{fold_dir}' was trained in {world} process(es), not {nproc}: the batches of each "
                f"step and the LR schedule depend on it. Resume it {how}, or start a new run with another --out")


def launch_distributed(s: "TrainSettings", nproc: int, resume: bool, quiet: bool, as_json: bool = False) -> int:
    """``clotclf train --nproc N``: resolve the data and run directory here, then start N processes
    with torch.distributed's launcher (``torchrun --standalone``) on the resolved settings."""
    import subprocess

    import yaml

    from clotclf_core.training.demo import prepare_demo
    from clotclf_core.training.prepare import check_model_options, check_out, default_out, prepare_run
    from clotclf_core.training.settings import settings_dict

    if nproc < 2:
        raise ClotclfError(
            f"--nproc must be at least 2 for data-parallel training (got {nproc}); leave it out for one process"
        )
    check_model_options(s)
    if s.tiles is None and s.features is None:
        s = s.model_copy(update={"tiles": str(prepare_demo(s.demo_dir, not (quiet or as_json)))})
    if not s.out:
        s = s.model_copy(update={"out": default_out(s)})
    run_dir = Path(s.out)
    check_out(s, run_dir, resume)
    prepare_run(s, run_dir, resume)  # the ranks' own checks, once here: a refusal is one line, before N processes start
    if resume:
        _check_world_size(s, run_dir, nproc)
    run_dir.mkdir(parents=True, exist_ok=True)
    launch_cfg = run_dir / "launch.yaml"
    write_text(launch_cfg, yaml.safe_dump(settings_dict(s), sort_keys=False))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "clotclf_core.cli", "train", "--config", str(launch_cfg)]
    cmd += (["--resume"] if resume else []) + (["--json"] if as_json else ["--quiet"] if quiet else [])
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise ClotclfError(f"data-parallel training failed (exit code {code}); the first error is printed above")
    launch_cfg.unlink(missing_ok=True)  # training.yaml in the run directory holds the same settings
    return code
