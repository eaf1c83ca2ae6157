"""Training data: tiles from a TileSet's pixel cache, augmented, batched.

Why it looks like this:

- Pixels come from the TileSet's memory-mapped cache (already at training resolution), so an
  epoch never decodes a slide or a PNG; workers re-open the memory maps themselves.
- Augmentation is albumentations, the published list: resize (only when the cache is not at the
  model's input size), horizontal / vertical flips, 90-degree rotations, brightness / contrast,
  and shift-scale-rotate (``A.Affine`` in albumentations 2, which replaced ``ShiftScaleRotate``).
- Batches leave the loader as uint8 (4x less to copy and pin than float32); ImageNet
  normalisation is done on the device by :func:`normalize` — the same arithmetic as
  ``A.Normalize``, where it is cheapest.
- Every sample's augmentation is seeded from (run seed, epoch, position): the same seed gives the
  same batches whatever the number of workers, and a resumed run sees exactly the batches the
  uninterrupted run would have seen. Every loader has its own generator, so making an iterator
  never draws from the global torch RNG (the dropout stream): see :mod:`clotclf_core.seeds`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.tiling.tileset import TileSet

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A  # noqa: E402
import torch  # noqa: E402  (data.py is only imported by commands that train or evaluate)
from torch.utils.data import DataLoader, Dataset, Sampler  # noqa: E402

from clotclf_core.tiling.stain import SlideNormalisers, StainTarget, hed_jitter  # noqa: E402


class HEDJitter(A.ImageOnlyTransform):
    """Tellez-style HED jitter (:func:`clotclf_core.tiling.stain.hed_jitter`): each stain's density
    times U(1 +- sigma) plus U(+- bias), drawn from albumentations' seeded generator (so a sample's
    seed fixes it, like every other step)."""

    def __init__(self, sigma: float, bias: float, p: float = 0.5):
        super().__init__(p=p)
        self.sigma, self.bias = float(sigma), float(bias)

    def get_params(self) -> dict[str, Any]:
        rng = self.random_generator
        return {"scale": rng.uniform(1 - self.sigma, 1 + self.sigma, 3), "shift": rng.uniform(-self.bias, self.bias, 3)}

    def apply(self, img: np.ndarray, scale=None, shift=None, **params: Any) -> np.ndarray:
        return hed_jitter(img, scale, shift)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("sigma", "bias")


def slide_normalisers(tileset: "TileSet", stain: dict | None) -> SlideNormalisers | None:
    """Per-slide stain normalisers of ``tileset`` for a model's recorded ``stain_normalise`` (None: none).
    A coordinates-only TileSet's sampled tiles are read from its slides."""
    if not stain:
        return None
    pixels = _SlideRows.of(tileset) if getattr(tileset, "coords_only", False) else tileset.pixels
    return SlideNormalisers(StainTarget.from_record(stain), pixels)


class _SlideRows:
    """A coordinates-only slide's kept tiles by row, read from the slide when indexed (what a stain
    estimate samples); ``_SlideRows.of(ts)`` is the picklable ``pixels(image_id)`` of such a TileSet."""

    def __init__(self, tileset: "TileSet", image_id: str | None = None):
        self.tileset, self.image_id = tileset, image_id

    @classmethod
    def of(cls, tileset: "TileSet") -> "_SlideRows":
        return cls(tileset)

    def __call__(self, image_id: str) -> "_SlideRows":
        return _SlideRows(self.tileset, image_id)

    def _xy(self) -> np.ndarray:
        index = self.tileset.index
        return index[index["image_id"] == self.image_id].sort_values("row")[["x", "y"]].to_numpy()

    def __len__(self) -> int:
        return len(self._xy())

    def __getitem__(self, rows: Any) -> np.ndarray:
        from clotclf_core.tiling.fill import SlideTiles

        with SlideTiles(self.tileset, self.image_id, self.tileset.slides_dir) as tiles:
            return tiles.read(self._xy()[rows])


def build_transform(input_size: int, tile_size: int, augment=None):
    """An albumentations pipeline on uint8 HWC images (None when there is nothing to do).

    ``augment`` is a :class:`clotclf_core.training.settings.AugmentSettings` (None: no augmentation).
    """
    import cv2

    steps: list[Any] = []
    if tile_size != input_size:
        shrink = tile_size > input_size
        steps.append(A.Resize(input_size, input_size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR))
    if augment is not None and augment.enabled:
        a = augment
        steps += [
            A.HorizontalFlip(p=a.hflip),
            A.VerticalFlip(p=a.vflip),
            A.RandomRotate90(p=a.rot90),
            A.RandomBrightnessContrast(brightness_limit=a.brightness, contrast_limit=a.contrast, p=a.brightness_contrast_p),
            # albumentations 2's replacement for ShiftScaleRotate; reflecting the border keeps tissue
            # texture at the edges instead of black corners the model could learn from
            A.Affine(
                translate_percent=(-a.shift, a.shift),
                scale=(1 - a.scale, 1 + a.scale),
                rotate=(-a.rotate, a.rotate),
                border_mode=cv2.BORDER_REFLECT_101,
                p=a.shift_scale_rotate_p,
            ),
        ]
        if a.hed_sigma > 0 or a.hed_bias > 0:  # only when asked: the other steps' random streams stay as they were
            steps.append(HEDJitter(a.hed_sigma, a.hed_bias, p=a.hed_p))
    return A.Compose(steps, seed=0) if steps else None


def label_indices(labels_column: Sequence[str], labels: list[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(labels)}
    return np.array([lookup.get(v, -1) for v in labels_column], dtype=np.int64)


class TileDataset(Dataset):
    """Tiles ``rows`` (positions in ``tileset.index``) as ``(uint8 CHW tensor, label index, row)``.

    ``dataset[(i, seed)]`` augments with that seed (what :class:`EpochSampler` yields);
    ``dataset[i]`` uses the transform's own RNG. Labels not in ``labels`` get index -1
    (prediction on unlabelled tiles).
    """

    def __init__(self, tileset: "TileSet", rows: Sequence[int], labels: list[str], transform=None,
                 stain: dict | None = None):
        self.tileset = tileset
        #: ``stain``: a model's recorded stain normalisation, applied per slide before the transform
        self.normalisers = slide_normalisers(tileset, stain)
        self.rows = np.asarray(rows, dtype=np.int64)
        sub = tileset.index.iloc[self.rows]
        self.image_ids = sub["image_id"].to_numpy(dtype=object)
        self.cache_rows = sub["row"].to_numpy(dtype=np.int64)
        self.targets = label_indices(sub["label"].tolist(), labels)
        self.transform = transform
        self._slides = _slide_reader(tileset, sub)

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, i: int) -> np.ndarray:
        if self._slides is not None:  # a coordinates-only TileSet: the tile is read from its slide
            cache, xy = self._slides
            return cache.tile(self.image_ids[i], *xy[i])
        return np.asarray(self.tileset.pixels(self.image_ids[i])[self.cache_rows[i]])

    def __getitem__(self, key: int | tuple[int, int]):
        i, seed = key if isinstance(key, tuple) else (key, None)
        image = self._image(i)
        if self.normalisers is not None:
            image = self.normalisers(self.image_ids[i])(image[None])[0]
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            image = self.transform(image=image)["image"]
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return chw, int(self.targets[i]), int(self.rows[i])


def _slide_reader(tileset: "TileSet", rows: Any) -> tuple[Any, np.ndarray] | None:
    """A coordinates-only TileSet's tiles come from its slides: a per-process cache of open slides
    (:class:`clotclf_core.tiling.fill.SlideTileCache`) and each row's level-0 corner; None otherwise."""
    if not getattr(tileset, "coords_only", False):
        return None
    from clotclf_core.tiling.fill import SlideTileCache

    return SlideTileCache(tileset), rows[["x", "y"]].to_numpy(dtype=np.float64)


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (:func:`clotclf_core.seeds.mix`)."""
    from clotclf_core.seeds import mix

    return mix(*values)


class EpochSampler(Sampler):
    """Shuffles per epoch from (seed, epoch) and shards for data-parallel training.

    Yields ``(position, sample_seed)``. Like ``DistributedSampler``, each of ``world_size``
    ranks gets every ``world_size``-th position of one shared permutation, padded (by repeating
    the start) so every rank runs the same number of steps. Call :meth:`set_epoch` each epoch.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.epoch = 0
        self.per_rank = -(-n // world_size) if n else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng(_mix(self.seed, self.epoch, 1)).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = self.per_rank * self.world_size
        if total > self.n:
            order = np.concatenate([order, order[: total - self.n]])
        mine = order[self.rank:total:self.world_size]
        base = _mix(self.seed, self.epoch, 2)
        for pos in mine.tolist():
            yield pos, (base + pos) % (2**31 - 1)


class ShardSampler(Sampler):
    """Evaluation: rank ``r`` of ``w`` gets positions ``r, r+w, ...``, in order, no padding."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.positions = list(range(rank, n, world_size))

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions)


def collate(batch: list[tuple["torch.Tensor", int, int]]):
    """``(images uint8 (B,3,H,W), targets (B,), rows (B,))``.

    In a worker process this is torch's ``default_collate`` (it stacks straight into shared
    memory). In the main process (``workers=0``) the images are stacked with numpy: there, with
    torch imported before OpenCV, torch's two-thread ``stack`` of uint8 tensors between
    augmentations took 77 ms per 16 x 224 px batch on a 2-core machine (1 ms on its own).
    """
    from torch.utils.data import get_worker_info
    from torch.utils.data._utils.collate import default_collate

    if get_worker_info() is not None:
        return default_collate(batch)
    images = torch.from_numpy(np.stack([b[0].numpy() for b in batch]))
    return images, torch.tensor([b[1] for b in batch]), torch.tensor([b[2] for b in batch])


def make_loader(
    dataset: TileDataset,
    sampler: Sampler,
    batch_size: int,
    workers: int = 2,
    pin_memory: bool = False,
    drop_last: bool = False,
    generator: "torch.Generator | None" = None,
    collate_fn=None,
) -> DataLoader:
    """A DataLoader with worker processes kept alive between epochs and pinned memory on CUDA.

    ``generator`` (default: a fixed one) gives the workers' base seed, so the global torch RNG is
    never touched. Workers are forked and torch gives each one thread. (Do not call
    ``cv2.setNumThreads`` in a forked worker: after the parent has used OpenCV's thread pool, that
    call never returns.)
    """
    from clotclf_core.seeds import loader_generator

    kwargs: dict[str, Any] = {"generator": generator if generator is not None else loader_generator()}
    if workers > 0:
        kwargs |= {"persistent_workers": True, "prefetch_factor": 4}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=collate_fn or collate,
        **kwargs,
    )


def rows_of_patients(index, patients: Sequence[str]) -> np.ndarray:
    """Positions in the tile index of every tile of these patients."""
    return np.flatnonzero(index["patient_id"].isin(set(patients)).to_numpy())


def cap_tiles_per_slide(index, rows: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """At most ``cap`` tiles per slide (a seeded random choice), so huge slides do not dominate an epoch."""
    if not cap:
        return rows
    rng = np.random.default_rng(_mix(seed, 3))
    slides = index["image_id"].to_numpy()[rows]
    keep = []
    for sid in np.unique(slides):
        mine = rows[slides == sid]
        keep.append(np.sort(rng.choice(mine, size=cap, replace=False)) if len(mine) > cap else mine)
    return np.sort(np.concatenate(keep)) if keep else rows
