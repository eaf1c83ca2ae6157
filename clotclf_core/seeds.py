"""Where every random number of a run comes from: one ``--seed``, mixed with where it is used.

The same seed gives bit-identical weights, history and metrics whatever ``--workers`` is, and
after any resume, because nothing draws from a stream another part also draws from:

============================  ==========================================  =====================================
randomness                    seeded from                                 where
============================  ==========================================  =====================================
model initialisation          (seed, fold, 0)                             :func:`seed_model_init`
training order (shuffle)      (seed, fold) then (epoch, 1)                :class:`clotclf_core.tiling.dataset.EpochSampler`
each tile's augmentation      (seed, fold) then (epoch, 2) + position     :class:`clotclf_core.tiling.dataset.EpochSampler`
tiles kept per slide          (seed, fold) then 3                         :func:`clotclf_core.tiling.dataset.cap_tiles_per_slide`
dropout / drop-path           (seed, fold, epoch, 4, rank)                :func:`seed_epoch` (each DDP rank its own)
DataLoader base seed          its own generator: (seed, fold, 5)          :func:`loader_generator`
============================  ==========================================  =====================================

The last row is the one that broke repeatability before: a DataLoader without a generator draws
its workers' base seed from the *global* torch RNG each time an iterator is made — every epoch
with 0 workers, once per run with persistent workers, again where a resume starts — and the
global RNG is the dropout stream, so dropout masks depended on ``--workers`` and on resuming.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


def mix(*values: int) -> int:
    """A 63-bit seed from several integers (stable across processes and Python versions)."""
    import numpy as np

    state = np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (torch's on every device)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def seed_model_init(seed: int, fold: int) -> None:
    seed_everything(mix(seed, fold, 0))


def seed_epoch(seed: int, fold: int, epoch: int, rank: int = 0) -> None:
    """Dropout / drop-path of one epoch on one rank (ranks must not share masks)."""
    import torch

    torch.manual_seed(mix(seed, fold, epoch, 4, rank))


def loader_generator(seed: int = 0, fold: int = 0) -> "torch.Generator":
    """A DataLoader's own generator, so making an iterator never touches the global RNG."""
    import torch

    return torch.Generator().manual_seed(mix(seed, fold, 5))
