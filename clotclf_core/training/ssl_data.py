"""What ``clotclf pretrain`` trains on: the tiles of one or more TileSets as augmented views, and
the :class:`PretrainTask` that runs them through the shared training loop.

- **Views** come from lightly's transforms (``SimCLRTransform`` for SimCLR and MoCo v3,
  ``DINOTransform`` for DINO) with the H&E choices of the research notes: flips and 90-degree
  rotations (a tile has no orientation), weak hue jitter, no greyscale or solarisation, normalised
  with the backbone's own mean / std.
- **Seeded per tile**: lightly's transforms draw from torch's, numpy's and Python's global
  generators, so each tile's views are drawn with all three seeded from (seed, epoch, position)
  (the :class:`~clotclf_core.tiling.dataset.EpochSampler` seed) and the generators put back
  afterwards: the views do not depend on the worker count, on which worker drew them, or on a
  resume, and the training loop's own streams (dropout) are untouched.
- **Held-out tiles** (``val_tiles``) get fixed views (the same every epoch), and their loss in eval
  mode is the history's ``val_loss``: a measure on tiles the model never trained on, which changes
  nothing (DINO's centre is put back).
"""

from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from clotclf_core.seeds import loader_generator, mix
from clotclf_core.training.loop import Scored

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.models.runtime import Runtime
    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.training.pretrain_settings import PretrainSettings
    from clotclf_core.training.ssl import SSLMethod


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """torch's (CPU), numpy's and Python's global generators seeded from ``seed`` inside the block,
    and restored after it."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def make_transform(s: PretrainSettings, size: int, mean: Sequence[float], std: Sequence[float], local: int):
    """The method's lightly transform: a tile (PIL) -> a list of normalised view tensors (DINO's
    local crops ``local`` px a side)."""
    from clotclf_core.training.ssl import _lightly

    _lightly()  # one clear line when lightly is not installed
    import lightly.transforms as transforms

    normalize = {"mean": list(mean), "std": list(std)}
    he = {"vf_prob": 0.5, "hf_prob": 0.5, "rr_prob": 0.5, "rr_degrees": None, "cj_strength": 0.5, "cj_hue": 0.05,
          "random_gray_scale": 0.0, "normalize": normalize}
    if s.method == "dino":
        return transforms.DINOTransform(global_crop_size=size, global_crop_scale=(max(s.min_scale, 0.05), 1.0),
                                        local_crop_size=local, local_crop_scale=(0.05, max(s.min_scale, 0.05)),
                                        n_local_views=s.local_views, solarization_prob=0.0, **he)
    return transforms.SimCLRTransform(input_size=size, min_scale=s.min_scale, **he)


class SSLTiles(torch.utils.data.Dataset):
    """Tiles ``refs[i] = (tileset, slide, row)`` of ``tilesets``; item ``(position, seed)`` -> views."""

    def __init__(self, tilesets: list[TileSet], refs: np.ndarray, slides: list[list[str]], transform: Any,
                 fixed_seed: int | None = None):
        self.tilesets, self.refs, self.slides, self.transform = tilesets, refs, slides, transform
        self.fixed_seed = fixed_seed  # held-out tiles: the same views every epoch

    def __len__(self) -> int:
        return len(self.refs)

    def tile(self, pos: int) -> np.ndarray:
        t, slide, row = (int(v) for v in self.refs[pos])
        return np.asarray(self.tilesets[t].pixels(self.slides[t][slide])[row])

    def __getitem__(self, item: tuple[int, int]) -> list[torch.Tensor]:
        from PIL import Image

        pos, seed = item
        image = Image.fromarray(self.tile(pos))
        with seeded_globals(mix(self.fixed_seed, pos) if self.fixed_seed is not None else seed):
            return list(self.transform(image))


def collate_views(batch: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Samples' lists of views -> one batch per view (all tiles' first view, second view...)."""
    return [torch.stack([sample[i].as_subclass(torch.Tensor) for sample in batch]) for i in range(len(batch[0]))]


def tile_refs(tilesets: list[TileSet], cap: int | None, seed: int) -> tuple[np.ndarray, list[list[str]]]:
    """Every tile of every TileSet as ``(tileset, slide, row)``; ``cap``: at most that many per slide (seeded)."""
    refs, slides = [], []
    rng = np.random.default_rng(mix(seed, 3))
    for t, ts in enumerate(tilesets):
        counts = ts.index.groupby("image_id", sort=True).size()
        slides.append(list(counts.index))
        for k, n in enumerate(counts.to_numpy()):
            rows = np.arange(int(n))
            if cap is not None and n > cap:
                rows = np.sort(rng.choice(rows, cap, replace=False))
            refs.append(np.stack([np.full(len(rows), t), np.full(len(rows), k), rows], axis=1))
    return (np.concatenate(refs) if refs else np.zeros((0, 3), np.int64)), slides


def split_refs(refs: np.ndarray, val_tiles: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training tiles, held-out tiles): ``val_tiles`` chosen at random (seeded), at most a fifth."""
    n_val = min(val_tiles, len(refs) // 5)
    order = np.random.default_rng(mix(seed, 6)).permutation(len(refs))
    return refs[np.sort(order[n_val:])], refs[np.sort(order[:n_val])]


class PretrainTask:
    """The :class:`~clotclf_core.training.loop.FoldTask` of a pre-training run."""

    def __init__(self, s: PretrainSettings, model: SSLMethod, train: SSLTiles, val: SSLTiles | None, rt: Runtime):
        from clotclf_core.tiling.dataset import EpochSampler, ShardSampler, make_loader

        self.s, self.model, self.rt = s, model, rt
        self.sampler = EpochSampler(len(train), mix(s.seed, 0), True, rt.rank, rt.world_size)
        cuda = rt.device.type == "cuda"
        self.train_loader = make_loader(train, self.sampler, s.batch_size, s.workers, pin_memory=cuda, drop_last=True,
                                        generator=loader_generator(s.seed, 0), collate_fn=collate_views)
        self.steps = len(self.train_loader)
        self.total_steps = s.epochs * self.steps
        self.val_loader = None
        if val is not None and len(val):
            positions = [(p, 0) for p in ShardSampler(len(val), rt.rank, rt.world_size)]
            self.val_loader = make_loader(val, positions, s.batch_size, s.workers, pin_memory=cuda,
                                          generator=loader_generator(s.seed, 1), collate_fn=collate_views)
        self.epoch, self.i = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch, self.i = epoch, 0
        self.model.epoch = epoch

    def _views(self, batch: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for v in batch:
            v = v.to(self.rt.device, non_blocking=True)
            out.append(v.contiguous(memory_format=torch.channels_last) if self.rt.channels_last else v)
        return out

    def step_loss(self, net, batch: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
        self.model.update_teacher(self.epoch * self.steps + self.i, self.total_steps)
        self.i += 1
        views = self._views(batch)
        return net(views), views[0].shape[0]

    def after_backward(self) -> None:
        self.model.after_backward(self.epoch)

    @torch.no_grad()
    def validate(self, model, progress: bool, desc: str = "validate") -> Scored:
        """The self-supervised loss of the held-out tiles' fixed views, in eval mode."""
        from clotclf_core.training.distributed import sum_over_ranks

        if self.val_loader is None:
            return Scored(None, None, {}, float("nan"), {})
        saved = self.model.state_for_validation()
        model.eval()
        total, n = 0.0, 0
        with self.rt.autocast():
            for batch in self.val_loader:
                views = self._views(batch)
                total += float(self.model(views)) * views[0].shape[0]
                n += views[0].shape[0]
        for name, value in saved.items():
            self.model.criterion.get_buffer(name).copy_(value)
        total, n = sum_over_ranks(self.rt, [total, float(n)])
        loss = total / max(n, 1)
        return Scored(None, None, {"val_ssl_loss": loss}, loss, {"val_ssl_loss": round(loss, 6)})
