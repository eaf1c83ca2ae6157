"""Bags of tiles for multiple-instance (MIL) training and scoring: one bag = one slide.

**Bags are slides.** STRIP AI scores patients, but most patients have one slide (632 patients,
754 slides), the winning solution pooled tiles per slide, and slide bags keep the slide-level
metrics meaningful. A patient's probability is the mean of its slides' probabilities — the same
rule as tile-level models, so the two kinds compare (and ensemble) on equal terms.

Two sources of bags, one shape (``bags``, ``mask`` (B, N) bool, ``targets`` (B,)):

- :class:`FeatureBags`: a feature store (``clotclf embed``) seen as training data; a bag is
  (N, F) float tile features. :class:`FeatureBagLoader` batches them in the main process (reading
  memory-mapped float16 rows is faster than handing them to worker processes).
- a TileSet, end to end: a bag is (N, 3, S, S) uint8 tile images (:class:`TileBagDataset`,
  augmented per tile, in DataLoader workers like tile-level training).

**Bag size.** Training bags hold ``bag_size`` tiles of the slide drawn anew every epoch, without
replacement, seeded from (seed, fold, epoch, position): the same seed gives the same bags whatever
the worker count and after any resume. A slide with fewer tiles than ``bag_size`` gives all of
them, and the bag is **padded with a mask** (never sampled with replacement: a repeated tile would
weigh double in a mean and draw attention twice). ``bag_size`` None takes every tile of the slide
(padded to the longest bag of the batch). Scoring always uses every tile of a slide.

**Standardisation.** Feature bags are standardised by default (:func:`fit_standardisation`): each
feature's mean and standard deviation over the tiles of the fold's *training* slides (never a
validation or test slide), stored in the model (:mod:`clotclf_core.models.mil`). Features of a
random-init encoder are tiny (std about 0.01), those of a foundation model of mixed scales; an
aggregator trained at a fixed learning rate learns nothing from the first and is dominated by the
largest of the second (docs/training.md measures both).

**Slides without tiles** are never bags: they have no features (a feature store lists them as
``no_tiles``; a TileSet kept none). Training and evaluation leave them out and say so; ``clotclf
predict`` gives a patient none of whose slides has a tile equal probabilities (0.5 for CE / LAA).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from clotclf_core.features.store import FeatureStore, check_matches_tileset
from clotclf_core.inputs import check_folder
from clotclf_core.models.form import ModelForm
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.tiling.dataset import EpochSampler, label_indices
from clotclf_core.tiling.tileset import open_tileset

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.tiling.tileset import TileSet

#: a bag's tiles when ``bag_size`` is not given, end to end (each tile goes through the backbone)
DEFAULT_E2E_BAG_SIZE = 16


# ----------------------------------------------------------------------------- the data


class FeatureBags:
    """A feature store as training data: the reading API of a TileSet that a run uses (``index``,
    ``slides``, ``meta``, ``root``, ``tile_size``, ``settings``, ``len()``), over the store's tiles.

    ``index`` is :attr:`FeatureStore.index` (one row per tile, with ``feature_row``); ``slides``
    maps every slide the store lists to a TileSet-like status (``done``, or the TileSet's
    ``no_tissue`` / ``failed`` for slides without tiles, with the reason and patient)."""

    def __init__(self, store: FeatureStore):
        self.store = store
        self.root = Path(store.root)
        self.index = store.index.copy()
        record = store.meta.get("tileset") if isinstance(store.meta.get("tileset"), dict) else {}
        self.tileset_meta = record
        self.settings = record.get("settings") or {}
        self.tile_size = int(record.get("tile_pixels") or store.encoder.get("input_size") or 224)
        self.meta = {"synthetic": bool(record.get("synthetic")), "format_version": record.get("format_version"),
                     **({"components": record["components"]} if isinstance(record.get("components"), dict) else {})}
        self.slides = {}
        for image_id, entry in store.slides.items():
            status = "done" if entry.get("status") == "done" else entry.get("tileset_status") or "no_tissue"
            if status == "done" and entry.get("status") != "done":
                status = "no_tissue"  # the TileSet called it done, but kept no tile of it
            self.slides[image_id] = {**entry, "status": status}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def encoder(self) -> dict[str, Any]:
        return self.store.encoder

    @property
    def num_features(self) -> int:
        return self.store.num_features

    def features(self, image_id: str) -> np.ndarray:
        return self.store.features(image_id)

    def tileset_record(self) -> dict[str, Any]:
        """config.json's ``tileset`` for a run on these features: the TileSet they were made from
        (its tiling recipe, which ``clotclf predict`` repeats on new slides)."""
        rec = self.tileset_meta
        out = {"path": rec.get("path"), "format_version": rec.get("format_version"), "tile_pixels": self.tile_size,
               "settings": self.settings, "fingerprint": rec.get("fingerprint"), "n_tiles": len(self.index),
               "n_slides": int(self.index["image_id"].nunique()), "n_patients": int(self.index["patient_id"].nunique())}
        if isinstance(rec.get("components"), dict):
            out["plugins"] = rec["components"]
        return out

    def features_record(self) -> dict[str, Any]:
        """config.json's ``features``: which feature store, made how."""
        return {"path": str(self.root.resolve()), "format_version": self.store.meta.get("format_version"),
                "num_features": self.num_features, "n_slides": len(self.store.done),
                "n_slides_without_tiles": len(self.store.empty), "encoder_weights_sha256": self.encoder.get("weights_sha256")}


def open_feature_bags(features: str, tiles: str | None = None) -> FeatureBags:
    """``--features`` (and, when given, ``--tiles``: refused unless it is the TileSet the features
    were made from, tile for tile)."""
    store = FeatureStore(check_folder(features, "feature store (--features)", "give the folder `clotclf embed --out` wrote"))
    if tiles is not None:
        check_matches_tileset(store, open_tileset(tiles, "--tiles"), tiles)
    return FeatureBags(store)


class Slides:
    """The slides of some patients as bags: ids, labels, patients and each one's tile rows
    (positions in the data's ``index``), in a fixed order (the index's order of first appearance)."""

    def __init__(self, index: "pd.DataFrame", patients: Sequence[str], labels: list[str], rows: np.ndarray | None = None):
        keep = np.flatnonzero(index["patient_id"].isin(set(patients)).to_numpy()) if rows is None else np.asarray(rows)
        sub = index.iloc[keep]
        order = pd.unique(sub["image_id"].to_numpy())
        positions: dict[str, list[int]] = {i: [] for i in order}
        for pos, image_id in zip(keep.tolist(), sub["image_id"].tolist()):
            positions[image_id].append(pos)
        self.ids = list(order)
        self.rows = [np.asarray(positions[i], dtype=np.int64) for i in self.ids]
        first = sub.drop_duplicates("image_id").set_index("image_id").loc[self.ids]
        cols = [c for c in ("patient_id", "center_id", "label") if c in first.columns]
        self.frame = first[cols].reset_index()
        self.frame["n_tiles"] = [len(r) for r in self.rows]
        self.targets = label_indices(self.frame["label"].tolist(), labels)

    def __len__(self) -> int:
        return len(self.ids)


# ----------------------------------------------------------------------------- standardisation

#: a feature whose standard deviation over the training tiles is below this is constant: it is
#: centred, not scaled (dividing by ~0 would turn rounding noise into huge values)
MIN_STD = 1e-7


def fit_standardisation(data: FeatureBags, slides: Slides) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float32 (F,) each) over every tile of ``slides``
    (the fold's training slides: their ``rows``, so ``--max-tiles-per-slide`` applies), accumulated
    in float64 one slide at a time. Constant features get a standard deviation of 1."""
    n_features = data.num_features
    mean, m2, count = np.zeros(n_features), np.zeros(n_features), 0
    feature_rows = data.index["feature_row"].to_numpy()
    for image_id, rows in zip(slides.ids, slides.rows):  # per slide, merged (Chan et al.): no cancellation
        x = np.asarray(data.features(image_id)[feature_rows[rows]], dtype=np.float64)
        if not len(x):
            continue
        k, slide_mean = len(x), x.mean(axis=0)
        delta = slide_mean - mean
        mean = mean + delta * k / (count + k)
        m2 = m2 + ((x - slide_mean) ** 2).sum(axis=0) + delta ** 2 * count * k / (count + k)
        count += k
    if count == 0:
        raise ClotclfError("no training tile to fit the feature standardisation on; check the feature store")
    std = np.sqrt(m2 / count)
    std = np.where(std < MIN_STD, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


# ----------------------------------------------------------------------------- sampling


def bag_rows(n: int, bag_size: int | None, seed: int) -> np.ndarray:
    """Which of a slide's ``n`` tiles a training bag holds: ``bag_size`` of them drawn without
    replacement from ``seed`` (in their slide order), or all of them when ``n <= bag_size``."""
    if bag_size is None or n <= bag_size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=bag_size, replace=False))


def pad_to(arrays: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack (k_i, ...) arrays into (B, n, ...) zeros with a (B, n) mask of the real rows."""
    shape = arrays[0].shape[1:]
    out = np.zeros((len(arrays), max(n, 1), *shape), dtype=np.float32 if arrays[0].dtype.kind == "f" else arrays[0].dtype)
    mask = np.zeros((len(arrays), max(n, 1)), dtype=bool)
    for b, arr in enumerate(arrays):
        out[b, :len(arr)] = arr
        mask[b, :len(arr)] = True
    return out, mask


class FeatureBagLoader:
    """Training batches of feature bags: ``(bags float32 (B, N, F), mask (B, N), targets (B,))``.

    Order and sampling follow :class:`clotclf_core.tiling.dataset.EpochSampler` (shuffled per epoch from
    (seed, fold), sharded like ``DistributedSampler``, a sample seed per position), so the batches
    are the same whatever the worker count (none is used) and after a resume."""

    def __init__(self, data: FeatureBags, slides: Slides, bag_size: int | None, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.data, self.slides, self.bag_size, self.batch_size = data, slides, bag_size, batch_size
        self.sampler = EpochSampler(len(slides), seed, True, rank, world_size)
        self.drop_last = len(self.sampler) > batch_size  # no tiny last batch, unless one batch is all there is
        self.feature_rows = [data.index["feature_row"].to_numpy()[r] for r in slides.rows]

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        batch: list[tuple[int, int]] = []
        for item in self.sampler:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self._batch(batch)
                batch = []
        if batch and not self.drop_last:
            yield self._batch(batch)

    def _batch(self, items: list[tuple[int, int]]):
        arrays = []
        for pos, seed in items:
            rows = self.feature_rows[pos]
            pick = rows[bag_rows(len(rows), self.bag_size, seed)]
            arrays.append(np.asarray(self.data.features(self.slides.ids[pos])[pick]))
        n = self.bag_size or max(len(a) for a in arrays)
        bags, mask = pad_to(arrays, n)
        targets = self.slides.targets[[pos for pos, _ in items]]
        return torch.from_numpy(bags), torch.from_numpy(mask), torch.from_numpy(targets)


class TileBagDataset(Dataset):
    """End-to-end bags: ``dataset[(i, seed)]`` = (uint8 (bag_size, 3, S, S), mask (bag_size,), target)
    of slide ``i``: ``bag_size`` of its tiles drawn from ``seed`` (:func:`bag_rows`), each augmented
    with its own seed derived from it, zero-padded when the slide has fewer."""

    def __init__(self, tileset: "TileSet", slides: Slides, bag_size: int, transform=None, stain: dict | None = None):
        from clotclf_core.tiling.dataset import slide_normalisers  # the tile datasets' one stain path

        self.tileset, self.slides, self.bag_size, self.transform = tileset, slides, int(bag_size), transform
        self.cache_rows = [tileset.index["row"].to_numpy()[r] for r in slides.rows]
        self.normalisers = slide_normalisers(tileset, stain)

    def __len__(self) -> int:
        return len(self.slides)

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        rows = self.cache_rows[i]
        pick = rows[bag_rows(len(rows), self.bag_size, seed)]
        pixels = self.tileset.pixels(self.slides.ids[i])
        size = self.tileset.tile_size
        normalise = self.normalisers(self.slides.ids[i]) if self.normalisers is not None else None
        images = []
        for j, row in enumerate(pick.tolist()):
            image = np.asarray(pixels[row])
            if normalise is not None:
                image = normalise(image[None])[0]
            if self.transform is not None:
                self.transform.set_random_seed((seed * 1_000_003 + j) % (2**31 - 1))
                image = self.transform(image=image)["image"]
            images.append(image.transpose(2, 0, 1))
        side = images[0].shape[-1] if images else size
        out = np.zeros((self.bag_size, 3, side, side), dtype=np.uint8)
        mask = np.zeros(self.bag_size, dtype=bool)
        if images:
            out[:len(images)] = np.stack(images)
            mask[:len(images)] = True
        return torch.from_numpy(out), torch.from_numpy(mask), int(self.slides.targets[i])


def collate_bags(batch):
    """``(images uint8 (B, N, 3, S, S), mask (B, N), targets (B,))`` (numpy stacking in the main
    process, like :func:`clotclf_core.tiling.dataset.collate`)."""
    if get_worker_info() is not None:
        return default_collate(batch)
    images = torch.from_numpy(np.stack([b[0].numpy() for b in batch]))
    mask = torch.from_numpy(np.stack([b[1].numpy() for b in batch]))
    return images, mask, torch.tensor([b[2] for b in batch])


def bag_size_for(form: ModelForm, bag_size: int | None) -> int | None:
    """A training bag's tiles: ``bag_size``, or by default every tile of the slide on features and
    :data:`DEFAULT_E2E_BAG_SIZE` end to end (each tile goes through the backbone)."""
    if form is ModelForm.MIL_END_TO_END:
        return bag_size or DEFAULT_E2E_BAG_SIZE
    return bag_size


def short_slides_note(index: "pd.DataFrame", bag_size: int | None) -> str | None:
    """A note when some slides have fewer tiles than ``bag_size`` (their training bags are padded)."""
    if not bag_size or not len(index):
        return None
    counts = index.groupby("image_id", sort=True).size()
    short = counts[counts < bag_size]
    if not len(short):
        return None
    shown = ", ".join(f"{i} ({n})" for i, n in list(short.items())[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
    return (f"{len(short)} of {len(counts)} slide(s) have fewer tiles than --bag-size {bag_size}: their training bags "
            f"hold all their tiles, padded with a mask (no tile is repeated): {shown}")


def no_slides_error(fold: int, what: str) -> ClotclfError:
    return ClotclfError(f"fold {fold}: no {what} slide has a tile, so there is no bag to train on; check the feature "
                        "store / TileSet (`clotclf embed` / `clotclf tile` summaries)")
