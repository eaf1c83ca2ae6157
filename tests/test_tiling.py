"""Tiling: geometry (padding, centring, working resolution), decode-once reading, the prescreen,
backgrounds (white, grey, dim, pale tissue), the real slide against clotclf 0.1, resume, shards,
max_tiles, workers / threads / Dask giving the same TileSet, and the `clotclf tile` command.
Synthetic slides are small deflate TIFFs written here."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clotclf_core.plugin import ClotclfError
from clotclf_core.tiling.grid import candidate_grid, plan_grid, working_factor
from clotclf_core.tiling.run import tile_slide, tile_slides
from clotclf_core.tiling.settings import TileSettings
from clotclf_core.tiling.summary import format_summary
from clotclf_core.tiling.tileset import TileSet, TileSetError

REAL_SLIDE = Path(__file__).parent / "data" / "cmu_small_region.svs"
#: small settings: 200-px level-0 tiles cached at 50 px (a working factor of 4)
SMALL = TileSettings(downsample=2, tile_size=100, train_size=50, thumbnail_size=256, batch_size=8)
GLASS = (243, 243, 243)
DARK = (200, 100, 150)
PALE = (222, 190, 212)


def write_slide(path: Path, size=(1000, 800), blobs=((300, 300, 180, DARK), (700, 500, 150, DARK)), seed=0, mpp=0.5,
                glass=GLASS, dim=1.0, tile=(128, 128), noise=20) -> Path:
    """A deflate RGB TIFF (tiled, or stripped with ``tile=None``): glass with round 'tissue' blobs
    (x, y, radius, colour on white glass). Light passes glass and tissue: on tinted glass a blob's
    colour is scaled by glass / white; ``dim`` scales everything (a dim scan)."""
    import tifffile

    rng = np.random.default_rng(seed)
    w, h = size
    img = np.clip(np.asarray(glass, float) + rng.normal(0, 2, (h, w, 3)), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w]
    for cx, cy, r, colour in blobs:
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        spread = noise if colour == DARK else 3
        tinted = np.asarray(colour, float) * np.asarray(glass, float) / np.asarray(GLASS, float)
        img[inside] = np.clip(tinted + rng.normal(0, spread, (int(inside.sum()), 3)), 0, 255)
    img = np.clip(img * dim, 0, 255)
    kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    layout = {"tile": tile} if tile else {"rowsperstrip": 37}
    tifffile.imwrite(path, img.astype(np.uint8), compression="deflate", photometric="rgb", **layout, **kw)
    return path


@pytest.fixture
def slides(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    write_slide(d / "s1.tif", seed=1)
    write_slide(d / "s2.tif", blobs=((500, 400, 250, DARK),), seed=2)
    return d


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def open_tiff(path):
    from clotclf_core.slides.open import open_slide

    return open_slide(path, source="tifffile")


# ----------------------------------------------------------------------------- geometry


def test_grid_pads_and_centres_so_no_slide_or_edge_is_lost():
    g = plan_grid(1000, 800, 200, 200)  # 5 x 4 tiles fit exactly: no padding
    assert (g.cols, g.rows, g.x0, g.y0) == (5, 4, 0, 0)
    g = plan_grid(1050, 810, 200, 200)  # remainders: one more tile each way, centred
    assert (g.cols, g.rows) == (6, 5) and g.x0 == -75 and g.y0 == -95
    assert g.xs()[0] < 0 and g.xs()[-1] + 200 >= 1050 and g.ys()[-1] + 200 >= 810
    g = plan_grid(120, 90, 200, 200)  # smaller than one tile: one padded tile
    assert (g.cols, g.rows) == (1, 1) and (g.x0, g.y0) == (-40, -55)
    g = plan_grid(1000, 1000, 200, 100)  # overlap
    assert g.cols == 9 and g.xs()[-1] + 200 == 1000
    drop = plan_grid(1050, 810, 200, 200, "drop")  # clotclf 0.1: whole tiles from (0, 0)
    assert (drop.cols, drop.rows, drop.x0, drop.y0) == (5, 4, 0, 0)
    with pytest.raises(ClotclfError, match="smaller than one tile"):
        plan_grid(120, 90, 200, 200, "drop")
    with pytest.raises(ClotclfError, match=r"more than 10,000,000.*--tile-size"):
        plan_grid(100_000, 100_000, 10, 10)


def test_working_factor_is_a_power_of_two_up_to_16():
    assert [working_factor(s, 224) for s in (100, 224, 448, 896, 1000, 1792, 6000, 1e6)] == [1, 1, 2, 4, 4, 8, 16, 16]


def test_candidate_grid_of_whole_tiles():
    mask = np.zeros((100, 100), bool)
    mask[10:30, 60:90] = True  # slide 1000x1000 px: tissue at x 600..900, y 100..300
    xy, frac = candidate_grid(mask, (1000, 1000), 200, 200, 0.0)
    got = {tuple(int(v) for v in p): round(float(f), 3) for p, f in zip(xy, frac)}
    assert got == {(600, 0): 0.5, (800, 0): 0.25, (600, 200): 0.5, (800, 200): 0.25}
    xy, _ = candidate_grid(mask, (1000, 1000), 200, 200, 0.3)
    assert {tuple(int(v) for v in p) for p in xy} == {(600, 0), (600, 200)}
    assert len(candidate_grid(mask, (150, 150), 200, 200, 0.0)[0]) == 0


def test_summed_area_table_equals_numpys_cumulative_sums():
    from clotclf_core.tiling.grid import summed_area

    rng = np.random.default_rng(3)
    for h, w in ((1, 1), (1, 9), (7, 1), (37, 53), (200, 3)):
        m = rng.random((h, w)) < 0.4
        want = np.zeros((h + 1, w + 1), np.int64)
        want[1:, 1:] = m.astype(np.int64).cumsum(0).cumsum(1)
        got = summed_area(m)
        assert got.dtype == np.int64 and np.array_equal(got, want)


def test_grow_is_scipys_binary_dilation_by_a_3x3_square():
    from scipy.ndimage import binary_dilation

    from clotclf_core.tiling.grid import grow

    rng = np.random.default_rng(6)
    for h, w in ((1, 1), (1, 7), (6, 1), (23, 31)):
        m = rng.random((h, w)) < 0.2
        assert np.array_equal(grow(m), binary_dilation(m, structure=np.ones((3, 3), bool)))
    assert grow(np.zeros((0, 4), bool)).shape == (0, 4)


def test_small_slide_is_padded_with_its_glass_and_tiny_one_refused(tmp_path):
    """A slide smaller than one tile (the default 896 px) gives a centred padded tile; below 64 px
    a side it is refused with its size."""
    with closing(open_tiff(write_slide(tmp_path / "small.tif", size=(700, 600), blobs=((350, 300, 330, DARK),)))) as slide:
        pixels, rows, info = tile_slide(slide)
    assert info["status"] == "done" and len(rows) == 1 and pixels.shape == (1, 224, 224, 3)
    assert (rows[0]["x"], rows[0]["y"], rows[0]["size"]) == (-96, -148, 896)  # centred, in 4-px steps
    corner = pixels[0, :5, :5].reshape(-1, 3)  # padding: the slide's glass colour, not white
    assert np.abs(corner.astype(int) - np.asarray(info["mask"]["background"])).max() <= 1
    with closing(open_tiff(write_slide(tmp_path / "tiny.tif", size=(60, 300), blobs=()))) as slide:
        with pytest.raises(ClotclfError, match=r"60 x 300 px, smaller than 64 px"):
            tile_slide(slide)


def test_a_slide_smaller_than_one_tile_says_so_when_no_tile_keeps_enough_tissue(tmp_path):
    """Issue 19: the reason named the tissue share only; a slide smaller than one tile now says that
    it is, and what to change."""
    with closing(open_tiff(write_slide(tmp_path / "small.tif", size=(300, 200), blobs=((150, 100, 40, DARK),)))) as slide:
        pixels, rows, info = tile_slide(slide)
    assert len(rows) == 0 and info["status"] == "no_tissue", info
    assert "no tile has at least 10%" in info["reason"] and "300 x 200 px, is smaller than one tile (896" in info["reason"]
    assert "--tile-size" in info["reason"] and "--min-tissue" in info["reason"]


class CountingSlide:
    """Wraps a Slide and counts the reads of each stored segment (and any read_region)."""

    def __init__(self, slide):
        self.slide, self.reads, self.regions = slide, {}, 0
        self.path, self.dimensions, self.mpp = slide.path, slide.dimensions, slide.mpp
        self.level_downsamples, self.level_dimensions = slide.level_downsamples, slide.level_dimensions

    def level_layout(self, level):
        layout = self.slide.level_layout(level)
        read = layout.read

        def counted(r, c):
            self.reads[(level, r, c)] = self.reads.get((level, r, c), 0) + 1
            return read(r, c)

        layout.read = counted  # (a dataclass: replace the reader)
        return layout

    def read_region(self, *a):
        self.regions += 1
        return self.slide.read_region(*a)

    def thumbnail(self, n):
        return self.slide.thumbnail(n)

    def close(self):
        self.slide.close()


@pytest.mark.parametrize("layout", ["tiled", "stripped"])
def test_each_segment_is_decoded_at_most_once_even_with_overlap(tmp_path, layout):
    path = write_slide(tmp_path / "s.tif", size=(1200, 1000), tile=(128, 128) if layout == "tiled" else None)
    overlap = SMALL.model_copy(update={"stride": 25, "prescreen": False})  # each pixel in 16 candidates
    spy = CountingSlide(open_tiff(path))
    pixels, rows, info = tile_slide(spy, overlap)
    spy.close()
    assert info["n_candidates"] > 100 and len(rows) == len(pixels) > 0
    assert spy.regions == 0 and max(spy.reads.values()) == 1
    n_segments = 80 if layout == "tiled" else 28  # 10 x 8 tiles of 128 px, or strips of 37 rows
    assert len(spy.reads) == n_segments


@pytest.mark.parametrize("layout", ["tiled", "stripped"])
def test_a_raster_on_disk_gives_the_same_tiles_as_one_in_memory(tmp_path, layout, monkeypatch):
    """Working rasters over 768 MiB (STRIP AI's largest slides at the defaults, most above the mean
    at 1/2) go to a temporary file: the tiles must not depend on where the raster lives."""
    from clotclf_core.tiling import raster

    path = write_slide(tmp_path / "s.tif", size=(2048, 1536), tile=(64, 64) if layout == "tiled" else None,
                       blobs=((400, 400, 250, DARK), (760, 760, 260, PALE), (1700, 1200, 200, DARK)), seed=5)
    settings = SMALL.model_copy(update={"stride": 60})
    with closing(open_tiff(path)) as slide:
        mem_pixels, mem_rows, mem_info = tile_slide(slide, settings)
    monkeypatch.setattr(raster, "RASTER_IN_MEMORY_BYTES", 0)
    with closing(open_tiff(path)) as slide:
        disk_pixels, disk_rows, disk_info = tile_slide(slide, settings)
    assert disk_info["decoding"]["raster_on_disk"] and not mem_info["decoding"]["raster_on_disk"]
    assert len(mem_rows) > 10 and disk_rows == mem_rows and np.array_equal(disk_pixels, mem_pixels)
    assert disk_info["mask"] == mem_info["mask"] and disk_info["decoded_fraction"] == mem_info["decoded_fraction"]


def test_prescreen_skips_glass_and_finds_pale_tissue_by_flooding(tmp_path):
    """Tiles whose compressed size says glass are not decoded; pale tissue that compresses like
    glass, next to tissue, is found (its skipped neighbours are decoded until no tissue touches
    a skipped tile), and the QC picture hatches what was never decoded."""
    path = write_slide(tmp_path / "p.tif", size=(2048, 1536), tile=(64, 64),
                       blobs=((400, 400, 250, DARK), (760, 760, 260, PALE)), seed=5)
    spy = CountingSlide(open_tiff(path))
    pixels, rows, info = tile_slide(spy, SMALL)
    spy.close()
    dec = info["decoding"]
    assert dec["prescreen"] == "used" and dec["decoded_segments"] < dec["segments"] and max(spy.reads.values()) == 1
    assert dec["flood_rounds"] >= 1 and info["decoded_fraction"] < 0.9
    kept = {(r["x"], r["y"]) for r in rows}
    assert any(abs(x + 100 - 760) < 150 and abs(y + 100 - 760) < 150 for x, y in kept), "the pale blob was lost"
    with closing(open_tiff(path)) as slide:
        off = tile_slide(slide, SMALL.model_copy(update={"prescreen": False}))[1]
    assert kept == {(r["x"], r["y"]) for r in off}, "the prescreen changed which tiles are kept"


# ----------------------------------------------------------------------------- backgrounds


@pytest.mark.parametrize(
    "case, glass, dim",
    [("white", GLASS, 1.0), ("grey-green glass", (196, 210, 201), 1.0), ("dim scan", GLASS, 0.75)],
)
def test_background_follows_the_slide_and_pale_tissue_is_kept(tmp_path, case, glass, dim):
    """Glass tiles are never kept whatever the glass colour; pale (fibrin-rich) tissue beside dark
    tissue stays in the mask and is kept."""
    path = write_slide(tmp_path / "b.tif", size=(1600, 1200), glass=glass, dim=dim,
                       blobs=((400, 600, 260, DARK), (1150, 600, 260, PALE)))
    with closing(open_tiff(path)) as slide:
        _, rows, info = tile_slide(slide, SMALL)
    bg = np.asarray(info["mask"]["background"])
    assert np.abs(bg - np.asarray(glass) * dim).max() < 6, info["mask"]
    centres = [(r["x"] + 100, r["y"] + 100) for r in rows]
    near = lambda cx, cy, d: [c for c in centres if (c[0] - cx) ** 2 + (c[1] - cy) ** 2 < d * d]
    assert near(400, 600, 150) and near(1150, 600, 150), f"{case}: dark or pale tissue lost"
    assert not near(800, 100, 150) and not near(100, 1100, 150), f"{case}: glass tiles kept"
    assert len(rows) < 0.5 * info["grid"]["cols"] * info["grid"]["rows"]


def test_white_background_setting_is_clotclf_0_1s_behaviour_on_grey_glass(tmp_path):
    """With the background fixed to white (clotclf 0.1), grey glass looks like tissue."""
    path = write_slide(tmp_path / "g.tif", size=(1200, 1000), glass=(196, 210, 201))
    with closing(open_tiff(path)) as slide:
        old = tile_slide(slide, SMALL.model_copy(update={"background": "white"}), [("otsu", {"background_level": 220})])[1]
        new = tile_slide(slide, SMALL)[1]
    assert len(old) > 2 * len(new)


# ----------------------------------------------------------------------------- the real slide


@pytest.fixture
def real_folder(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "cmu.svs").symlink_to(REAL_SLIDE)
    return folder


REAL = TileSettings(downsample=4, tile_size=56, train_size=32, thumbnail_size=512)
#: clotclf 0.1 (commit 2fc9fc9) on the real slide with REAL (edges dropped, white glass, no prescreen):
#: tissue mask 36.5 % of the slide, 51 tiles kept of 65 candidates
CLOTCLF_0_1 = {"tissue_fraction": 0.365, "kept": 51}


def test_real_svs_keeps_the_same_tissue_as_clotclf_0_1(tmp_path, real_folder):
    summary = tile_slides(real_folder, tmp_path / "ts", settings=REAL, filters=[("otsu", {"threshold": 0.3})], progress=False)
    assert summary["tiled"] == 1 and summary["failed"] == 0
    ts = TileSet(tmp_path / "ts")
    rec = ts.slides["cmu"]
    assert rec["tissue_fraction"] == pytest.approx(CLOTCLF_0_1["tissue_fraction"], rel=0.05)
    assert len(ts) == pytest.approx(CLOTCLF_0_1["kept"], rel=0.05)
    assert len(ts) == summary["tiles_kept"] and len(ts.rejected) + len(ts) == summary["candidates"]
    assert ts.tile_size == 32 and ts.tile(0).shape == (32, 32, 3) and ts.pixels("cmu").mean() < 215
    assert set(ts.index["image_id"]) == {"cmu"} and (ts.index["label"] == "").all()
    assert {"score_otsu", "tissue", "darkness", "x", "y", "size", "level0_px_per_pixel"} <= set(ts.index.columns)
    assert (ts.index["score_otsu"] >= 0.3).all() and (ts.rejected["score_otsu"] < 0.3).all()
    assert (ts.rejected["rejected_by"] == "otsu").all()
    assert rec["mpp"] == pytest.approx(0.499) and rec["level0_px_per_pixel"] == 7.0
    assert rec["um_per_pixel"] == pytest.approx(7 * 0.499, rel=1e-3) and rec["mask"]["background_from"].startswith("mode")
    assert ts.meta["geometry"]["level0_px_per_pixel"] == 7.0 and ts.meta["geometry"]["slides_without_mpp"] == 0
    assert ts.settings["filters"][0]["name"] == "otsu" and ts.settings["source"] == "auto"
    comp = ts.meta["components"]
    assert comp["filters"][0]["distribution"] == "clotclf" and comp["filters"][0]["version"]
    assert {s["name"] for s in comp["sources"]} >= {"tifffile", "openslide"} and all(s["plugin"] for s in comp["sources"])
    assert (tmp_path / "ts" / "qc" / "cmu.png").stat().st_size > 1000
    assert ts.with_thresholds(otsu=0.6)["score_otsu"].min() >= 0.6
    with pytest.raises(TileSetError, match="below the 0.3"):
        ts.with_thresholds(otsu=0.1)


# ----------------------------------------------------------------------------- max_tiles


def test_max_tiles_keeps_the_best_by_a_documented_rank(tmp_path):
    path = write_slide(tmp_path / "m.tif", size=(1200, 1000))
    with closing(open_tiff(path)) as slide:
        all_pixels, every, _ = tile_slide(slide, SMALL)
        pixels, best, info = tile_slide(slide, SMALL.model_copy(update={"max_tiles": 3}))
        dark = tile_slide(slide, SMALL.model_copy(update={"max_tiles": 3, "max_tiles_by": "dark"}))[1]
    assert len(every) > 3 and len(best) == len(pixels) == 3 and info["rejected_by_max_tiles"] == len(every) - 3
    ranked = sorted(every, key=lambda r: (-r["tissue"], -r["darkness"]))
    assert {(r["x"], r["y"]) for r in best} == {(r["x"], r["y"]) for r in ranked[:3]}
    assert sorted(r["darkness"] for r in dark) == sorted(r["darkness"] for r in every)[-3:]
    assert sum(r["rejected_by"] == "max_tiles" for r in info["rejected_rows"]) == len(every) - 3
    by_pos = {(r["x"], r["y"]): i for i, r in enumerate(every)}
    for r, p in zip(best, pixels):  # the kept pixels are those tiles' pixels, in index order
        np.testing.assert_array_equal(p, all_pixels[by_pos[(r["x"], r["y"])]])


# ----------------------------------------------------------------------------- cohorts: resume, shards, engines


def test_manifest_labels_resume_and_settings(tmp_path, slides):
    manifest = tmp_path / "train.csv"
    manifest.write_text("image_id,center_id,patient_id,image_num,label\ns1,11,p1,0,CE\ns2,4,p2,0,LAA\n")
    out = tmp_path / "ts"
    first = tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False, require_labels=True)
    assert first["tiled"] == 2 and first["skipped"] == 0 and first["engine"] == "in-process"
    ts = TileSet(out)
    labels = ts.index.groupby("image_id")["label"].first().to_dict()
    assert labels == {"s1": "CE", "s2": "LAA"} and set(ts.index["center_id"]) == {"11", "4"}
    assert sorted(p.name for p in (out / "index").iterdir()) == ["s1.csv", "s2.csv"]
    stamp = (out / "pixels" / "s1.npy").stat().st_mtime_ns

    again = tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False)
    assert again["skipped"] == 2 and again["tiled"] == 0 and again["candidates"] == 0
    assert (out / "pixels" / "s1.npy").stat().st_mtime_ns == stamp and len(TileSet(out)) == len(ts)

    write_slide(slides / "s3.tif", seed=3)
    manifest.write_text(manifest.read_text() + "s3,4,p3,0,CE\n")
    third = tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False)
    assert third["skipped"] == 2 and third["tiled"] == 1
    assert list(TileSet(out).slides) == ["s1", "s2", "s3"]

    other = SMALL.model_copy(update={"tile_size": 120})
    with pytest.raises(TileSetError, match=r"different settings \(tile_size\).*--overwrite"):
        tile_slides(slides, out, manifest=manifest, settings=other, progress=False)
    with pytest.raises(TileSetError, match=r"different settings \(filters\)"):
        tile_slides(slides, out, manifest=manifest, settings=SMALL, filters=[("otsu", {"threshold": 0.5})], progress=False)
    redo = tile_slides(slides, out, manifest=manifest, settings=other, overwrite=True, progress=False)
    assert redo["tiled"] == 3 and TileSet(out).settings["tile_size"] == 120


def test_retiling_follows_the_current_manifest_without_pixel_work(tmp_path, slides):
    write_slide(slides / "s3.tif", seed=3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,center_id,patient_id,label\ns1,11,p1,CE\ns2,4,p2,\ns3,4,p3,CE\n")
    out = tmp_path / "ts"
    tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False)
    stamps = {k: (out / "pixels" / f"{k}.npy").stat().st_mtime_ns for k in ("s1", "s2")}
    shard = (out / "index" / "s1.csv").stat().st_mtime_ns
    n_s3 = TileSet(out).slides["s3"]["n_tiles"]

    manifest.write_text("image_id,center_id,patient_id,label\ns1,11,p7,CE\ns2,4,p2,LAA\n")
    again = tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False)
    assert (again["skipped"], again["tiled"], again["candidates"], again["relabelled"], again["removed"]) == (2, 0, 0, 2, 1)
    assert {r["image_id"]: (r["status"], r["reason"]) for r in again["per_slide"]} == {
        "s1": ("relabelled", "patient_id 'p1' -> 'p7'"),
        "s2": ("relabelled", "label '' -> 'LAA'"),
        "s3": ("removed", f"no longer in the manifest (was done, {n_s3} tiles)"),
    }
    ts = TileSet(out)
    per_slide = ts.index.groupby("image_id")[["patient_id", "label"]].first().apply(tuple, axis=1).to_dict()
    assert per_slide == {"s1": ("p7", "CE"), "s2": ("p2", "LAA")} and set(ts.slides) == {"s1", "s2"}
    assert not (out / "pixels" / "s3.npy").exists() and not (out / "index" / "s3.csv").exists()
    assert not (out / "qc" / "s3.png").exists()
    assert stamps == {k: (out / "pixels" / f"{k}.npy").stat().st_mtime_ns for k in ("s1", "s2")}, "no pixel work"
    assert (out / "index" / "s1.csv").stat().st_mtime_ns == shard, "no index rewrite either"
    text = format_summary(again)
    assert "2 already done, 2 relabelled, 1 removed," in text.splitlines()[0]
    assert no_temp_files(out)


def test_retiling_repairs_broken_pixel_files_and_shards_and_replaced_slides(tmp_path, slides):
    write_slide(slides / "s3.tif", seed=3)
    out = tmp_path / "ts"
    tile_slides(slides, out, settings=SMALL, progress=False)
    before = TileSet(out)
    original = {k: np.array(before.pixels(k)) for k in ("s1", "s2")}
    del before
    data = (out / "pixels" / "s1.npy").read_bytes()
    (out / "pixels" / "s1.npy").write_bytes(data[: len(data) // 2])
    (out / "index" / "s2.csv").write_bytes(b"\x00\x01binary\xff" * 10)
    with pytest.raises(TileSetError, match=r"broken slide file.*s1.npy: truncated.*--overwrite"):
        TileSet(out)  # the merged index is still current: reading it checks the pixel files
    write_slide(slides / "s3.tif", seed=33, blobs=((300, 300, 250, DARK),))  # replaced by another slide

    again = tile_slides(slides, out, settings=SMALL, progress=False)
    assert again["tiled"] == 3 and again["skipped"] == 0
    notes = " | ".join(again["notes"])
    assert "s1: its files were broken (pixels/s1.npy: truncated" in notes
    assert "s2: its files were broken (the tile index" in notes and "binary data" in notes
    assert "s3: the slide file changed since it was tiled" in notes
    ts = TileSet(out)
    for k, pixels in original.items():
        np.testing.assert_array_equal(ts.pixels(k), pixels)


def test_interrupted_runs_leave_only_finished_slides(tmp_path, slides, monkeypatch):
    import clotclf_core.tiling.pipeline as pipeline
    from clotclf_core.plugin.errors import Interrupted

    real_windows = pipeline.windows

    def interrupted(scan, ys, xs, tile, bg):
        if scan.raster.width == 250 and getattr(interrupted, "armed", False):  # s2 (after s1)
            raise KeyboardInterrupt
        interrupted.armed = True
        yield from real_windows(scan, ys, xs, tile, bg)

    monkeypatch.setattr(pipeline, "windows", interrupted)
    out = tmp_path / "ts"
    with pytest.raises(Interrupted, match=r"1 slide\(s\) finished in this run and kept.*same command again"):
        tile_slides(slides, out, settings=SMALL, progress=False)
    assert set(TileSet(out).slides) == {"s1"} and not (out / "pixels" / "s2.npy").exists() and no_temp_files(out)
    monkeypatch.setattr(pipeline, "windows", real_windows)
    resumed = tile_slides(slides, out, settings=SMALL, progress=False)
    assert resumed["skipped"] == 1 and resumed["tiled"] == 1 and no_temp_files(out)
    assert set(TileSet(out).index["image_id"]) == {"s1", "s2"}


def test_bad_slides_are_recorded_not_fatal(tmp_path, slides):
    (slides / "random.tif").write_bytes(np.random.default_rng(0).bytes(5000))
    (slides / "notes.svs").write_text("this is not an image\n")
    whole = write_slide(tmp_path / "whole.tif", size=(1000, 800), seed=4).read_bytes()
    (slides / "cut.tif").write_bytes(whole[: len(whole) // 2])
    write_slide(slides / "blank.tif", blobs=())
    manifest = tmp_path / "m.csv"
    ids = ["s1", "s2", "random", "notes", "cut", "blank", "missing"]
    manifest.write_text("image_id\n" + "\n".join(ids) + "\n")

    summary = tile_slides(slides, tmp_path / "ts", manifest=manifest, settings=SMALL, progress=False)
    status = {r["image_id"]: (r["status"], r["reason"]) for r in summary["per_slide"]}
    assert status["s1"][0] == status["s2"][0] == "done" and status["blank"][0] == "no_tissue"
    for bad in ("random", "notes", "cut"):
        assert status[bad][0] == "failed" and status[bad][1], bad
    # a row without a slide file is not tiled: counted in "failed", listed in missing_slides.csv
    assert "missing" not in status and summary["missing"]["count"] == 1 and summary["failed"] == 4
    assert "no slide file for image_id 'missing'" in summary["missing"]["why"]
    assert (tmp_path / "ts" / "missing_slides.csv").read_text() == "image_id\nmissing\n"
    assert "truncated" in status["cut"][1] and "4294967295" not in status["cut"][1]
    assert {f["image_id"] for f in summary["failures"]} == {"random", "notes", "cut"}
    ts = TileSet(tmp_path / "ts")
    assert set(ts.index["image_id"]) == {"s1", "s2"} and ts.slides["cut"]["status"] == "failed"
    again = tile_slides(slides, tmp_path / "ts", manifest=manifest, settings=SMALL, progress=False)
    assert again["skipped"] == 3 and again["failed"] == 4  # failed slides are retried, no_tissue ones not


def test_nothing_tileable_is_an_error(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.tif").write_text("not a tiff")
    write_slide(d / "b.tif", blobs=())
    with pytest.raises(ClotclfError, match=r"no slide could be tiled \(1 failed, 1 without tissue\)"):
        tile_slides(d, tmp_path / "ts", settings=SMALL, progress=False)
    assert json.loads((tmp_path / "ts" / "tileset.json").read_text())["slides"]["a"]["status"] == "failed"
    with pytest.raises(ClotclfError, match="no slide files"):
        tile_slides(tmp_path / "ts" / "qc", tmp_path / "ts3", settings=SMALL, progress=False)
    with pytest.raises(ClotclfError, match="does not exist"):
        tile_slides(tmp_path / "nope", tmp_path / "ts4", settings=SMALL, progress=False)


def _same_tilesets(a: TileSet, b: TileSet) -> None:
    assert a.index.equals(b.index) and a.rejected.equals(b.rejected) and list(a.slides) == list(b.slides)
    for image_id in a.index["image_id"].unique():
        np.testing.assert_array_equal(a.pixels(image_id), b.pixels(image_id))
    strip = lambda m: {k: {f: v for f, v in s.items() if f != "seconds"} for k, s in m.items()}
    assert strip(a.slides) == strip(b.slides)


def test_workers_threads_and_dask_give_the_same_tileset(tmp_path, slides):
    write_slide(slides / "s3.tif", seed=3, blobs=((200, 600, 150, DARK), (800, 200, 120, DARK)))
    (slides / "broken.tif").write_text("nope")
    one = tile_slides(slides, tmp_path / "w1", settings=SMALL, threads=1, progress=False)
    two = tile_slides(slides, tmp_path / "w2", settings=SMALL, workers=2, threads=1, progress=False)
    threaded = tile_slides(slides, tmp_path / "t3", settings=SMALL, threads=3, progress=False)
    dask = tile_slides(slides, tmp_path / "dk", settings=SMALL, workers=2, threads=1, dask="local", progress=False)
    assert (two["engine"], dask["engine"], threaded["threads"]) == ("local processes", "dask", 3)
    assert one["tiles_kept"] == two["tiles_kept"] == threaded["tiles_kept"] == dask["tiles_kept"] > 0
    a = TileSet(tmp_path / "w1")
    for other in ("w2", "t3", "dk"):
        _same_tilesets(a, TileSet(tmp_path / other))
    assert TileSet(tmp_path / "dk").slides["broken"]["status"] == "failed"
    # a Dask run resumes like a local one
    again = tile_slides(slides, tmp_path / "dk", settings=SMALL, dask="local", workers=1, progress=False)
    assert again["skipped"] == 3 and again["failed"] == 1


def test_format_1_tilesets_are_read_but_not_resumed(tmp_path):
    root = tmp_path / "old"
    (root / "pixels").mkdir(parents=True)
    np.save(root / "pixels" / "a.npy", np.full((2, 8, 8, 3), 9, np.uint8))
    (root / "tiles.csv").write_text("image_id,patient_id,center_id,label,row,x,y,size,downsample,score_otsu\n"
                                    "a,p,c,CE,0,0,0,80,10.0,0.5\na,p,c,CE,1,80,0,80,10.0,0.7\n")
    (root / "tileset.json").write_text(json.dumps({"format": "clotclf-tileset", "format_version": 1, "tile_pixels": 8,
                                                   "settings": {"downsample": 10.0}, "slides": {"a": {"status": "done", "n_tiles": 2}}}))
    ts = TileSet(root)
    assert len(ts) == 2 and ts.tile(1).max() == 9 and len(ts.rejected) == 0
    from clotclf_core.tiling.writer import TileSetWriter

    with pytest.raises(TileSetError, match=r"format 1 \(an older clotclf\).*--overwrite"):
        TileSetWriter(root, {"x": 1}, 8)
    # predict re-tiles with a model's recorded settings: clotclf 0.1 records get that geometry
    old = TileSettings.from_recorded({"downsample": 10.0, "tile_size": 600, "stride": None, "tile_um": None, "train_size": 224,
                                      "min_tissue": 0.1, "thumbnail_size": 1024, "tissue_method": "either",
                                      "batch_size": 64, "prescreen": True, "filters": [], "source": "auto"})
    assert (old.edges, old.background, old.tile_size) == ("drop", "white", 600)
    assert TileSettings.from_recorded(TileSettings().record()) == TileSettings()


# ----------------------------------------------------------------------------- CLI


def run_cli(*args):
    from clotclf_core.cli.main import cli
    from clotclf_core.plugin_manager import reset_manager

    reset_manager()
    return CliRunner().invoke(cli, ["tile", *map(str, args)], catch_exceptions=False)


SMALL_ARGS = ["--downsample", "2", "--tile-size", "100", "--train-size", "50", "--thumbnail-size", "256"]


def test_cli_tile(tmp_path, slides):
    res = run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["tiled"] == 2 and summary["tiles_kept"] == len(TileSet(tmp_path / "ts"))
    # the keys docs/cli.md promises (clotclf 0.1's, then the new ones)
    assert {"out", "slides", "skipped", "tiled", "no_tissue", "failed", "candidates", "tiles_kept", "rejected",
            "tiles_in_tileset", "workers", "threads", "seconds", "per_slide", "notes",
            "relabelled", "removed", "engine", "failures"} <= set(summary)
    assert set(summary["per_slide"][0]) >= {"image_id", "status", "kept", "candidates", "seconds", "reason"}
    res = run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "--quiet")
    assert res.exit_code == 0 and "2 already done" in res.output and "IMAGE_ID" not in res.output
    res = run_cli(slides, "--out", tmp_path / "ts2", *SMALL_ARGS, "--filter", "otsu:threshold=0.6,channel=saturation",
                  "--max-tiles", "2", "--tissue-method", "od", "--no-prescreen", "-q")
    assert res.exit_code == 0, res.output
    ts = TileSet(tmp_path / "ts2")
    assert ts.settings["filters"][0]["options"]["channel"] == "saturation" and (ts.index["score_otsu"] >= 0.6).all()
    assert ts.settings["tissue_method"] == "od" and ts.settings["prescreen"] is False
    assert ts.index.groupby("image_id").size().max() <= 2 and ts.settings["max_tiles"] == 2
    (slides / "s2.tif").unlink()
    res = run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS)
    assert res.exit_code == 0 and "1 already done, 1 removed," in res.output, res.output
    assert set(TileSet(tmp_path / "ts").slides) == {"s1"}


def test_cli_tile_options_are_the_tile_settings_fields():
    """`clotclf tile`'s geometry options are generated from TileSettings: one per field, its
    description as help with its default, None (not given) unless given."""
    from clotclf_core.cli.data import tile
    from clotclf_core.tiling.settings import TileSettings

    options = {p.name: p for p in tile.params}
    for name, field in TileSettings.model_fields.items():
        option = options[name]
        assert option.default is None and option.help.startswith(field.description), name
        default = field.get_default()
        shown = None if default is None else (f"--{'' if default else 'no-'}{name.replace('_', '-')}" if isinstance(default, bool) else default)
        assert shown is None or option.help.endswith(f"[default: {shown}]"), (name, option.help)
    assert "--tile-size" in options["downsample"].help and options["tile_size"].opts == ["--tile-size"]


def test_cli_defaults_are_the_documented_geometry(tmp_path):
    d = tmp_path / "one"
    d.mkdir()
    write_slide(d / "big.tif", size=(2200, 1900), blobs=((1000, 900, 600, DARK),))
    res = run_cli(d, "--out", tmp_path / "ts", "-q")
    assert res.exit_code == 0, res.output
    ts = TileSet(tmp_path / "ts")
    rec = ts.slides["big"]
    assert ts.tile_size == 224 and rec["tile_size_level0"] == 896 and rec["level0_px_per_pixel"] == 4.0
    assert (rec["grid"]["cols"], rec["grid"]["rows"]) == (3, 3) and rec["grid"]["x0"] < 0
    assert ts.settings["downsample"] == 4.0 and ts.settings["edges"] == "pad"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--filter", "otsuu"], "unknown filter 'otsuu'. Known filters: otsu"),
        (["--filter", "otsu:threshold=high"], "filter 'otsu': option 'threshold'"),
        (["--filter", "otsu:thresh"], "not of the form key=value"),
        (["--filter", "otsu", "--filter", "otsu"], "filter 'otsu' is given twice"),
        (["--source", "nosuch"], "unknown source 'nosuch'"),
        (["--tile-size", "0"], "tiling settings: option 'tile_size'"),
        (["--stride", "500"], "stride (500) larger than tile_size"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--max-tiles", "0"], "option 'max_tiles'"),
        (["--manifest", "MISSING"], "manifest"),
        (["--label", "CE", "--manifest", "MANIFEST"], "label 'LAA'; allowed labels are CE"),
    ],
)
def test_cli_bad_inputs(tmp_path, slides, extra, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,label\ns1,CE\ns2,LAA\n")
    extra = [str(tmp_path / "missing.csv") if e == "MISSING" else str(manifest) if e == "MANIFEST" else e for e in extra]
    res = run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "-q", *extra)
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output


def test_cli_bad_folder_and_settings_change(tmp_path, slides):
    res = run_cli(tmp_path / "nope", "--out", tmp_path / "ts", "-q")
    assert res.exit_code != 0 and "does not exist" in res.output and len(res.output.strip().splitlines()) == 1
    assert run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "-q").exit_code == 0
    res = run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "--min-tissue", "0.5", "-q")
    assert res.exit_code != 0 and "different settings (min_tissue)" in res.output and "--overwrite" in res.output
    res = run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "--min-tissue", "0.5", "-q", "--overwrite")
    assert res.exit_code == 0, res.output


def test_tiling_holds_blas_and_opencv_to_its_threads_and_gives_them_back(monkeypatch):
    """tile_one runs under compute_threads(threads): OpenBLAS's and OpenCV's spinning idle threads
    doubled a small slide's CPU time; the limits are lifted afterwards."""
    import cv2
    from threadpoolctl import threadpool_info

    from clotclf_core.tiling import pipeline
    from clotclf_core.tiling.settings import TileSettings

    def blas() -> list[int]:  # the BLAS libraries numpy loaded (those loaded later are not limited: see compute_threads)
        import numpy.linalg  # noqa: F401

        mine = {lib.filepath for lib in pipeline._BLAS.lib_controllers} if pipeline._BLAS is not None else None
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas" and (mine is None or i["filepath"] in mine)]

    cv2.setNumThreads(4)
    pipeline.blas_controller()  # (made once per process)
    before = blas()
    seen = {}

    def spy(*args, **kwargs):
        seen.update(blas=blas(), cv2=cv2.getNumThreads())
        raise RuntimeError("stop here")

    monkeypatch.setattr(pipeline, "_tile_one", spy)
    with pytest.raises(RuntimeError, match="stop here"):
        pipeline.tile_one(None, TileSettings(), [], None, threads=1)
    assert seen["cv2"] == 1 and all(n == 1 for n in seen["blas"])
    assert cv2.getNumThreads() == 4 and blas() == before  # given back, after an error too
    with pipeline.compute_threads(2):
        assert cv2.getNumThreads() == 2
    cv2.setNumThreads(-1)


# ----------------------------------------------------------------------------- the QC picture


def test_qc_outline_is_scikit_images_inner_boundary_and_the_png_holds_the_picture(tmp_path):
    from types import SimpleNamespace

    from PIL import Image
    from skimage.segmentation import find_boundaries

    from clotclf_core.tiling.qc import inner_boundary, qc_image, write_qc

    rng = np.random.default_rng(0)
    for _ in range(100):  # random masks, blobs and the image's border
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        m = rng.random((h, w)) < rng.random()
        assert (inner_boundary(m) == find_boundaries(m, mode="inner")).all()
    assert not inner_boundary(np.ones((5, 7), bool)).any()  # the image's border is not outside the mask

    view = np.full((60, 80, 3), 240, np.uint8)
    view[10:50, 20:60] = (180, 90, 160)
    mask = np.zeros((60, 80), bool)
    mask[10:50, 20:60] = True
    res = SimpleNamespace(view=view, view_decoded=np.ones((60, 80), np.float32), mask=mask,
                          boxes=[(200, 100, 100, -1), (400, 300, 100, 0)], info={"width": 800, "height": 600})
    write_qc(tmp_path / "qc" / "s.png", res, ["otsu"], "s")
    written = np.asarray(Image.open(tmp_path / "qc" / "s.png").convert("RGB"))
    expected = np.asarray(qc_image(view, res.view_decoded, mask, res.boxes, (800, 600), ["otsu"], "s"))
    assert written.shape == expected.shape and (written == expected).all()  # lossless, colours in RGB order
    assert (written == (40, 90, 255)).all(axis=-1).any()  # the blue outline is drawn
    assert list(tmp_path.joinpath("qc").iterdir()) == [tmp_path / "qc" / "s.png"]  # no temporary file left


def test_darkness_summed_a_batch_at_once_is_opencvs_mean_per_tile():
    """darkness: small tiles' sums taken by one cv2.reduce a batch give the same floats as OpenCV's
    per-tile mean (its integer sum times 1 / pixels), which larger tiles use."""
    import cv2

    from clotclf_core.tiling.pipeline import darkness

    rng = np.random.default_rng(21)
    bg = np.array([203, 207, 198], np.uint8)
    for side, n in ((1, 300), (7, 300), (14, 300), (20, 300), (21, 30), (224, 5)):
        tiles = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        tiles[:5] = 255  # brighter than the glass: 0
        grey = np.array([sum(cv2.mean(t)[:3]) / 3.0 for t in tiles])
        want = np.clip(1.0 - grey / max(float(np.mean(bg)), 1.0), 0.0, 1.0)
        assert np.array_equal(darkness(tiles, bg), want)
    strided = rng.integers(0, 256, (6, 20, 20, 3), dtype=np.uint8)[::2, 2:18]  # (16 px: the reduce)
    assert np.array_equal(darkness(strided, bg), darkness(np.ascontiguousarray(strided), bg))
    assert np.array_equal(darkness(strided[:0], bg), np.zeros(0))
