"""Tiling: candidate grid, end to end on the real slide, resume, settings, interruptions, bad slides,
workers, and the `clotclf tile` command. Synthetic slides are small deflate TIFFs written here."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clotclf_core import tiling
from clotclf_core.errors import ClotclfError
from clotclf_core.tileset import TileSet, TileSetError
from clotclf_core.tiling import TileSettings, candidate_grid, tile_slide, tile_slides

REAL_SLIDE = Path(__file__).parent / "data" / "cmu_small_region.svs"
#: small settings: 200-px level-0 tiles cached at 32 px
SMALL = TileSettings(downsample=2, tile_size=100, train_size=32, thumbnail_size=256, batch_size=8)


def write_slide(path: Path, size=(1000, 800), blobs=((300, 300, 180), (700, 500, 150)), seed=0, mpp=0.5) -> Path:
    """A tiled deflate RGB TIFF: near-white glass with pink, textured round 'tissue' blobs."""
    import tifffile

    rng = np.random.default_rng(seed)
    w, h = size
    img = np.clip(243 + rng.normal(0, 2, (h, w, 3)), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w]
    for cx, cy, r in blobs:
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[inside] = np.clip(np.array([200, 100, 150]) + rng.normal(0, 20, (int(inside.sum()), 3)), 0, 255)
    kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    tifffile.imwrite(path, img.astype(np.uint8), tile=(128, 128), compression="deflate", photometric="rgb", **kw)
    return path


@pytest.fixture
def slides(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    write_slide(d / "s1.tif", seed=1)
    write_slide(d / "s2.tif", blobs=((500, 400, 250),), seed=2)
    return d


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- grid


def test_grid_keeps_only_tiles_overlapping_tissue():
    mask = np.zeros((100, 100), bool)
    mask[10:30, 60:90] = True  # slide 1000x1000 px: tissue at x 600..900, y 100..300
    xy, frac = candidate_grid(mask, (1000, 1000), 200, 200, 0.0)
    got = {tuple(int(v) for v in p): round(float(f), 3) for p, f in zip(xy, frac)}
    assert got == {(600, 0): 0.5, (800, 0): 0.25, (600, 200): 0.5, (800, 200): 0.25}
    xy, frac = candidate_grid(mask, (1000, 1000), 200, 200, 0.3)
    assert {tuple(int(v) for v in p) for p in xy} == {(600, 0), (600, 200)}
    # the edge remainder (x 800..1000 fits, 1000 does not) is dropped; overlap makes more candidates
    xy2, _ = candidate_grid(mask, (1000, 1000), 200, 100, 0.1)
    assert len(xy2) > len(xy) and (xy2 + 200 <= 1000).all()
    assert len(candidate_grid(np.zeros((100, 100), bool), (1000, 1000), 200, 200, 0.0)[0]) == 0
    assert len(candidate_grid(mask, (150, 150), 200, 200, 0.0)[0]) == 0  # smaller than one tile


class SpySlide:
    """Wraps a Slide and records every read_region call."""

    def __init__(self, slide):
        self.slide, self.calls = slide, []
        self.path, self.dimensions, self.mpp = slide.path, slide.dimensions, slide.mpp

    def thumbnail(self, n):
        return self.slide.thumbnail(n)

    def read_region(self, x, y, w, h, ds=1.0):
        self.calls.append((x, y, w, h, ds))
        return self.slide.read_region(x, y, w, h, ds)

    def close(self):
        self.slide.close()


def test_background_is_never_read(tmp_path):
    from clotclf_core.sources import open_slide

    # one blob in the top-left corner: the rest of the slide is glass
    path = write_slide(tmp_path / "corner.tif", size=(1200, 1000), blobs=((200, 200, 150),))
    spy = SpySlide(open_slide(path))
    pixels, rows, info = tile_slide(spy, SMALL, [("otsu", {})])
    spy.close()
    assert info["status"] == "done" and len(rows) == len(pixels) > 0
    assert spy.calls and all(x < 400 and y < 400 for x, y, *_ in spy.calls)
    assert all(w == h == 200 and ds == pytest.approx(200 / 32) for _, _, w, h, ds in spy.calls)
    assert info["n_candidates"] == len(spy.calls) < (1200 // 200) * (1000 // 200)
    assert pixels.dtype == np.uint8 and pixels.shape[1:] == (32, 32, 3)
    assert all(r["score_otsu"] >= 0.3 for r in rows)


def test_tile_slide_without_tissue_and_tile_um(tmp_path):
    from clotclf_core.sources import open_slide

    with closing(open_slide(write_slide(tmp_path / "blank.tif", blobs=()))) as blank:
        pixels, rows, info = tile_slide(blank, SMALL)
    assert info["status"] == "no_tissue" and "empty" in info["reason"] and len(pixels) == 0 and rows == []

    with closing(open_slide(write_slide(tmp_path / "um.tif", mpp=0.25))) as slide:
        _, rows, info = tile_slide(slide, SMALL.model_copy(update={"tile_um": 50.0}))
    assert info["tile_size_level0"] == 200 and rows[0]["size"] == 200
    with closing(open_slide(write_slide(tmp_path / "nompp.tif", mpp=None))) as slide:
        with pytest.raises(ClotclfError, match="microns per pixel"):
            tile_slide(slide, SMALL.model_copy(update={"tile_um": 50.0}))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def real_folder(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "cmu.svs").symlink_to(REAL_SLIDE)
    return folder


REAL = TileSettings(downsample=4, tile_size=56, train_size=32, thumbnail_size=512)


def test_real_svs_end_to_end(tmp_path, real_folder):
    settings = REAL.model_copy(update={"prescreen": False})
    summary = tile_slides(real_folder, tmp_path / "ts", settings=settings, progress=False)
    assert summary["tiled"] == 1 and summary["failed"] == 0
    ts = TileSet(tmp_path / "ts")
    assert len(ts) == summary["tiles_kept"] > 10
    assert ts.tile_size == 32 and ts.tile(0).shape == (32, 32, 3)
    assert set(ts.index["image_id"]) == {"cmu"} and (ts.index["label"] == "").all()
    assert {"score_otsu", "tissue", "x", "y", "size"} <= set(ts.index.columns)
    assert (ts.index["score_otsu"] >= 0.3).all()
    # the kept tiles are tissue: much darker and more saturated than glass (~243 grey)
    assert ts.pixels("cmu").mean() < 215
    rec = ts.slides["cmu"]
    assert rec["status"] == "done" and rec["mpp"] == pytest.approx(0.499) and rec["mask_from"] == "thumbnail"
    assert 0.25 < rec["tissue_fraction"] < 0.45  # about a third of the slide is tissue
    assert ts.settings["filters"][0]["name"] == "otsu" and ts.settings["source"] == "auto"
    assert ts.settings["tile_size"] == 56 and rec["source"] in ("openslide", "tifffile")
    assert (tmp_path / "ts" / "qc" / "cmu.png").stat().st_size > 1000
    assert summary["rejected"]["otsu"] + summary["tiles_kept"] == summary["candidates"]


@pytest.fixture
def prescreen_small_slides(monkeypatch):
    """The prescreen normally starts at 64 Mpx; test it on small slides."""
    import clotclf_core.tissue as tissue

    monkeypatch.setattr(tissue, "PRESCREEN_MIN_PIXELS", 0)


def test_byte_count_prescreen_keeps_the_same_tissue_on_the_real_slide(tmp_path, real_folder, prescreen_small_slides):
    """Single-level TIFF read by tifffile: the mask comes from compressed tile sizes, without
    decoding; the tiles kept must be (nearly) those of the full-thumbnail mask."""
    kept = {}
    for prescreen in (True, False):
        out = tmp_path / f"ts_{prescreen}"
        tile_slides(real_folder, out, settings=REAL.model_copy(update={"prescreen": prescreen}), source="tifffile", progress=False)
        ts = TileSet(out)
        assert ts.slides["cmu"]["mask_from"] == ("byte_counts" if prescreen else "thumbnail")
        kept[prescreen] = set(zip(ts.index["x"], ts.index["y"]))
    both = kept[True] & kept[False]
    assert len(both) >= 0.95 * len(kept[False]), "the prescreen lost tissue tiles"
    assert len(kept[True]) <= 1.1 * len(kept[False])


def test_prescreen_falls_back_when_sampled_glass_holds_tissue(tmp_path, prescreen_small_slides):
    """Pale tissue compresses like glass: the sample check catches it and the whole slide is decoded."""
    import tifffile

    rng = np.random.default_rng(5)
    img = np.clip(243 + rng.normal(0, 2, (1024, 1024, 3)), 0, 255)
    img[:512, :512] = np.clip(np.array([190, 90, 140]) + rng.normal(0, 30, (512, 512, 3)), 0, 255)  # busy: noisy stain
    img[640:1024, 640:1024] = np.clip(np.array([225, 190, 215]) + rng.normal(0, 2, (384, 384, 3)), 0, 255)  # pale, smooth
    path = tmp_path / "pale.tif"
    tifffile.imwrite(path, img.astype(np.uint8), tile=(64, 64), compression="deflate", photometric="rgb")
    from clotclf_core.sources import open_slide
    from clotclf_core.tiling import overview

    with closing(open_slide(path, source="tifffile")) as slide:
        _, mask, how = overview(slide, SMALL)
    assert how.startswith("thumbnail (the byte-count prescreen missed tissue")
    assert mask[int(0.8 * mask.shape[0]), int(0.8 * mask.shape[1])], "the pale region is in the mask"


def test_manifest_labels_resume_and_settings(tmp_path, slides):
    manifest = tmp_path / "train.csv"
    manifest.write_text("image_id,center_id,patient_id,image_num,label\ns1,11,p1,0,CE\ns2,4,p2,0,LAA\n")
    out = tmp_path / "ts"
    first = tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False, require_labels=True)
    assert first["tiled"] == 2 and first["skipped"] == 0
    ts = TileSet(out)
    labels = ts.index.groupby("image_id")["label"].first().to_dict()
    assert labels == {"s1": "CE", "s2": "LAA"} and set(ts.index["center_id"]) == {"11", "4"}
    stamp = (out / "pixels" / "s1.npy").stat().st_mtime_ns

    again = tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False)
    assert again["skipped"] == 2 and again["tiled"] == 0 and again["candidates"] == 0
    assert (out / "pixels" / "s1.npy").stat().st_mtime_ns == stamp
    assert len(TileSet(out)) == len(ts)

    write_slide(slides / "s3.tif", seed=3)
    manifest.write_text(manifest.read_text() + "s3,4,p3,0,CE\n")
    third = tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False)
    assert third["skipped"] == 2 and third["tiled"] == 1

    other = SMALL.model_copy(update={"tile_size": 120})
    with pytest.raises(TileSetError, match=r"different settings \(tile_size\).*--overwrite"):
        tile_slides(slides, out, manifest=manifest, settings=other, progress=False)
    with pytest.raises(TileSetError, match=r"different settings \(filters\)"):
        tile_slides(slides, out, manifest=manifest, settings=SMALL, filters=[("otsu", {"threshold": 0.5})], progress=False)
    redo = tile_slides(slides, out, manifest=manifest, settings=other, overwrite=True, progress=False)
    assert redo["tiled"] == 3 and TileSet(out).settings["tile_size"] == 120


def test_retiling_follows_the_current_manifest(tmp_path, slides):
    """Tile with a label left blank, fix the manifest, re-tile into the same folder: the done
    slides take the new labels / patients without being read again, and a slide the manifest
    no longer lists leaves the TileSet (index, status, pixels, QC picture)."""
    write_slide(slides / "s3.tif", seed=3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,center_id,patient_id,label\ns1,11,p1,CE\ns2,4,p2,\ns3,4,p3,CE\n")
    out = tmp_path / "ts"
    tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False)
    assert TileSet(out).index.query("image_id == 's2'")["label"].eq("").all()
    stamps = {k: (out / "pixels" / f"{k}.npy").stat().st_mtime_ns for k in ("s1", "s2")}
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
    assert again["tiles_in_tileset"] == len(ts)
    assert not (out / "pixels" / "s3.npy").exists() and not (out / "qc" / "s3.png").exists()
    assert stamps == {k: (out / "pixels" / f"{k}.npy").stat().st_mtime_ns for k in ("s1", "s2")}, "no pixel work"
    text = tiling.format_summary(again)
    assert "2 already done, 2 relabelled, 1 removed," in text.splitlines()[0]
    assert any(line.startswith("s3") and "removed" in line for line in text.splitlines()[2:])
    assert no_temp_files(out)

    # the same run again changes nothing; the slide listed again is tiled again
    assert tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False)["relabelled"] == 0
    manifest.write_text(manifest.read_text() + "s3,4,p3,LAA\n")
    third = tile_slides(slides, out, manifest=manifest, settings=SMALL, progress=False)
    assert third["tiled"] == 1 and third["removed"] == third["relabelled"] == 0
    assert TileSet(out).index.query("image_id == 's3'")["label"].eq("LAA").all()


def test_retiling_repairs_missing_and_truncated_pixel_files(tmp_path, slides):
    out = tmp_path / "ts"
    tile_slides(slides, out, settings=SMALL, progress=False)
    before = TileSet(out)
    original = {k: np.array(before.pixels(k)) for k in ("s1", "s2")}
    del before
    data = (out / "pixels" / "s1.npy").read_bytes()
    (out / "pixels" / "s1.npy").write_bytes(data[: len(data) // 2])
    (out / "pixels" / "s2.npy").unlink()
    with pytest.raises(TileSetError, match=r"2 broken pixel file\(s\): .*s1.npy: truncated.*s2.npy: missing.*--overwrite"):
        TileSet(out)

    again = tile_slides(slides, out, settings=SMALL, progress=False)
    assert again["tiled"] == 2 and again["skipped"] == 0
    assert any(n.startswith("s1: pixels/s1.npy was broken (truncated") for n in again["notes"])
    assert any(n.startswith("s2: pixels/s2.npy was broken (missing)") for n in again["notes"])
    ts = TileSet(out)
    for k, pixels in original.items():
        np.testing.assert_array_equal(ts.pixels(k), pixels)


def test_interrupted_write_leaves_only_finished_slides(tmp_path, slides, monkeypatch):
    out = tmp_path / "ts"
    import clotclf_core.tileset as tileset_mod

    real_write_text = tileset_mod.write_text
    calls = {"index": 0}

    def failing_write_text(target, text):
        if Path(target).name == "tiles.csv":
            calls["index"] += 1
            if calls["index"] == 2:  # second slide: pixels already written, index not yet
                raise OSError("No space left on device")
        return real_write_text(target, text)

    monkeypatch.setattr(tileset_mod, "write_text", failing_write_text)
    with pytest.raises(OSError, match="No space"):
        tile_slides(slides, out, settings=SMALL, progress=False)
    ts = TileSet(out)
    assert set(ts.index["image_id"]) == {"s1"} and set(ts.slides) == {"s1"}
    assert no_temp_files(out)
    monkeypatch.setattr(tileset_mod, "write_text", real_write_text)

    # an interruption while reading the second slide's tiles: nothing of it is committed
    real_read = tiling._read_tile
    seen = {"n": 0}

    def interrupted_read(slide, *a):
        if Path(slide.path).stem == "s2":
            seen["n"] += 1
            if seen["n"] == 3:
                raise KeyboardInterrupt
        return real_read(slide, *a)

    out2 = tmp_path / "ts2"
    monkeypatch.setattr(tiling, "_read_tile", interrupted_read)
    with pytest.raises(KeyboardInterrupt):
        tile_slides(slides, out2, settings=SMALL, progress=False)
    assert set(TileSet(out2).slides) == {"s1"} and not (out2 / "pixels" / "s2.npy").exists()
    monkeypatch.setattr(tiling, "_read_tile", real_read)

    resumed = tile_slides(slides, out2, settings=SMALL, progress=False)
    assert resumed["skipped"] == 1 and resumed["tiled"] == 1
    assert set(TileSet(out2).index["image_id"]) == {"s1", "s2"} and no_temp_files(out2)


def test_bad_slides_are_recorded_not_fatal(tmp_path, slides):
    (slides / "random.tif").write_bytes(np.random.default_rng(0).bytes(5000))
    (slides / "notes.svs").write_text("this is not an image\n")
    whole = write_slide(tmp_path / "whole.tif", size=(1000, 800), seed=4).read_bytes()
    (slides / "cut.tif").write_bytes(whole[: len(whole) // 2])
    write_slide(slides / "blank.tif", blobs=())
    (slides / "readme.txt").write_text("ignored: not a slide extension")
    manifest = tmp_path / "m.csv"
    ids = ["s1", "s2", "random", "notes", "cut", "blank", "missing"]
    manifest.write_text("image_id\n" + "\n".join(ids) + "\n")

    summary = tile_slides(slides, tmp_path / "ts", manifest=manifest, settings=SMALL, progress=False)
    status = {r["image_id"]: (r["status"], r["reason"]) for r in summary["per_slide"]}
    assert status["s1"][0] == status["s2"][0] == "done"
    for bad in ("random", "notes", "cut", "missing"):
        assert status[bad][0] == "failed" and status[bad][1], bad
    assert "no slide file for image_id 'missing'" in status["missing"][1]
    assert "truncated" in status["cut"][1] or "cut" in status["cut"][1]
    assert status["blank"][0] == "no_tissue"
    ts = TileSet(tmp_path / "ts")
    assert set(ts.index["image_id"]) == {"s1", "s2"}
    assert ts.slides["cut"]["status"] == "failed" and ts.slides["blank"]["status"] == "no_tissue"
    assert summary["failed"] == 4 and summary["no_tissue"] == 1 and summary["tiled"] == 2

    # failed slides are retried on the next run; a slide without tissue is not
    again = tile_slides(slides, tmp_path / "ts", manifest=manifest, settings=SMALL, progress=False)
    assert again["skipped"] == 3 and again["failed"] == 4


def test_nothing_tileable_is_an_error(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.tif").write_text("not a tiff")
    write_slide(d / "b.tif", blobs=())
    with pytest.raises(ClotclfError, match=r"no slide could be tiled \(1 failed, 1 without tissue\)"):
        tile_slides(d, tmp_path / "ts", settings=SMALL, progress=False)
    assert TileSet  # the statuses are still recorded for inspection
    meta = json.loads((tmp_path / "ts" / "tileset.json").read_text())
    assert meta["slides"]["a"]["status"] == "failed"
    with pytest.raises(ClotclfError, match="no slide files"):
        tile_slides(tmp_path / "ts" / "qc", tmp_path / "ts3", settings=SMALL, progress=False)
    with pytest.raises(ClotclfError, match="does not exist"):
        tile_slides(tmp_path / "nope", tmp_path / "ts4", settings=SMALL, progress=False)


def test_two_workers_give_the_same_tileset(tmp_path, slides):
    write_slide(slides / "s3.tif", seed=3, blobs=((200, 600, 150), (800, 200, 120)))
    (slides / "broken.tif").write_text("nope")
    one = tile_slides(slides, tmp_path / "w1", settings=SMALL, threads=1, progress=False)
    two = tile_slides(slides, tmp_path / "w2", settings=SMALL, workers=2, threads=1, progress=False)
    threaded = tile_slides(slides, tmp_path / "t3", settings=SMALL, threads=3, progress=False)
    assert two["workers"] == 2 and threaded["threads"] == 3
    assert one["tiles_kept"] == two["tiles_kept"] == threaded["tiles_kept"] > 0
    a, b, c = TileSet(tmp_path / "w1"), TileSet(tmp_path / "w2"), TileSet(tmp_path / "t3")
    assert a.index.equals(b.index) and a.index.equals(c.index)
    for image_id in ("s1", "s2", "s3"):
        np.testing.assert_array_equal(a.pixels(image_id), b.pixels(image_id))
        np.testing.assert_array_equal(a.pixels(image_id), c.pixels(image_id))
    assert b.slides["broken"]["status"] == "failed"


# ----------------------------------------------------------------------------- CLI


def run_cli(*args):
    from clotclf_core.cli import cli
    from clotclf_core.plugins import reset_manager

    reset_manager()
    return CliRunner().invoke(cli, ["tile", *map(str, args)], catch_exceptions=False)


SMALL_ARGS = ["--downsample", "2", "--tile-size", "100", "--train-size", "32", "--thumbnail-size", "256"]


def test_cli_tile(tmp_path, slides):
    res = run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["tiled"] == 2 and summary["tiles_kept"] == len(TileSet(tmp_path / "ts"))
    res = run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "--quiet")
    assert res.exit_code == 0 and "2 already done" in res.output and "IMAGE_ID" not in res.output
    res = run_cli(slides, "--out", tmp_path / "ts2", *SMALL_ARGS, "--filter", "otsu:threshold=0.6,channel=saturation", "-q")
    assert res.exit_code == 0, res.output
    ts = TileSet(tmp_path / "ts2")
    assert ts.settings["filters"][0]["options"]["channel"] == "saturation" and (ts.index["score_otsu"] >= 0.6).all()
    # a slide deleted from the folder leaves the TileSet, said in the summary and the table
    (slides / "s2.tif").unlink()
    res = run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS)
    assert res.exit_code == 0 and "1 already done, 1 removed," in res.output, res.output
    assert any(line.startswith("s2") and "removed" in line and "no longer in the slide folder" in line for line in res.output.splitlines())
    assert set(TileSet(tmp_path / "ts").slides) == {"s1"}


def test_cli_reading_a_tileset_with_a_broken_pixel_file_is_one_line(tmp_path, slides):
    from clotclf_core.cli import cli

    assert run_cli(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "-q").exit_code == 0
    (tmp_path / "ts" / "pixels" / "s1.npy").unlink()
    res = CliRunner().invoke(cli, ["train", "--tiles", str(tmp_path / "ts"), "--out", str(tmp_path / "run"), "-q"])
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1, res.output
    assert "s1.npy: missing" in lines[0] and "--overwrite" in lines[0]


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
