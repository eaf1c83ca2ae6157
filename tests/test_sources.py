"""Slide sources (openslide, tifffile), source selection and find_slide.

Real data: tests/data/cmu_small_region.svs (CC0, see tests/data/README.md). Everything else is
written here with tifffile: small tiled, stripped and pyramidal TIFFs with known pixels.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

import clotclf_core.slides.open as sources
from clotclf_core.plugin import ClotclfError, ConfigError, PluginError, Slide, SlideDamaged, regions
from clotclf_core.slides.open import find_slide, open_slide
from clotclf_core.tiling.levels import choose_level, level_layout

SVS = Path(__file__).parent / "data" / "cmu_small_region.svs"
H, W = 700, 900  # synthetic test image, level 0


def _pattern(h: int = H, w: int = W) -> np.ndarray:
    """Smooth gradients plus random blocks: every region differs, downsampling is checkable."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)], axis=-1).astype(np.uint8)
    for _ in range(40):
        y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
        img[y : y + 40, x : x + 40] = rng.integers(0, 256, size=3)
    return img


def _levels(img: np.ndarray, n: int) -> list[np.ndarray]:
    """Level i of a pyramid painted one flat colour, so a read shows which level it came from."""
    out = [img]
    for i in range(1, n):
        h, w = img.shape[0] // 2**i, img.shape[1] // 2**i
        out.append(np.full((h, w, 3), (40 * i, 200 - 40 * i, 90), np.uint8))
    return out


RES = {"resolution": (20000, 20000), "resolutionunit": "CENTIMETER"}  # 0.5 um/pixel


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    img = _pattern()
    paths = {name: d / f"{name}.tif" for name in ("tiled", "stripped", "pages", "subifd", "rgba", "inch", "nounit")}
    tifffile.imwrite(paths["tiled"], img, tile=(128, 128), compression="zlib", photometric="rgb", **RES)
    tifffile.imwrite(paths["stripped"], img, rowsperstrip=50, compression="zlib", photometric="rgb", **RES)
    levels = _levels(img, 3)
    with tifffile.TiffWriter(paths["pages"]) as tw:  # pyramid as consecutive reduced pages (OpenSlide reads it)
        tw.write(levels[0], tile=(128, 128), compression="zlib", photometric="rgb", **RES)
        for level in levels[1:]:
            tw.write(level, tile=(128, 128), compression="zlib", photometric="rgb", subfiletype=1)
    with tifffile.TiffWriter(paths["subifd"]) as tw:  # pyramid in SubIFDs (OpenSlide sees one level)
        tw.write(levels[0], tile=(128, 128), compression="zlib", photometric="rgb", subifds=2, **RES)
        for level in levels[1:]:
            tw.write(level, tile=(128, 128), compression="zlib", photometric="rgb", subfiletype=1)
    rgba = np.dstack([img, np.full((H, W), 255, np.uint8)])
    rgba[:, :300, 3] = 0  # transparent: must read as white
    rgba[:, 300:600, 3] = 128  # half transparent: halfway to white
    tifffile.imwrite(paths["rgba"], rgba, tile=(128, 128), photometric="rgb", extrasamples=["unassalpha"], **RES)
    tifffile.imwrite(paths["inch"], img, tile=(128, 128), photometric="rgb", resolution=(50800, 50800), resolutionunit="INCH")
    tifffile.imwrite(paths["nounit"], img, tile=(128, 128), photometric="rgb")  # tifffile writes no unit
    data = paths["tiled"].read_bytes()
    paths.update(truncated=d / "truncated.tif", text=d / "notes.tif", empty=d / "empty.svs")
    paths["truncated"].write_bytes(data[: len(data) * 2 // 3])  # a copy cut short
    paths["text"].write_text("this is not an image\n" * 50)
    paths["empty"].write_bytes(b"")
    paths["image"] = img  # type: ignore[assignment]
    return paths


def _block_mean(img: np.ndarray, k: int) -> np.ndarray:
    h, w = img.shape[0] // k * k, img.shape[1] // k * k
    return img[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))


# ----------------------------------------------------------------------------- the real slide


@pytest.mark.parametrize("source", ["openslide", "tifffile"])
def test_real_svs_dimensions_mpp_and_protocol(source):
    with open_slide(SVS, source) as slide:
        assert isinstance(slide, Slide)
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.level_count == 1 and slide.level_downsamples == [1.0]
        thumb = slide.thumbnail(512)
        assert thumb.shape == (512, 383, 3) and thumb.dtype == np.uint8
        assert 150 < thumb.mean() < 250  # mostly glass with some stained tissue


def test_real_svs_sources_agree():
    """Both sources decode the same JPEG tiles: regions at several downsamples must match."""
    import openslide

    a, b = open_slide(SVS, "openslide"), open_slide(SVS, "tifffile")
    truth = np.asarray(openslide.OpenSlide(str(SVS)).read_region((300, 1200), 0, (500, 400)))[..., :3]
    assert np.array_equal(a.read_region(300, 1200, 500, 400), truth)
    for ds in (1.0, 2.0, 3.5, 8.0):
        ra, rb = a.read_region(300, 1200, 1000, 800, ds), b.read_region(300, 1200, 1000, 800, ds)
        assert ra.shape == rb.shape == (round(800 / ds), round(1000 / ds), 3)
        diff = np.abs(ra.astype(int) - rb.astype(int))
        assert diff.mean() < 2.0 and np.percentile(diff, 99) < 16, (ds, diff.mean())
    ta, tb = a.thumbnail(300), b.thumbnail(300)
    assert ta.shape == tb.shape and np.abs(ta.astype(int) - tb.astype(int)).mean() < 2.0
    a.close(), b.close()


# ----------------------------------------------------------------------------- synthetic TIFFs


@pytest.mark.parametrize("kind", ["tiled", "stripped", "pages", "subifd"])
def test_tifffile_reads_exact_pixels(files, kind):
    img = files["image"]
    with open_slide(files[kind], "tifffile") as slide:
        assert slide.dimensions == (W, H) and slide.mpp == pytest.approx(0.5)
        assert np.array_equal(slide.read_region(0, 0, W, H), img)
        assert np.array_equal(slide.read_region(131, 77, 250, 301), img[77:378, 131:381])
        if kind in ("tiled", "stripped"):  # single level: a 2x read is the 2x2 block mean
            got = slide.read_region(100, 50, 400, 300, 2.0).astype(float)
            want = _block_mean(img[50:350, 100:500], 2)
            assert np.abs(got - want).max() <= 1.0


def test_stripped_tiff_needs_tifffile(files):
    with pytest.raises(ClotclfError, match="tifffile"):
        open_slide(files["stripped"], "openslide")
    with open_slide(files["stripped"]) as slide:
        assert slide.source_name == "tifffile"


@pytest.mark.parametrize(("kind", "source"), [("pages", "openslide"), ("pages", "tifffile"), ("subifd", "tifffile")])
def test_pyramid_reads_the_best_level(files, kind, source):
    with open_slide(files[kind], source) as slide:
        assert slide.level_count == 3 and slide.level_downsamples == pytest.approx([1.0, 2.0, 4.0])
        for ds, level in ((1.0, 0), (2.0, 1), (3.0, 1), (4.0, 2), (6.5, 2)):
            region = slide.read_region(200, 100, 400, 320, ds)
            assert region.shape == (round(320 / ds), round(400 / ds), 3)
            if level:  # the reduced levels are flat colours naming the level
                assert tuple(region[5, 5]) == (40 * level, 200 - 40 * level, 90), (ds, region[5, 5])
        assert tuple(slide.thumbnail(225)[10, 10]) == (80, 120, 90)  # 900 / 225 = 4: level 2


def test_automatic_choice_of_source(files):
    chosen = {}
    for kind in ("tiled", "stripped", "pages", "subifd"):
        with open_slide(files[kind]) as slide:
            chosen[kind] = slide.source_name
    # single-level TIFFs: tifffile (OpenSlide would decode a whole level for a thumbnail); a generic
    # pyramid: tifffile too (its tiles decoded straight to RGB, ~3.6x less CPU than OpenSlide's ARGB
    # regions); a SubIFD pyramid, where OpenSlide sees one level: tifffile
    assert chosen == {"tiled": "tifffile", "stripped": "tifffile", "pages": "tifffile", "subifd": "tifffile"}


def test_a_vendor_pyramid_stays_with_openslide(files, tmp_path):
    """tifffile outranks OpenSlide only on generic pyramids: an Aperio SVS pyramid ranks it below."""
    import tifffile

    from clotclf_openslide._slide import OpenSlideSource
    from clotclf_tifffile._source import TifffileSource

    path = tmp_path / "aperio.svs"
    level0 = np.full((512, 512, 3), 200, np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, tile=(256, 256), description="Aperio Image Library v12.0.0\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=70|AppMag = 40|MPP = 0.25")
        tif.write(level0[::4, ::4], tile=(128, 128), description="Aperio Image Library v12.0.0\nreduced")
    generic = files["pages"]
    assert TifffileSource().priority(str(generic)) > OpenSlideSource().priority(str(generic))
    assert TifffileSource().priority(str(path)) < 10.0


@pytest.mark.parametrize("source", ["openslide", "tifffile"])
def test_outside_the_slide_is_white_and_shapes_are_exact(files, source):
    img = files["image"]
    with open_slide(files["tiled"], source) as slide:
        region = slide.read_region(-50, -20, 150, 120)
        assert region.shape == (120, 150, 3)
        assert (region[:20] == 255).all() and (region[:, :50] == 255).all()
        assert np.array_equal(region[20:, 50:], img[:100, :100])
        far = slide.read_region(W + 10, H + 10, 64, 64, 2.0)
        assert far.shape == (32, 32, 3) and (far == 255).all()
        edge = slide.read_region(W - 100, H - 100, 300, 300, 3.0)
        assert edge.shape == (100, 100, 3) and (edge[40:, :] == 255).all() and (edge[:, 40:] == 255).all()
        for ds in (1.0, 1.7, 2.5, 7.0):
            assert slide.read_region(3, 5, 333, 222, ds).shape == (round(222 / ds), round(333 / ds), 3)


def test_alpha_is_composited_onto_white(files):
    img = files["image"].astype(int)
    with open_slide(files["rgba"], "tifffile") as slide:
        region = slide.read_region(0, 0, W, H).astype(int)
    assert (region[:, :300] == 255).all()
    assert np.abs(region[:, 300:600] - (img[:, 300:600] * 128 + 255 * 127) / 255).max() <= 1
    assert np.array_equal(region[:, 600:], img[:, 600:])


def test_other_pixel_layouts(tmp_path):
    img = _pattern(200, 300)
    grey, rgb16, planar = tmp_path / "grey.tif", tmp_path / "rgb16.tif", tmp_path / "planar.tif"
    tifffile.imwrite(grey, img[..., 0], tile=(64, 64), photometric="minisblack")
    tifffile.imwrite(rgb16, img.astype(np.uint16) * 257, tile=(64, 64), photometric="rgb")
    tifffile.imwrite(planar, np.moveaxis(img, -1, 0), photometric="rgb", planarconfig="separate")
    with open_slide(grey, "tifffile") as slide:
        assert np.array_equal(slide.read_region(0, 0, 300, 200), np.repeat(img[..., :1], 3, axis=2))
    with open_slide(rgb16, "tifffile") as slide:
        assert np.array_equal(slide.read_region(0, 0, 300, 200), img)
    with pytest.raises(ClotclfError, match="colour planes stored separately.*openslide"):
        open_slide(planar, "tifffile")


def test_mpp_from_resolution_tags(files):
    with open_slide(files["inch"], "tifffile") as inch, open_slide(files["nounit"], "tifffile") as nounit:
        assert inch.mpp == pytest.approx(0.5)  # 50800 dpi
        assert nounit.mpp is None


# ----------------------------------------------------------------------------- bounded memory


@pytest.fixture(scope="module")
def big_tiff(tmp_path_factory) -> Path:
    """8192 x 8192 single-level tiled deflate TIFF (192 MiB raw), written tile by tile."""
    path = tmp_path_factory.mktemp("big") / "big.tif"
    n, t = 16, 512

    def tiles():
        for ty in range(n):
            for tx in range(n):
                yield np.full((t, t, 3), (tx * 16, ty * 16, 200), np.uint8)

    tifffile.imwrite(path, tiles(), shape=(n * t, n * t, 3), dtype=np.uint8, tile=(t, t), compression="zlib", photometric="rgb")
    return path


def test_thumbnail_of_a_large_single_level_tiff_uses_bounded_memory(big_tiff):
    raw = 8192 * 8192 * 3
    with open_slide(big_tiff) as slide:
        assert slide.source_name == "tifffile" and slide.level_count == 1
        tracemalloc.start()
        try:
            thumb = slide.thumbnail(256)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert thumb.shape == (256, 256, 3)
    # a few decoded tiles' worth (a 512-px tile is 0.8 MB, 3 MB as float32), not the image
    assert peak < raw / 10, f"thumbnail peaked at {peak / 1e6:.1f} MB for a {raw / 1e6:.0f} MB image"
    # each 512-px tile is 16 thumbnail pixels of its own colour
    assert tuple(thumb[8, 8]) == (0, 0, 200) and tuple(thumb[16 * 3 + 8, 16 * 5 + 8]) == (80, 48, 200)


def test_streamed_reduction_matches_direct_read(files, monkeypatch):
    """Regions too big to assemble are averaged tile by tile: the same area means as the direct path
    (OpenCV's INTER_AREA), to within one grey level of rounding."""
    with open_slide(files["tiled"], "tifffile") as slide:
        cases = [((0, 0, W, H), 2.0), ((-64, 32, 640, 512), 4.0), ((37, 51, 777, 555), 3.3), ((0, 0, W, H), 7.3)]
        direct = [slide.read_region(*box, ds) for box, ds in cases]
        monkeypatch.setattr(regions, "DIRECT_READ_MAX_PIXELS", 1000)
        streamed = [slide.read_region(*box, ds) for box, ds in cases]
    for (box, ds), a, b in zip(cases, direct, streamed):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 1, (box, ds, diff.max())
        if ds == int(ds):  # whole pixels per output pixel: both are OpenCV's box means
            assert diff.max() == 0, (box, ds)


def _area_mean(img: np.ndarray, x: float, y: float, w: float, h: float, ds: float) -> np.ndarray:
    """The exact read_region answer, by overlap matrices in float64 (white outside the image)."""
    out_h, out_w = round(h / ds), round(w / ds)

    def weights(start: float, length: float, n_out: int, n_in: int) -> np.ndarray:
        scale = length / n_out
        lo = start + np.arange(n_out)[:, None] * scale
        px = np.arange(-100, n_in + 100)[None, :]  # input pixels, with white margins
        return np.clip(np.minimum(lo + scale, px + 1) - np.maximum(lo, px), 0, None) / scale

    padded = np.pad(img.astype(np.float64), ((100, 100), (100, 100), (0, 0)), constant_values=255)
    wy, wx = weights(y, h, out_h, img.shape[0]), weights(x, w, out_w, img.shape[1])
    rows = np.tensordot(wy, padded, axes=(1, 0))  # (out_h, width, 3)
    return np.tensordot(rows, wx, axes=(1, 1)).transpose(0, 2, 1)


@pytest.mark.parametrize("source", ["tifffile", "openslide"])
def test_regions_are_area_means_on_and_off_the_pixel_grid(files, source, monkeypatch):
    """Each output pixel is the area-weighted mean of what it covers (partial pixels by their
    overlap), whether the rectangle is assembled or streamed, on the pixel grid or not."""
    img = files["image"]
    cases = [((0, 0, W, H), 2.0), ((0, 0, W, H), 900 / 256), ((37, 51, 777, 555), 3.3),
             ((10.5, 20.25, 300.5, 200.75), 2.5), ((-40.5, -30, 200, 120), 1.7)]
    with open_slide(files["tiled"], source) as slide:
        for streamed in (False, True):
            monkeypatch.setattr(regions, "DIRECT_READ_MAX_PIXELS", 1000 if streamed else 16 * 1024 * 1024)
            for box, ds in cases:
                got = slide.read_region(*box, ds).astype(np.float64)
                want = _area_mean(img, *box, ds)
                assert got.shape == want.shape and np.abs(got - want).max() <= 0.51 + 1e-6 * 255, (box, ds, streamed)


class _Painted(regions.RegionSlide):
    """A RegionSlide over an in-memory picture, cut into 100-px blocks (what a source implements)."""

    def __init__(self, img: np.ndarray):
        self.path, self.img, self.closed = "painted.png", img, False
        self.dimensions = (img.shape[1], img.shape[0])
        self.mpp, self.mpp_note = regions.checked_mpp(1000)
        self.level_dimensions, self.level_downsamples = [self.dimensions], [1.0]

    def _blocks(self, level):
        return regions.grid_blocks(lambda x, y, w, h: self.img[y : y + h, x : x + w], 100)

    def _close(self):
        self.closed = True


def test_region_slide_base_answers_the_slide_contract():
    img = _pattern(250, 330)
    with _Painted(img) as slide:
        assert isinstance(slide, Slide) and slide.level_count == 1 and slide.mpp is None and "1000" in slide.mpp_note
        assert np.array_equal(slide.read_region(0, 0, 330, 250), img)
        assert np.array_equal(slide.read_region(-5, 240, 20, 20)[:10, 5:], img[240:, :15])
        assert (slide.read_region(-5, 240, 20, 20)[10:] == 255).all()  # outside the slide: white
        assert slide.thumbnail(100).shape == (76, 100, 3)
        lay = slide.level_layout(0)
        assert (lay.seg_width, lay.rows, lay.cols) == (regions.GENERIC_BLOCK, 1, 1)
        assert np.array_equal(lay.read(0, 0), img)  # three 100-px blocks a side, assembled once
        with pytest.raises(ClotclfError, match="levels 0..0, not 1"):
            slide.level_layout(1)
        with pytest.raises(ClotclfError, match="width and height"):
            slide.read_region(0, 0, 0, 5)
        assert repr(slide) == "_Painted('painted.png', 330x250, levels=1, mpp=None)"
    assert slide.closed

    class NoBlocks(regions.RegionSlide):
        path, dimensions, mpp, level_dimensions, level_downsamples = "x", (10, 10), None, [(10, 10)], [1.0]

    with pytest.raises(NotImplementedError, match="NoBlocks must implement _blocks"):
        NoBlocks().read_region(0, 0, 5, 5)


def test_tile_byte_counts_flag_busy_tiles(files, big_tiff):
    with open_slide(files["tiled"], "tifffile") as slide:
        grid = slide.tile_byte_counts()
    assert grid.counts.shape == (6, 8) and (grid.tile_width, grid.tile_height) == (128, 128)
    assert grid.downsample == 1.0 and (grid.counts > 0).all()
    with open_slide(files["stripped"], "tifffile") as slide:
        strips = slide.tile_byte_counts()
    assert strips.counts.shape == (14, 1) and strips.tile_width == W and strips.tile_height == 50
    with open_slide(files["pages"], "tifffile") as slide:
        assert slide.tile_byte_counts(2).counts.shape == (2, 2)
        with pytest.raises(ClotclfError, match="levels 0..2"):
            slide.tile_byte_counts(3)
    with open_slide(big_tiff) as slide:  # flat tiles compress to almost nothing
        assert slide.tile_byte_counts().counts.max() < 5000


# ----------------------------------------------------------------------------- bad input


def test_truncated_tiff_is_a_clear_error(files):
    with pytest.raises(ClotclfError, match="truncated"):
        open_slide(files["truncated"], "tifffile")
    # OpenSlide may open it (the header is intact) but must fail with a clear error when reading
    with pytest.raises(ClotclfError, match="truncated"):
        slide = open_slide(files["truncated"], "openslide")
        slide.read_region(0, 0, W, H)
    with pytest.raises(ClotclfError, match="truncated"):
        slide = open_slide(files["truncated"])
        slide.read_region(0, 0, W, H)


@pytest.mark.parametrize("kind", ["text", "empty"])
def test_file_that_is_not_an_image(files, kind):
    with pytest.raises(ClotclfError) as err:
        open_slide(files[kind])
    message = str(err.value)
    assert str(files[kind]) in message and "openslide" in message and "tifffile" in message
    with pytest.raises(ClotclfError, match="not a readable TIFF"):
        open_slide(files[kind], "tifffile")
    with pytest.raises(ClotclfError, match="OpenSlide does not recognise"):
        open_slide(files[kind], "openslide")


def test_missing_file_unknown_source_and_bad_options(files, tmp_path):
    with pytest.raises(ClotclfError, match="does not exist"):
        open_slide(tmp_path / "nope.tif")
    with pytest.raises(ClotclfError, match="is a folder"):
        open_slide(tmp_path)
    with pytest.raises(PluginError, match="unknown source 'bioformats'.*openslide"):
        open_slide(files["tiled"], "bioformats")
    with pytest.raises(ConfigError, match="cache_mb"):
        open_slide(files["tiled"], "openslide", {"cache_mb": -1})
    with pytest.raises(ConfigError, match="unknown option 'cache_mb'"):
        open_slide(files["tiled"], "tifffile", {"cache_mb": 8})
    with pytest.raises(ClotclfError, match="without a source"):
        open_slide(files["tiled"], options={"cache_mb": 8})
    with open_slide(files["tiled"], "openslide", {"cache_mb": 8}) as slide:
        assert slide.read_region(0, 0, 10, 10).shape == (10, 10, 3)


@pytest.mark.parametrize("source", ["openslide", "tifffile"])
def test_bad_region_arguments(files, source):
    with open_slide(files["tiled"], source) as slide:
        with pytest.raises(ClotclfError, match="width and height"):
            slide.read_region(0, 0, 0, 10)
        with pytest.raises(ClotclfError, match="downsample"):
            slide.read_region(0, 0, 10, 10, 0)
        with pytest.raises(ClotclfError, match="thumbnail size"):
            slide.thumbnail(0)


# ----------------------------------------------------------------------------- find_slide


def test_find_slide(tmp_path):
    (tmp_path / "006388_0.tif").write_bytes(b"")
    (tmp_path / "008e5c_0.TIFF").write_bytes(b"")
    (tmp_path / "00a_1.Svs").write_bytes(b"")
    (tmp_path / "dup.tif").write_bytes(b"")
    (tmp_path / "dup.svs").write_bytes(b"")
    (tmp_path / "other_0.csv").write_bytes(b"")
    assert find_slide(tmp_path, "006388_0") == tmp_path / "006388_0.tif"
    assert find_slide(tmp_path, "008e5c_0") == tmp_path / "008e5c_0.TIFF"
    assert find_slide(tmp_path, "00a_1") == tmp_path / "00a_1.Svs"
    with pytest.raises(ClotclfError, match="several slide files.*dup.svs, dup.tif"):
        find_slide(tmp_path, "dup")
    with pytest.raises(ClotclfError, match="no slide file for image_id 'other_0'.*other_0.csv"):
        find_slide(tmp_path, "other_0")
    with pytest.raises(ClotclfError, match="not a file name"):
        find_slide(tmp_path, "../006388_0")
    with pytest.raises(ClotclfError, match="does not exist"):
        find_slide(tmp_path / "missing", "006388_0")
    assert {".svs", ".tif", ".tiff", ".ndpi", ".mrxs"} <= set(sources.slide_extensions())


def test_plugin_spec_modules_are_light():
    code = (
        "import sys, clotclf_openslide, clotclf_tifffile\n"
        "clotclf_openslide.clotclf_patch_sources(); clotclf_tifffile.clotclf_patch_sources()\n"
        "heavy = [m for m in ('openslide', 'tifffile', 'torch', 'timm', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ----------------------------------------------------------------------------- layouts tiling reads, stacks, bit depths, mpp


def test_twelve_bit_samples_in_sixteen_are_scaled_by_their_real_depth(tmp_path):
    img = _pattern(200, 300)
    path = tmp_path / "rgb12.tif"
    tifffile.imwrite(path, (img.astype(np.uint16) << 4) | 7, tile=(64, 64), photometric="rgb")  # 0..4095
    with open_slide(path, "tifffile") as slide:
        assert slide.sample_bits == 12
        assert np.abs(slide.read_region(0, 0, 300, 200).astype(int) - img).max() == 0  # not >> 8 (nearly black)


@pytest.mark.parametrize(
    "shape, kwargs, message",
    [
        ((3, 120, 160), {"photometric": "minisblack", "metadata": {"axes": "CYX"}}, r"stack of images \(axes CYX"),
        ((4, 120, 160, 3), {"photometric": "rgb", "metadata": {"axes": "ZYXS"}}, r"4 along depth \(Z\)"),
    ],
    ids=["channels-as-pages", "z-stack"],
)
@pytest.mark.parametrize("tiled", [False, True], ids=["stripped", "tiled"])
def test_stacks_are_one_clear_error_not_their_first_plane(tmp_path, shape, kwargs, message, tiled):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), **kwargs, **({"tile": (64, 64)} if tiled else {}))
    with pytest.raises(ClotclfError, match=message):
        open_slide(path, "tifffile")
    # the automatic choice (what `clotclf tile` uses) must not fall back to OpenSlide, which opens a
    # tiled stack as a generic TIFF and silently reads its first plane
    with pytest.raises(ClotclfError, match=message):
        open_slide(path)


def test_mpp_is_checked_in_every_source_and_read_from_ome_xml(tmp_path):
    from clotclf_core.plugin.regions import checked_mpp

    assert checked_mpp(0.25) == (0.25, "") and checked_mpp(None) == (None, "")
    for bad in (1000.0, 0.001, float("nan"), "x"):
        mpp, note = checked_mpp(bad)
        assert mpp is None and "ignored" in note
    img = _pattern(128, 128)
    absurd = tmp_path / "absurd.tif"  # 10 px per cm: 1,000 um per pixel, like a vips file without resolution tags
    tifffile.imwrite(absurd, img, tile=(64, 64), photometric="rgb", resolution=(10, 10), resolutionunit="CENTIMETER")
    for source in ("tifffile", "openslide"):
        with open_slide(absurd, source) as slide:
            assert slide.mpp is None and "1000 microns per pixel" in slide.mpp_note, source
    ome = tmp_path / "ome.ome.tif"
    tifffile.imwrite(ome, img, tile=(64, 64), photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 250,
                                                                             "PhysicalSizeXUnit": "nm"})
    with open_slide(ome, "tifffile") as slide:
        assert slide.mpp == pytest.approx(0.25)


def test_a_vips_style_pyramid_with_copied_descriptions_opens(tmp_path):
    """vips copies tifffile's shaped JSON description into every page of a pyramid, which
    tifffile's shaped parser misreads; the source opens such files with that parser off."""
    import json

    img = _pattern(512, 640)
    desc = json.dumps({"shape": list(img.shape)})
    path = tmp_path / "vips.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(128, 128), photometric="rgb", description=desc, metadata=None)
        for k in (2, 4):
            tw.write(img[::k, ::k], tile=(128, 128), photometric="rgb", description=desc, metadata=None, subfiletype=1)
    with open_slide(path, "tifffile") as slide:
        assert slide.level_count == 3 and slide.level_downsamples == [1.0, 2.0, 4.0]


def test_a_truncated_pyramid_is_tifffiles_clear_reason_not_openslides(tmp_path, files):
    data = files["pages"].read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SlideDamaged, match=r"is truncated: its image data runs to byte"):
        open_slide(cut)  # OpenSlide would rank first for a pyramid, and fail later with "row 4294967295"


@pytest.mark.parametrize("source", ["tifffile", "openslide"])
def test_level_layouts_cover_the_level_once(files, source):
    """Every source's level layout tiles the level exactly: assembling its segments gives read_region."""
    kind = "pages" if source == "tifffile" else "tiled"
    with open_slide(files[kind], source) as slide:
        for level in range(slide.level_count):
            lay = level_layout(slide, level)
            canvas = np.zeros((lay.height, lay.width, 3), np.uint8)
            for r in range(lay.rows):
                for c in range(lay.cols):
                    block = lay.read(r, c)
                    canvas[r * lay.seg_height : r * lay.seg_height + block.shape[0],
                           c * lay.seg_width : c * lay.seg_width + block.shape[1]] = block
            ds = lay.downsample
            expect = slide.read_region(0, 0, lay.width * ds, lay.height * ds, ds)
            assert np.abs(canvas.astype(int) - expect.astype(int)).max() <= 1, (source, level)
    assert choose_level([1.0, 4.0003, 16.001], 4) == (1, 1)
    assert choose_level([1.0, 3.0], 4) == (0, 4) and choose_level([1.0], 16) == (0, 16)


def test_opening_reuses_the_priority_probe_only_for_the_same_unchanged_file(files, tmp_path):
    """``priority`` keeps its header parse for ``open`` (one parse a slide); ``open`` of another
    path, or of the same path changed since, parses again and closes the kept one."""
    import os
    import shutil

    from clotclf_tifffile._source import TifffileSource

    path = str(files["pages"])
    src = TifffileSource()
    assert src.priority(path) == 11.0
    probe = src._probe[2]
    with src.open(path) as slide, TifffileSource().open(path) as fresh:
        assert slide is probe and src._probe is None
        assert np.array_equal(slide.read_region(0, 0, 200, 150, 2.0), fresh.read_region(0, 0, 200, 150, 2.0))
    copy = tmp_path / "copy.tif"
    shutil.copy(path, copy)
    src.priority(str(copy))
    probe = src._probe[2]
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # changed after the probe
    with src.open(str(copy)) as slide:
        assert slide is not probe and probe._tif.filehandle.closed
    src.priority(str(copy))
    probe = src._probe[2]
    with src.open(path) as slide:  # another file
        assert slide is not probe and probe._tif.filehandle.closed
    src.priority(path)
    probe = src._probe[2]
    del src  # a source dropped between the two (another source won): its probe is closed
    assert probe._tif.filehandle.closed


def test_area_resize_of_a_view_is_that_of_its_copy():
    """area_resize hands OpenCV a cropped view as it is (rows at any stride) and copies only what
    OpenCV cannot take (an alpha channel, pixels at a stride, rows backwards): the same pixels."""
    import cv2

    a = np.random.default_rng(9).integers(0, 256, (100, 120, 4), dtype=np.uint8)
    for view in (a[10:90, 5:100, :3], a[..., :3], a[::-1, :, :3], a[:, ::2, :3], np.ascontiguousarray(a[..., :3])):
        want = cv2.resize(np.ascontiguousarray(view[..., :3]), (37, 29), interpolation=cv2.INTER_AREA)
        assert np.array_equal(regions.area_resize(view, (37, 29)), want)
