"""Tiling a pyramid only where tissue is, the levels it trusts, the stored thumbnail, and
coordinates-only TileSets filled later (issue 18). Small synthetic pyramids written here with
tifffile; the real SVS in tests/data for the stored thumbnail."""

from __future__ import annotations

import json
import shutil
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import tifffile

from clotclf_core.plugin import SlideReadError
from clotclf_core.slides.open import open_slide
from clotclf_core.tiling.run import tile_slide, tile_slides
from clotclf_core.tiling.settings import SlideSkip, TileSettings, TilingError
from clotclf_core.tiling.tileset import TileSet, TileSetError

REAL_SLIDE = Path(__file__).parent / "data" / "cmu_small_region.svs"
#: 1/4 of level 0 (= level 1 of the pyramids below); the mask's view 128 px, so the pyramids' 1/16 level makes it
SETTINGS = TileSettings(downsample=4, tile_size=56, train_size=32, thumbnail_size=128, batch_size=16, prescreen=False)
W, H = 2048, 1536
RES = {"resolution": (20000, 20000), "resolutionunit": "CENTIMETER"}  # 0.5 um/px
OPTS = {"tile": (128, 128), "compression": "zlib", "photometric": "rgb"}


def _image(seed: int = 0) -> np.ndarray:
    """Glass with two 'tissue' blobs in the upper left: most of the slide is glass."""
    rng = np.random.default_rng(seed)
    img = np.clip(243 + rng.normal(0, 2, (H, W, 3)), 0, 255)
    yy, xx = np.mgrid[0:H, 0:W]
    for cx, cy, r in ((420, 400, 260), (900, 380, 170)):
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[inside] = np.clip(np.asarray((200, 100, 150)) + rng.normal(0, 20, (int(inside.sum()), 3)), 0, 255)
    return img.astype(np.uint8)


def _reduce(img: np.ndarray, k: int) -> np.ndarray:
    h, w = img.shape[0] // k, img.shape[1] // k
    return img[: h * k, : w * k].reshape(h, k, w, k, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def write_pyramid(path: Path, img: np.ndarray, subifds: bool = False, level1: np.ndarray | None = None) -> Path:
    """Level 0, then 1/4 and 1/16 as reduced pages (OpenSlide reads them) or SubIFDs; ``level1``
    replaces the 1/4 level (a level that disagrees with level 0)."""
    levels = [level1 if level1 is not None else _reduce(img, 4), _reduce(img, 16)]
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, **OPTS, **RES, **({"subifds": 2} if subifds else {}))
        for level in levels:
            tw.write(level, **OPTS, subfiletype=1)
    return path


@pytest.fixture(scope="module")
def pyramids(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pyramids")
    img = _image()
    out = {}
    for name in ("pages", "subifd", "single"):
        (d / name).mkdir()
    out["pages"] = write_pyramid(d / "pages" / "p.tif", img)
    out["subifd"] = write_pyramid(d / "subifd" / "p.tif", img, subifds=True)
    out["single"] = d / "single" / "p.tif"
    tifffile.imwrite(out["single"], img, **OPTS, **RES)
    return out


def _tile(path: Path, source: str, threads: int = 1, **update):
    with closing(open_slide(str(path), source=source)) as slide:
        return tile_slide(slide, SETTINGS.model_copy(update=update), threads=threads)


def _by_xy(pixels, rows) -> dict[tuple[int, int], np.ndarray]:
    return {(r["x"], r["y"]): pixels[r["row"]] for r in rows}


# ----------------------------------------------------------------------------- reading only where tissue is


@pytest.mark.parametrize(("kind", "source"), [("pages", "openslide"), ("pages", "tifffile"), ("subifd", "tifffile")])
def test_a_pyramid_is_read_only_under_tissue_and_gives_the_scans_tiles(pyramids, kind, source):
    sparse_pixels, sparse_rows, sparse = _tile(pyramids[kind], source)
    scan_pixels, scan_rows, scan = _tile(pyramids[kind], source, mask_from="scan")
    assert sparse["mask_from"].startswith("level 2 (1/16") and "segments of level 1 decoded" in sparse["mask_from"]
    assert scan["mask_from"].startswith("scan of level 1")
    assert 0 < sparse["decoded_fraction"] < 0.6 and scan["decoded_fraction"] == 1.0  # the glass is never decoded
    assert len(sparse_rows) >= 8
    # the same candidates, tiles and scores: a survey cuts the tiles from the same level, reduced the same way
    assert sparse_rows == scan_rows and np.array_equal(sparse_pixels, scan_pixels)
    threaded_pixels, threaded_rows, _ = _tile(pyramids[kind], source, threads=3)  # (the low level read by a pool)
    assert threaded_rows == sparse_rows and np.array_equal(threaded_pixels, sparse_pixels)


def test_levels_that_disagree_with_level_0_are_not_read_and_tiling_says_so(pyramids, tmp_path):
    img = _image()
    padded = np.full((H // 4, W // 4 + 128, 3), 243, np.uint8)  # level 1 padded to whole tiles: 640 x 384, not 512 x 384
    padded[:, : W // 4] = _reduce(img, 4)
    (tmp_path / "bad").mkdir()
    bad = write_pyramid(tmp_path / "bad" / "p.tif", img, level1=padded)
    pixels, rows, info = _tile(bad, "openslide")  # (tifffile makes no pyramid of such pages: one level)
    assert "level 1 is 640 x 384 px" in info["levels_note"] and "it read level 0" in info["levels_note"]
    assert info["decoding"]["level"] == 0 and info["decoding"]["ratio"] == 4
    # level 0 reduced by 4 is what the single-level copy gives: the same tiles where both keep one
    single = _by_xy(*_tile(pyramids["single"], "tifffile")[:2])
    common = [xy for xy in _by_xy(pixels, rows) if xy in single]
    assert len(common) >= 8 and all(np.array_equal(_by_xy(pixels, rows)[xy], single[xy]) for xy in common)
    summary = tile_slides(tmp_path / "bad", tmp_path / "ts", settings=SETTINGS, source="openslide", progress=False)
    assert any("level 1 is 640 x 384" in n and "did not use it" in n for n in summary["notes"])


# ----------------------------------------------------------------------------- the stored thumbnail


@pytest.mark.parametrize("source", ["openslide", "tifffile"])
def test_mask_from_the_stored_thumbnail(source):
    settings = {"downsample": 4, "tile_size": 56, "thumbnail_size": 256, "mask_from": "thumbnail"}
    with closing(open_slide(str(REAL_SLIDE), source=source)) as slide:
        assert slide.stored_thumbnail().shape == (768, 574, 3)
        pixels, rows, info = tile_slide(slide, SETTINGS.model_copy(update=settings))
    assert info["mask_from"].startswith("the stored thumbnail (574 x 768 px)") and len(rows) > 20


class _Thumb:
    """A slide whose stored thumbnail is whatever the test says (and a pyramid under it)."""

    def __init__(self, slide, thumb):
        self.slide, self.thumb = slide, thumb
        for name in ("path", "dimensions", "mpp", "level_dimensions", "level_downsamples", "level_layout", "read_region", "thumbnail"):
            setattr(self, name, getattr(slide, name))

    def stored_thumbnail(self):
        if isinstance(self.thumb, Exception):
            raise self.thumb
        return self.thumb

    def close(self):
        self.slide.close()


@pytest.mark.parametrize(("thumb", "message"), [
    (None, "the slide stores no thumbnail"),
    (SlideReadError("the JPEG stream is cut short"), "stored thumbnail is damaged \\(the JPEG stream is cut short\\)"),
    (ValueError("bad huffman table"), "could not be read \\(ValueError: bad huffman table\\)"),
    (np.zeros((64, 16, 3), np.uint8), "is not a picture of the whole slide"),
    (np.zeros((48, 64), np.uint8), "is not an RGB picture"),
])
def test_an_absent_or_corrupt_stored_thumbnail_is_one_clear_error(pyramids, thumb, message):
    with closing(_Thumb(open_slide(str(pyramids["pages"]), source="tifffile"), thumb)) as slide:
        with pytest.raises(SlideSkip, match=f"--mask-from thumbnail: .*{message}.*use --mask-from auto"):
            tile_slide(slide, SETTINGS.model_copy(update={"mask_from": "thumbnail"}))


def test_a_corrupt_thumbnail_in_the_file_fails_that_slide_with_its_reason(tmp_path):
    """The SVS's thumbnail page overwritten with garbage: the slide fails, named, nothing else breaks."""
    (tmp_path / "s").mkdir()
    broken = tmp_path / "s" / "real.svs"
    shutil.copyfile(REAL_SLIDE, broken)
    with tifffile.TiffFile(broken) as tif:
        thumb = next(s for s in tif.series if s.name == "Thumbnail").pages[0]
        offsets, counts = thumb.dataoffsets, thumb.databytecounts
    with open(broken, "r+b") as fh:
        for off, n in zip(offsets, counts):
            fh.seek(off)
            fh.write(bytes(range(256)) * (n // 256) + b"\0" * (n % 256))
    with pytest.raises(TilingError, match="no slide could be tiled.*real: --mask-from thumbnail: .*stored thumbnail"):
        tile_slides(tmp_path / "s", tmp_path / "ts", settings=SETTINGS.model_copy(update={"mask_from": "thumbnail"}),
                    source="tifffile", progress=False)
    meta = json.loads((tmp_path / "ts" / "tileset.json").read_text())
    assert meta["slides"]["real"]["status"] == "failed"


def test_a_pyramid_without_a_stored_thumbnail(pyramids, tmp_path):
    with pytest.raises(TilingError, match="p: --mask-from thumbnail: the slide stores no thumbnail.*--mask-from auto"):
        tile_slides(pyramids["pages"].parent, tmp_path / "ts", settings=SETTINGS.model_copy(update={"mask_from": "thumbnail"}),
                    progress=False)


# ----------------------------------------------------------------------------- coordinates only


@pytest.mark.parametrize("kind", ["pages", "single"])
def test_coords_only_tileset_is_filled_later_with_the_tiles_tiling_would_cache(pyramids, tmp_path, kind):
    from clotclf_core.tiling.dataset import TileDataset
    from clotclf_core.tiling.fill import slide_batches

    folder = pyramids[kind].parent
    full = tile_slides(folder, tmp_path / "full", settings=SETTINGS, progress=False)
    coords = tile_slides(folder, tmp_path / "coords", settings=SETTINGS.model_copy(update={"coords_only": True}), progress=False)
    assert full["tiled"] == coords["tiled"] == 1
    assert not list((tmp_path / "coords" / "pixels").glob("*.npy")) and (tmp_path / "coords" / "qc").is_dir()
    ts, cached = TileSet(tmp_path / "coords"), TileSet(tmp_path / "full")
    rec = ts.slides["p"]
    assert ts.coords_only and ts.settings["coords_only"] is True and rec["scores_from"].startswith("the low-resolution view")
    assert "coords_only" not in cached.settings  # a TileSet at the defaults records what it did before
    with pytest.raises(TileSetError, match="tiled with --coords-only: it caches no pixels"):
        ts.pixels("p")
    # scores from the view keep (almost) the same tiles; where both keep a tile, its pixels are the cached ones
    want = {(int(x), int(y)): cached.pixels("p")[r] for x, y, r in cached.index[["x", "y", "row"]].to_numpy()}
    got = {}
    xy = ts.index.sort_values("row")[["x", "y"]].to_numpy()
    for start, batch in slide_batches(ts, "p", 5):
        assert batch.shape[1:] == (32, 32, 3) and len(batch) <= 5
        got.update({(int(x), int(y)): t for (x, y), t in zip(xy[start : start + len(batch)], batch)})
    common = set(got) & set(want)
    assert len(got) == len(ts) and len(common) >= 0.8 * max(len(got), len(want))
    assert all(np.array_equal(got[k], want[k]) for k in common)
    # the torch Dataset training and predict use reads them too
    ds = TileDataset(ts, range(len(ts)), ["CE", "LAA"])
    for i in (0, len(ts) - 1, 1):  # in any order
        chw, target, row = ds[i]
        x, y = ts.index.iloc[i][["x", "y"]]
        assert np.array_equal(np.asarray(chw).transpose(1, 2, 0), got[(int(x), int(y))]) and target == -1 and row == i


def test_coords_only_rows_do_not_depend_on_the_batch_size(pyramids):
    """The view's small windows go to the filters many at a time (as many as --batch-size tiles of
    pixels would hold): the same rows and scores whatever --batch-size is."""
    from clotclf_core.slides.open import open_slide
    from clotclf_core.tiling.run import tile_slide

    got = []
    for batch_size in (1, 3, 16, 512):
        with open_slide(pyramids["pages"]) as slide:
            _, rows, info = tile_slide(slide, SETTINGS.model_copy(update={"coords_only": True, "batch_size": batch_size}))
        got.append((rows, info["rejected"], info.get("rejected_rows")))
    assert len(got[0][0]) > 3 and all(g == got[0] for g in got[1:])


def test_coords_only_embed_reads_the_slides_where_they_are_now(pyramids, tmp_path):
    from clotclf_core.features.embed import embed_tileset
    from clotclf_core.features.store import FeatureStore
    from tilesets import TINY_TIMM

    slides = tmp_path / "slides"
    shutil.copytree(pyramids["pages"].parent, slides)
    tile_slides(slides, tmp_path / "ts", settings=SETTINGS.model_copy(update={"coords_only": True}), progress=False)
    moved = tmp_path / "moved"
    slides.rename(moved)
    kw = {"progress": False, "device": "cpu", "batch_size": 4}
    with pytest.raises(TileSetError, match="slide 'p' of the coordinates-only TileSet .* is not at .*p.tif.*--slides DIR"):
        embed_tileset(tmp_path / "ts", tmp_path / "f", "timm", dict(TINY_TIMM), **kw)
    summary = embed_tileset(tmp_path / "ts", tmp_path / "f", "timm", dict(TINY_TIMM), slides_dir=moved, **kw)
    assert summary["embedded"] == 1 and summary["tiles"] == len(TileSet(tmp_path / "ts"))
    assert FeatureStore(tmp_path / "f").num_features == 16
    # another file under the same name is refused, not embedded
    (tmp_path / "other").mkdir()
    write_pyramid(tmp_path / "other" / "p.tif", _image(seed=7))
    with pytest.raises(TileSetError, match="is not the one slide 'p' of .* was tiled from.*re-tile it"):
        embed_tileset(tmp_path / "ts", tmp_path / "f2", "timm", dict(TINY_TIMM), slides_dir=tmp_path / "other", **kw)


def test_coords_only_embeds_stain_normalised_in_workers_as_in_process(pyramids, tmp_path):
    """A coordinates-only TileSet with --stain-normalise: the slide's stain is estimated on tiles read
    from the slide; worker processes (--devices) give the in-process store, byte for byte."""
    from clotclf_core.features.embed import embed_tileset
    from clotclf_core.features.store import FeatureStore
    from tilesets import TINY_TIMM

    tile_slides(pyramids["pages"].parent, tmp_path / "ts", settings=SETTINGS.model_copy(update={"coords_only": True}),
                progress=False)
    kw = {"progress": False, "device": "cpu", "batch_size": 4, "stain_normalise": "macenko"}
    one = embed_tileset(tmp_path / "ts", tmp_path / "one", "timm", dict(TINY_TIMM), **kw)
    two = embed_tileset(tmp_path / "ts", tmp_path / "two", "timm", dict(TINY_TIMM), devices=["cpu", "cpu"], **kw)
    plain = embed_tileset(tmp_path / "ts", tmp_path / "plain", "timm", dict(TINY_TIMM), progress=False, device="cpu",
                          batch_size=4)
    a, b, c = (FeatureStore(tmp_path / n) for n in ("one", "two", "plain"))
    assert one["embedded"] == two["embedded"] == 1 and one["stain_unfitted"] == two["stain_unfitted"] == []
    assert np.array_equal(a.features("p"), b.features("p"))
    assert not np.array_equal(a.features("p"), c.features("p"))  # the normalisation was applied
    # the torch Dataset (training, predict) normalises a coordinates-only slide's tiles the same way
    from clotclf_core.tiling.dataset import TileDataset
    from clotclf_core.tiling.fill import SlideBatches
    from clotclf_core.tiling.stain import parse_stain_normalise

    ts = TileSet(tmp_path / "ts")
    target = parse_stain_normalise("macenko")
    first = next(iter(SlideBatches(ts, "p", 1, target)))[1][0]
    ds = TileDataset(ts, range(len(ts)), ["CE", "LAA"], stain=target.record())
    row0 = int(np.flatnonzero(ts.index["row"].to_numpy() == 0)[0])
    assert np.array_equal(np.asarray(ds[row0][0]).transpose(1, 2, 0), first)


class _NeedsPixels:
    threshold = 0.5

    def score(self, tiles):
        return np.ones(len(tiles), np.float32)


def test_coords_only_refuses_a_filter_that_needs_pixels_naming_it(pyramids, tmp_path, monkeypatch):
    from clotclf_core.tiling import run
    from clotclf_core.tiling.filters import BuiltFilter

    needs = BuiltFilter("mobilenetv3", _NeedsPixels(), {})
    settings = SETTINGS.model_copy(update={"coords_only": True})
    with closing(open_slide(str(pyramids["pages"]), source="tifffile")) as slide:
        with pytest.raises(TilingError, match="--coords-only .* filter 'mobilenetv3' needs the tiles' full pixels"):
            tile_slide(slide, settings, [needs])
    monkeypatch.setattr(run, "filters_for", lambda refs: [needs])
    with pytest.raises(TilingError, match="filter 'mobilenetv3' needs the tiles' full pixels.*drop --coords-only"):
        tile_slides(pyramids["pages"].parent, tmp_path / "ts", settings=settings, progress=False)
    assert not (tmp_path / "ts").exists()  # refused before anything was written


def test_cli_coords_only_with_a_pixel_filter_is_one_error_line(pyramids, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from clotclf_core.cli.main import cli
    from clotclf_core.plugin_manager import reset_manager
    from clotclf_core.tiling import run
    from clotclf_core.tiling.filters import BuiltFilter

    reset_manager()
    monkeypatch.setattr(run, "filters_for", lambda refs: [BuiltFilter("mobilenetv3", _NeedsPixels(), {})])
    res = CliRunner().invoke(cli, ["tile", str(pyramids["pages"].parent), "--out", str(tmp_path / "ts"), "--coords-only"])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --coords-only") and "'mobilenetv3'" in lines[0]


def test_coords_only_windows_from_the_view_are_its_pixels_with_glass_past_the_edge():
    """view_window_batches: one gather when every window is a whole number of view pixels, a crop and a
    resize per tile otherwise (batches mixing both); past the view's edge both give the glass colour."""
    from types import SimpleNamespace

    import cv2

    from clotclf_core.tiling.views import view_window_batches

    def windows(scan, corners):
        starts, batches = zip(*view_window_batches(scan, np.array(corners), 16, 4, bg, 64))
        assert starts == tuple(range(0, len(corners), 64)) and all(len(b) == 64 for b in batches[:-1])
        return np.concatenate(batches)

    rng = np.random.default_rng(8)
    view = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    bg = np.array([203, 207, 198], np.uint8)
    corners = [(0, 0), (-8, -4), (140, 100), (36, 12), (152, 116), (60, -12)] * 50  # (several batches)
    scan = SimpleNamespace(view=view, view_scales=lambda: (4.0, 4.0))
    padded = np.empty((50, 60, 3), np.uint8)  # the view with 10 px of glass around it
    padded[:] = bg
    padded[10:40, 10:50] = view
    got = windows(scan, corners)  # 16 raster px = 4 view px: the gather
    assert len(got) == len(corners)
    for (x, y), win in zip(corners, got):
        i, j = int(np.ceil(x / 4 - 0.5)), int(np.ceil(y / 4 - 0.5))
        assert np.array_equal(win, padded[j + 10 : j + 14, i + 10 : i + 14])
    odd = windows(SimpleNamespace(view=view, view_scales=lambda: (3.5, 3.5)), corners)
    assert len(odd) == len(corners)
    for (x, y), win in zip(corners, odd):  # 16 / 3.5 view px: 4 or 5 px, gathered or cropped and resized
        i0, i1 = int(np.ceil(x / 3.5 - 0.5)), int(np.ceil((x + 16) / 3.5 - 0.5))
        j0, j1 = int(np.ceil(y / 3.5 - 0.5)), int(np.ceil((y + 16) / 3.5 - 0.5))
        crop = padded[j0 + 10 : j1 + 10, i0 + 10 : i1 + 10]
        how = cv2.INTER_AREA if crop.shape[0] > 4 else cv2.INTER_LINEAR
        assert win.shape == (4, 4, 3) and np.array_equal(win, cv2.resize(crop, (4, 4), interpolation=how))
