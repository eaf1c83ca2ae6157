"""The otsu filter: tissue side of the threshold (not the published bright side), batched, guarded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clotclf_core.plugin import ConfigError
from clotclf_core.plugin_manager import get_manager

REAL_SLIDE = Path(__file__).parent / "data" / "cmu_small_region.svs"


def build(**options):
    spec = get_manager().get("filter", "otsu")
    return spec.factory(spec.validate_options(options))


@pytest.fixture(scope="module")
def real_tiles():
    """Two 224-px tiles of the real slide at level 0: blank glass (top left) and tissue (centre)."""
    import openslide
    with openslide.OpenSlide(str(REAL_SLIDE)) as s:
        glass = np.asarray(s.read_region((0, 224), 0, (224, 224)).convert("RGB"))
        tissue = np.asarray(s.read_region((1120, 896), 0, (224, 224)).convert("RGB"))
    return np.stack([glass, tissue])


@pytest.mark.parametrize("channel", ["grey", "saturation"])
def test_real_slide_polarity(real_tiles, channel):
    f = build(channel=channel)
    glass, tissue = f.score(real_tiles)
    assert glass < 0.05, "a blank tile must score ~0"
    assert tissue > 0.8, "a tile full of tissue must score high"
    assert f.threshold == 0.10  # the mask's min_tissue: edge tissue is kept (issue 18); blank glass still scores ~0


def test_published_polarity_would_keep_glass(real_tiles):
    """The published code counted the bright side: on the real glass tile that is about half the tile."""
    grey = real_tiles[0].mean(-1)
    from skimage.filters import threshold_otsu

    bright_share = (grey > threshold_otsu(grey)).mean()
    assert bright_share > 0.3  # would have been kept at 0.30: the bug this filter fixes
    assert build().score(real_tiles[:1])[0] < 0.05


def test_partial_tiles_score_their_tissue_share():
    rng = np.random.default_rng(0)
    tiles = np.clip(243 + rng.normal(0, 3, (4, 64, 64, 3)), 0, 255).astype(np.uint8)
    for i, cols in enumerate([0, 16, 32, 64]):
        tiles[i, :, :cols] = np.clip(np.array([180, 80, 130]) + rng.normal(0, 20, (64, cols, 3)), 0, 255)
    scores = build().score(tiles)
    np.testing.assert_allclose(scores, [0.0, 0.25, 0.5, 1.0], atol=0.03)
    assert (scores >= 0.3).tolist() == [False, False, True, True]  # clotclf 0.1's threshold dropped the quarter tile
    assert (scores >= build().threshold).tolist() == [False, True, True, True]  # the default keeps it


def test_uniform_tiles_and_batch_equals_single():
    white = np.full((1, 32, 32, 3), 255, np.uint8)
    dark = np.full((1, 32, 32, 3), 120, np.uint8)
    f = build()
    assert f.score(white)[0] == 0.0 and f.score(dark)[0] == 1.0
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    one_by_one = np.concatenate([f.score(batch[i : i + 1]) for i in range(5)])
    np.testing.assert_array_equal(f.score(batch), one_by_one)
    assert f.score(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0,)


def test_histograms_of_small_and_large_tiles_are_each_rows_counts():
    """Small tiles (a low-resolution view's) are counted in one bincount, large ones per row by
    OpenCV: both give each row's 256-bin counts."""
    from clotclf_otsu._filter import histograms

    rng = np.random.default_rng(4)
    for n, p in ((1, 1), (3, 196), (5, 1024), (2, 1025), (4, 50176)):
        values = rng.integers(0, 256, (n, p), dtype=np.uint8)
        got = histograms(values)
        assert got.dtype == np.int64 and np.array_equal(got, np.stack([np.bincount(r, minlength=256) for r in values]))
    assert histograms(np.zeros((0, 196), np.uint8)).shape == (0, 256)


def test_options_and_bad_input():
    with pytest.raises(ConfigError, match="option 'threshold'"):
        build(threshold=2)
    with pytest.raises(ConfigError, match="unknown option 'thresh'"):
        build(thresh=0.5)
    with pytest.raises(ValueError, match="uint8"):
        build().score(np.zeros((2, 8, 8, 3), np.float32))
    assert build(threshold=0.9).threshold == 0.9


def test_spec_module_is_light():
    import subprocess
    import sys

    code = "import sys, clotclf_otsu; bad=[m for m in ('torch','timm','openslide') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def _plain_otsu(hist: np.ndarray):
    """Otsu on one histogram at a time, written plainly (the reference): (threshold, low mean, high mean)."""
    out = []
    for counts in hist:
        prob = counts / max(int(counts.sum()), 1)
        omega, mu = np.cumsum(prob), np.cumsum(prob * np.arange(256))
        with np.errstate(divide="ignore", invalid="ignore"):
            between = np.array([(mu[-1] * w - m) ** 2 / (w * (1.0 - w)) if w * (1.0 - w) > 1e-12 else -1.0
                                for w, m in zip(omega, mu)])
            t = int(np.argmax(between))
            if between[t] > 0:
                out.append((t, mu[t] / omega[t], (mu[-1] - mu[t]) / (1.0 - omega[t])))
            else:
                out.append((t, mu[-1], mu[-1]))
    return tuple(np.array(column) for column in zip(*out))


def test_otsu_in_place_equals_the_plain_formula_to_the_bit():
    """The in-place Otsu gives the plain version's thresholds and class means exactly: sparse and
    dense histograms, empty rows, one-value rows, two-value rows."""
    from clotclf_otsu._filter import otsu_from_histograms

    rng = np.random.default_rng(17)
    for trial in range(20):
        hist = rng.integers(0, 60, (64, 256)).astype(np.int64)
        hist[rng.random((64, 256)) < rng.random()] = 0
        hist[0] = 0
        hist[1] = 0
        hist[1, rng.integers(256)] = 196
        hist[2] = 0
        hist[2, [10, 200]] = (150, 46)
        got, want = otsu_from_histograms(hist), _plain_otsu(hist)
        assert all(np.array_equal(g, w) for g, w in zip(got, want)), trial
