"""clotclf_core.tiling.dataset: tiles from the TileSet's pixel cache, seeded augmentation, samplers, loaders.

``make_tileset`` (tiny synthetic TileSets) is shared with the other training tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clotclf_core.models.inputs import normalize
from clotclf_core.tiling.dataset import (
    EpochSampler,
    ShardSampler,
    TileDataset,
    build_transform,
    cap_tiles_per_slide,
    make_loader,
    rows_of_patients,
)
from clotclf_core.tiling.tileset import TileSet
from clotclf_core.tiling.writer import TileSetWriter
from clotclf_core.training.settings import AugmentSettings


def make_tileset(root, n_patients=8, slides_per_patient=1, tiles_per_slide=6, size=32, seed=0,
                 labels=("CE", "LAA"), centers=2, label_of=None, prefix="p"):
    """A TileSet of random tiles whose colour depends on the label (a learnable signal): patient
    ``{prefix}{p:02d}`` has label ``labels[p % len(labels)]`` (or ``label_of(p)``) and centre ``c{p % centers}``."""
    rng = np.random.default_rng(seed)
    writer = TileSetWriter(root, {"synthetic": True, "size": size}, size)
    for p in range(n_patients):
        label = label_of(p) if label_of else labels[p % len(labels)]
        for s in range(slides_per_patient):
            pix = rng.integers(80, 160, (tiles_per_slide, size, size, 3)).astype(np.int16)
            pix[..., labels.index(label) % 3] += 70  # CE redder, LAA greener
            rows = [{"patient_id": f"{prefix}{p:02d}", "center_id": f"c{p % centers}", "label": label, "x": i * size, "y": 0,
                     "size": size, "downsample": 1.0} for i in range(tiles_per_slide)]
            writer.add_slide(f"{prefix}s{p:02d}_{s}", np.clip(pix, 0, 255).astype(np.uint8), rows, {})
    return root


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiles")
    make_tileset(root, n_patients=4, slides_per_patient=2, tiles_per_slide=5, size=32)
    return TileSet(root)


def test_dataset_reads_the_pixel_cache_unchanged(tiles):
    ds = TileDataset(tiles, np.arange(len(tiles)), ["CE", "LAA"], transform=None)
    assert len(ds) == len(tiles) == 40
    for i in (0, 7, 39):
        image, target, row = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), tiles.tile(i))
        assert target == ["CE", "LAA"].index(tiles.index.iloc[i]["label"]) and row == i


def test_resize_only_when_the_cache_is_not_at_input_size(tiles):
    assert build_transform(32, 32, None) is None
    ds = TileDataset(tiles, [0, 1], ["CE", "LAA"], build_transform(48, 32, None))
    assert ds[0][0].shape == (3, 48, 48)


def test_augmentation_is_the_published_list_in_albumentations_2():
    names = [type(t).__name__ for t in build_transform(64, 32, AugmentSettings())]
    assert names == ["Resize", "HorizontalFlip", "VerticalFlip", "RandomRotate90", "RandomBrightnessContrast", "Affine"]
    assert [type(t).__name__ for t in build_transform(32, 32, AugmentSettings(enabled=False)) or []] == []


def test_augmentation_is_seeded_per_sample(tiles):
    ds = TileDataset(tiles, np.arange(10), ["CE", "LAA"], build_transform(32, 32, AugmentSettings()))
    a, b = ds[(3, 12345)][0], ds[(3, 12345)][0]
    torch.testing.assert_close(a, b)
    different = [not torch.equal(ds[(3, s)][0], a) for s in range(1, 9)]
    assert any(different), "eight other seeds all gave the same augmentation"


def test_normalize_matches_albumentations_imagenet_normalisation():
    import albumentations as A

    from clotclf_core.plugin import IMAGENET_MEAN, IMAGENET_STD

    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ref = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0, p=1.0)(image=img)["image"]
    ours = normalize(torch.from_numpy(img).permute(2, 0, 1)[None], IMAGENET_MEAN, IMAGENET_STD)[0].permute(1, 2, 0)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


def test_epoch_sampler_is_seeded_by_epoch_and_shards_like_distributed_sampler():
    s = EpochSampler(10, seed=7)
    first = list(s)
    assert sorted(p for p, _ in first) == list(range(10))
    assert list(EpochSampler(10, seed=7)) == first  # same seed, same epoch: same order and seeds
    s.set_epoch(1)
    assert [p for p, _ in s] != [p for p, _ in first]
    shards = [list(EpochSampler(10, seed=7, rank=r, world_size=3)) for r in range(3)]
    assert [len(x) for x in shards] == [4, 4, 4]  # padded to equal length
    covered = {p for shard in shards for p, _ in shard}
    assert covered == set(range(10))
    assert list(ShardSampler(5, 1, 2)) == [1, 3]


def test_loader_with_workers_gives_the_same_batches_as_without(tiles):
    ds = TileDataset(tiles, np.arange(len(tiles)), ["CE", "LAA"], build_transform(32, 32, AugmentSettings()))

    def batches(workers):
        sampler = EpochSampler(len(ds), seed=3)
        sampler.set_epoch(2)
        return [b for b in make_loader(ds, sampler, 8, workers=workers, drop_last=True)]

    plain, parallel = batches(0), batches(1)  # one worker process re-opens the memory maps itself
    assert len(plain) == len(parallel) == 5
    for (xa, ya, ra), (xb, yb, rb) in zip(plain, parallel):
        torch.testing.assert_close(xa, xb)
        assert torch.equal(ya, yb) and torch.equal(ra, rb)


def test_rows_of_patients_and_tile_cap(tiles):
    rows = rows_of_patients(tiles.index, ["p00", "p01"])
    assert set(tiles.index.iloc[rows]["patient_id"]) == {"p00", "p01"} and len(rows) == 20
    capped = cap_tiles_per_slide(tiles.index, rows, 2, seed=0)
    assert len(capped) == 8  # 4 slides x 2
    assert tiles.index.iloc[capped].groupby("image_id").size().max() == 2
    np.testing.assert_array_equal(capped, cap_tiles_per_slide(tiles.index, rows, 2, seed=0))
    assert cap_tiles_per_slide(tiles.index, rows, None, 0) is rows
