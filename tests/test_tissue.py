"""Tissue mask: about a third of the real slide, nothing on blank glass, specks and holes handled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clotclf_core.slides.tissue import clean_mask, tissue_mask

REAL_SLIDE = Path(__file__).parent / "data" / "cmu_small_region.svs"


@pytest.fixture(scope="module")
def real_thumbnail():
    import openslide
    with openslide.OpenSlide(str(REAL_SLIDE)) as s:
        return np.asarray(s.get_thumbnail((512, 512)).convert("RGB"))


@pytest.mark.parametrize("method", ["saturation", "od", "either", "both"])
def test_real_slide_is_about_a_third_tissue(real_thumbnail, method):
    mask = tissue_mask(real_thumbnail, method=method)
    assert mask.shape == real_thumbnail.shape[:2] and mask.dtype == bool
    assert 0.25 < mask.mean() < 0.45
    # the white glass at the left and right edges is not tissue; the band in the middle is
    h, w = mask.shape
    assert mask[:, : w // 10].mean() < 0.05 and mask[:, -w // 10 :].mean() < 0.05
    assert mask[h // 4 : 3 * h // 4, int(w * 0.45) : int(w * 0.55)].mean() > 0.8


def test_blank_glass_gives_an_empty_mask():
    rng = np.random.default_rng(0)
    assert not tissue_mask(np.full((200, 300, 3), 255, np.uint8)).any()
    noisy = np.clip(240 + rng.normal(0, 4, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(noisy).any()
    assert not tissue_mask(np.zeros((50, 50, 3), np.uint8)).any()  # black padding is not tissue


def test_all_tissue_gives_a_full_mask():
    rng = np.random.default_rng(1)
    pink = np.clip(np.array([200, 110, 160]) + rng.normal(0, 15, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert tissue_mask(pink).mean() > 0.99


def test_specks_removed_and_holes_filled():
    img = np.full((200, 200, 3), 245, np.uint8)
    img[40:160, 40:160] = (190, 90, 140)  # tissue block...
    img[90:93, 90:93] = 245  # ...with a pinhole of glass
    img[5:7, 5:7] = (190, 90, 140)  # a 4-pixel speck of debris
    mask = tissue_mask(img, min_object_fraction=0.001, max_hole_fraction=0.001)
    assert mask[90:93, 90:93].all() and not mask[5:7, 5:7].any()
    assert mask.sum() == 120 * 120


def test_clean_mask_drops_specks_and_fills_enclosed_holes_only():
    m = np.zeros((10, 10), bool)
    m[1:4, 1:4] = True
    m[6, 6] = True
    m[8, 8] = m[9, 9] = True  # diagonal neighbours: one 8-connected piece of 2 pixels
    assert clean_mask(m, min_object_fraction=0.02, max_hole_fraction=0.0).sum() == 11  # pieces of >= 2 px stay
    ring = np.ones((10, 10), bool)
    ring[4:6, 4:6] = False  # enclosed hole of 4 px: filled
    ring[0, 0] = False  # touches the border: not a hole
    ring[2, 2] = ring[3, 3] = False  # two 1-px holes touching only diagonally: two holes (4-connected)
    filled = clean_mask(ring, min_object_fraction=0.0, max_hole_fraction=0.1)
    assert filled[4:6, 4:6].all() and filled[2, 2] and filled[3, 3] and not filled[0, 0]
    assert not clean_mask(ring, min_object_fraction=0.0, max_hole_fraction=0.03)[4:6, 4:6].any()  # 4 px > 3: kept
    assert clean_mask(ring, min_object_fraction=0.0, max_hole_fraction=0.04)[4:6, 4:6].all()  # 4 px <= 4: filled


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="RGB"):
        tissue_mask(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        tissue_mask(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="method"):
        tissue_mask(np.zeros((10, 10, 3), np.uint8), method="magic")


def test_byte_count_prescreen():
    from clotclf_core.slides.prescreen import byte_count_prescreen

    rng = np.random.default_rng(3)
    counts = rng.normal(2_000, 100, (20, 30))  # glass compresses to ~2 kB per tile
    counts[5:12, 8:20] = rng.normal(25_000, 3_000, (7, 12))  # tissue ~25 kB
    busy = byte_count_prescreen(counts)
    assert busy.sum() == 7 * 12 and busy[5:12, 8:20].all()
    # one bell-shaped group (all glass, or all tissue): no split is trusted
    assert byte_count_prescreen(rng.normal(2_000, 300, (20, 30))) is None
    assert byte_count_prescreen(np.full((5, 5), 700)) is None
    # edge tiles: blank padding shrinks them (still glass), copied content does not (kept as busy)
    coverage = np.ones((20, 30))
    coverage[:, -1] = 0.1
    counts[:, -1] = 200  # blank-padded glass edge tiles
    counts[0, -1] = 2_000  # an edge tile whose padding is content: busy, not missed
    busy = byte_count_prescreen(counts, coverage)
    assert not busy[1:, -1].any() and busy[0, -1] and busy[5:12, 8:20].all()


def test_the_tissue_primitives_on_channel_planes_equal_numpy_on_interleaved_pixels():
    """The OpenCV-on-planes versions of the mask's primitives give numpy's interleaved results exactly
    (a contiguous image, a strided view of one, a 1-pixel one), so masks did not move."""
    from clotclf_core.slides import tissue as T

    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    base[:20, :, :3] = 225 + rng.integers(0, 8, (20, 53, 1), dtype=np.uint8)  # grey glass to find
    for img in (np.ascontiguousarray(base[..., :3]), base[..., :3], base[:1, :1, :3]):
        r, g, b = (img[..., k] for k in range(3))
        mx, mn = T._channel_max_min(img)
        assert np.array_equal(mx, np.maximum(np.maximum(r, g), b)) and np.array_equal(mn, np.minimum(np.minimum(r, g), b))
        bg = np.array([203, 207, 198], np.uint8)
        ranks, values = T._Planes(img).od_ranks(bg)  # the relative OD of the most absorbing channel, by rank
        assert np.array_equal(values[ranks], (T._OD_LUT[img] - T._OD_LUT[bg]).max(axis=-1))
    colour, how = T.estimate_background(base[..., :3])
    grey = base[..., :3].astype(np.float32).mean(axis=-1)
    assert "mode" in how and abs(float(np.median(grey[:20])) - float(colour.astype(float).mean())) <= 4


def test_glass_fills_any_colour_and_an_opaque_rgba_region_becomes_its_rgb():
    from clotclf_core.plugin.regions import to_rgb
    from clotclf_core.tiling.raster import glass

    for shape in ((224, 224, 3), (1, 1, 3), (0, 7, 3), (2, 5, 6, 3)):
        out = glass(shape, (203, 207, 198))
        assert out.shape == shape and out.dtype == np.uint8 and (out.reshape(-1, 3) == (203, 207, 198)).all()
    rgba = np.random.default_rng(0).integers(0, 256, (9, 11, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    got = to_rgb(rgba)
    assert got.flags["C_CONTIGUOUS"] and np.array_equal(got, rgba[..., :3])
    rgba[0, 0, 3] = 0  # transparent: composited onto white
    assert to_rgb(rgba)[0, 0].tolist() == [255, 255, 255]


def _views():
    """Random, glass-with-a-blob, flat, grey-glass-with-specks and pale views, of 1 to 120 px a side."""
    rng = np.random.default_rng(11)
    for t in range(60):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        kind = t % 5
        if kind == 0:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif kind == 1:
            img = np.clip(rng.integers(180, 256, 3) + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
            y0, x0 = (int(v) for v in rng.integers(0, max(1, h), 2))
            img[y0 : y0 + h // 2, x0 : x0 + w // 2] = rng.integers(60, 230, 3)
        elif kind == 2:
            img = np.full((h, w, 3), rng.integers(0, 256), np.uint8)
        elif kind == 3:
            img = np.clip(np.array([203, 207, 198]) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
            specks = rng.random((h, w)) < 0.3
            img[specks] = rng.integers(100, 240, (int(specks.sum()), 3))
        else:
            img = rng.integers(200, 256, (h, w, 3), dtype=np.uint8)
            img[: h // 3] = (220, 190, 212)  # pale tissue
        yield img, (rng.random((h, w)) < 0.9 if t % 3 == 0 else None)


def test_the_fast_mask_equals_the_plain_one_bit_for_bit(real_thumbnail):
    """Tables, histograms of 8-bit codes and OpenCV's components give the plain per-pixel mask,
    glass colour and Otsu thresholds exactly (tests/tissue_reference.py), so no mask moved."""
    import tissue_reference as ref

    from clotclf_core.slides import tissue as T

    views = [*_views(), (np.asarray(real_thumbnail)[..., :3], None),
             (np.zeros((0, 5, 3), np.uint8), None), (np.zeros((4, 0, 3), np.uint8), None)]  # (empty views too)
    for img, valid in views:
        assert np.array_equal(T.estimate_background(img, valid)[0], ref.estimate_background(img, valid))
        for method in ("saturation", "od", "either", "both"):
            for background in (None, (203, 207, 198)):
                mask, recipe = T.tissue_mask_recipe(img, method, background=background, valid=valid)
                want, bg, thresholds = ref.tissue_mask(img, method, background=background, valid=valid)
                assert np.array_equal(mask, want) and recipe.background == tuple(int(v) for v in bg)
                assert recipe.thresholds == thresholds  # the floats themselves, not rounded
        pixels = T.tissue_pixels_recipe(img)[0]
        for fractions in ((0.0005, 0.002), (0.02, 0.0), (0.0, 0.1), (0.1, 0.05)):
            assert np.array_equal(T.clean_mask(pixels, *fractions), ref.clean_mask(pixels, *fractions))


def test_otsu_is_scikit_images_threshold_otsu_to_the_bit():
    """clotclf's Otsu (to spare `clotclf tile` the import of scipy.ndimage) equals scikit-image's on
    float32 and float64 values and on histograms with empty ends."""
    from skimage.filters import threshold_otsu

    from clotclf_core.slides.tissue import otsu_of_histogram, otsu_of_values

    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.float64):
        for _ in range(30):
            n = int(rng.integers(2, 5000))
            v = np.concatenate([rng.normal(0.02, 0.01, n), rng.normal(0.3, 0.1, int(rng.integers(1, n + 1)))]).astype(dtype)
            assert otsu_of_values(v) == threshold_otsu(v)
    for _ in range(30):
        counts = rng.integers(0, 1000, 256)
        counts[: int(rng.integers(0, 5))] = 0
        counts[256 - int(rng.integers(0, 5)) :] = 0
        centres = np.sort(rng.random(256)).astype(np.float32)
        if counts.any():
            assert otsu_of_histogram(counts, centres) == threshold_otsu(hist=(counts, centres))


def test_tiling_needs_no_scipy_ndimage():
    """Importing and running the tissue mask and tiling's mask helpers leaves scipy.ndimage unloaded
    (~0.3 CPU-s at every `clotclf tile`)."""
    import subprocess
    import sys

    code = ("import numpy as np, sys\n"
            "from clotclf_core.slides.tissue import tissue_mask\n"
            "from clotclf_core.slides.prescreen import byte_count_prescreen\n"
            "from clotclf_core.tiling.grid import grow\n"
            "import clotclf_core.tiling.pipeline, clotclf_core.tiling.reading\n"
            "img = np.full((40, 40, 3), 240, np.uint8); img[10:30, 10:30] = (150, 60, 140)\n"
            "assert tissue_mask(img).sum() > 300 and grow(np.eye(5, dtype=bool)).sum() == 19\n"
            "byte_count_prescreen(np.r_[np.full(20, 100), np.full(20, 5000)].reshape(5, 8))\n"
            "print('scipy.ndimage' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_masked_histograms_agree_on_both_paths():
    """OpenCV's masked histogram (views under 2**24 pixels) and numpy's (larger views, or strided
    planes) count the same."""
    from clotclf_core.slides.tissue import _histogram, _median_u8

    rng = np.random.default_rng(12)
    plane = rng.integers(0, 256, (60, 70), dtype=np.uint8)
    where = rng.random((60, 70)) < 0.3
    strided = np.zeros((60, 140), bool)
    strided[:, ::2] = where
    fast, plain = _histogram(plane, where, 256), _histogram(plane, strided[:, ::2], 256)
    assert np.array_equal(fast, plain) and np.array_equal(fast, np.bincount(plane[where], minlength=256))
    assert _median_u8(plane, where) == float(np.median(plane[where]))
    total = plane.astype(np.uint16) * 3
    assert np.array_equal(_histogram(total, where, 768), np.bincount(total[where], minlength=768))


def test_code_counts_and_per_max_thresholds_equal_their_plain_definitions():
    """The saturation tests by (max, min) pair: the 2-D histogram of codes equals numpy's on both
    paths, and each threshold read as "min below a per-max length" is the plain per-code test (the
    passing mins are a prefix at every max, for any glass and any threshold in the bounds)."""
    from clotclf_core.slides import tissue as T

    rng = np.random.default_rng(13)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    planes = T._Planes(img)
    where = rng.random((40, 50)) < 0.4
    code = (planes.mx.astype(np.int64) << 8) | planes.mn
    plain = np.bincount(code[where], minlength=65536)
    strided = np.zeros((40, 100), bool)
    strided[:, ::2] = where
    assert np.array_equal(planes.code_counts(where), plain) and np.array_equal(planes.code_counts(strided[:, ::2]), plain)

    sat = T._saturation_by_code()
    mx, mn = np.divmod(np.arange(65536), 256)
    assert np.array_equal(mn >= T._glassy_min()[mx], sat < T.GLASS_MAX_SATURATION)
    for glass in ((255, 255, 255), (203, 207, 198), (190, 150, 120), (0, 0, 0)):
        values = sat - float(T.saturation(np.array(glass, np.uint8).reshape(1, 1, 3))[0, 0])
        for threshold in (*T.SATURATION_BOUNDS, 0.0873):
            passing = values > threshold
            assert np.array_equal(mn < T._below_by_max(passing)[mx], passing)


def test_pieces_are_opencvs_components_with_their_areas_on_both_label_widths():
    """_pieces: 16-bit labels counted by OpenCV where they fit, 32-bit ones past 65,534 pieces (a
    checkerboard's 80,000 one-pixel pieces); the same labels and areas as 32-bit labels counted plainly."""
    import cv2

    from clotclf_core.slides.tissue import _pieces, clean_mask

    rng = np.random.default_rng(14)
    blobs = rng.random((90, 70)) < 0.45
    checker = (np.indices((400, 400)).sum(axis=0) % 2).astype(bool)
    for image, connectivity in ((blobs, 8), (blobs, 4), (~blobs, 4), (checker, 4)):
        labels, areas = _pieces(image, connectivity)
        n, plain = cv2.connectedComponents(image.view(np.uint8), connectivity=connectivity)
        assert np.array_equal(labels, plain) and np.array_equal(areas, np.bincount(plain.ravel(), minlength=n))
    assert _pieces(checker, 4)[0].dtype == np.int32 and _pieces(blobs, 8)[0].dtype == np.uint16
    filled = clean_mask(checker, min_object_fraction=0, max_hole_fraction=1 / checker.size)  # 80,000 one-pixel holes
    assert filled[1:-1, 1:-1].all() and np.array_equal(filled[0], checker[0])  # (glass at the border stays)
