"""``clotclf train --nproc N``: resolve the data and the run directory once, run the checks once
(a refusal is one line, not N), then start N processes with torch.distributed's launcher
(``torchrun --standalone``) on the resolved settings. Each process then trains as under
``torchrun`` (:mod:`clotclf_core.training.distributed`, :func:`clotclf_core.training.run.train`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import write_text
from clotclf_core.training.checkpoints import LAST, checkpoint_state
from clotclf_core.training.demo import prepare_demo
from clotclf_core.training.prepare import check_model_options, check_out, default_out, prepare_run
from clotclf_core.training.settings import TrainSettings, settings_dict
from clotclf_core.training.tracking import check_trackers


def _check_world_size(s: TrainSettings, run_dir: Path, nproc: int) -> None:
    """The check each rank's Trainer.resume makes, once before N processes start (one line, not N)."""
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


def launch_distributed(s: TrainSettings, nproc: int, resume: bool, quiet: bool, as_json: bool = False,
                       track: tuple[str, ...] = ()) -> int:
    """``clotclf train --nproc N``: resolve the data and run directory here, then start N processes
    with torch.distributed's launcher (``torchrun --standalone``) on the resolved settings."""
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
    cmd += [a for kind in check_trackers(track) for a in ("--track", kind)]  # rank 0 tracks
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise ClotclfError(f"data-parallel training failed (exit code {code}); the first error is printed above")
    launch_cfg.unlink(missing_ok=True)  # training.yaml in the run directory holds the same settings
    return code
