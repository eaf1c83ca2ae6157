"""Tissue detection on a slide's low-resolution view (its thumbnail).

Tiling looks at the slide only through this mask before reading anything at full resolution:
tiles that do not overlap tissue are never read, which is what makes tiling a mostly-white
whole-slide image cheap. The mask is deliberately generous (a later filter such as ``otsu``
judges each tile at full detail); it must above all never call blank glass tissue.

How: a pixel is tissue when it is coloured (HSV saturation) and/or absorbs light (optical
density, ``-log(I / 255)``) above an Otsu threshold computed on the whole thumbnail. Otsu always
splits an image in two, even one that is all glass or all tissue, so each threshold is clipped
into a plausible range: on an all-white thumbnail the threshold stays above glass noise (empty
mask), on an all-tissue one it stays below stained tissue (full mask). Then specks smaller than
``min_object_fraction`` of the image are removed and holes smaller than ``max_hole_fraction``
filled (scikit-image connected components).

:func:`slide_overview` gives tiling a Slide's view and mask. A large single-level TIFF has no
small level to make a thumbnail from, so there the mask comes from the compressed size of each
TIFF tile (glass compresses better than tissue: :func:`byte_count_prescreen`), checked by
decoding a sample of the tiles it calls glass.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Method = Literal["saturation", "od", "either", "both"]

#: Otsu thresholds are clipped into these ranges (saturation in 0..1, optical density in OD units).
#: The upper bounds are low on purpose: pale tissue next to strongly stained tissue stays in.
SATURATION_BOUNDS = (0.05, 0.15)
OD_BOUNDS = (0.10, 0.25)
#: slides with fewer level-0 pixels are always decoded whole for their mask (that is cheap, and
#: the byte-count prescreen's mask is coarser)
PRESCREEN_MIN_PIXELS = 64_000_000


def _channel_max_min(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in 0..1, float32: 0 for grey/white/black, high for stained tissue."""
    mx, mn = _channel_max_min(rgb)
    mx = mx.astype(np.float32)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0).astype(np.float32)


#: optical density of each 8-bit intensity, -log((I + 1) / 256)
_OD_LUT = (-np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0)).astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Mean optical density over the channels, float32: ~0 for white glass, >0.3 for stained tissue."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    return (_OD_LUT[rgb[..., 0]] + _OD_LUT[rgb[..., 1]] + _OD_LUT[rgb[..., 2]]) / np.float32(3.0)


def clipped_otsu(values: np.ndarray, bounds: tuple[float, float]) -> float:
    """Otsu's threshold of ``values``, clipped into ``bounds`` (see the module docstring)."""
    from skimage.filters import threshold_otsu

    lo, hi = bounds
    v = values.ravel()
    if v.size == 0 or float(v.max()) == float(v.min()):
        return lo  # one value only: Otsu is undefined; the lower bound decides
    return float(np.clip(threshold_otsu(v), lo, hi))


def remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected True components with fewer than ``min_size`` pixels."""
    from skimage.measure import label

    if min_size <= 1 or not mask.any():
        return mask
    labels = label(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def fill_small_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Fill False components that do not touch the border and have at most ``max_size`` pixels."""
    from skimage.measure import label

    if max_size <= 0 or mask.all():
        return mask
    labels = label(~mask, connectivity=1)
    sizes = np.bincount(labels.ravel())
    fill = sizes <= max_size
    fill[0] = False
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill[border] = False
    return mask | fill[labels]


def tissue_mask(
    thumbnail_rgb: np.ndarray,
    method: Method = "either",
    min_object_fraction: float = 0.0005,
    max_hole_fraction: float = 0.002,
    black_level: int = 25,
) -> np.ndarray:
    """Boolean (H, W) mask of tissue on an RGB uint8 (H, W, 3) low-resolution view of a slide.

    - ``method``: ``saturation`` (coloured pixels), ``od`` (absorbing pixels), ``either`` (a pixel
      passing one of the two: catches pale as well as strongly stained tissue) or ``both``.
    - ``min_object_fraction``: connected tissue pieces smaller than this share of the image are
      dropped (dust, debris specks).
    - ``max_hole_fraction``: enclosed background holes up to this share of the image are filled.
    - ``black_level``: pixels whose brightest channel is below this are never tissue (black
      padding outside the scanned area, which some readers return for missing regions).

    An all-white (or all-black) input gives an all-False mask.
    """
    return clean_mask(tissue_pixels(thumbnail_rgb, method, black_level), min_object_fraction, max_hole_fraction)


def tissue_pixels(thumbnail_rgb: np.ndarray, method: Method = "either", black_level: int = 25) -> np.ndarray:
    """The per-pixel tissue decision of :func:`tissue_mask`, before specks and holes are cleaned."""
    rgb = np.asarray(thumbnail_rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"tissue_mask needs an (H, W, 3) RGB image, got shape {rgb.shape}")
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        raise ValueError(f"tissue_mask needs uint8 RGB, got {rgb.dtype}")
    if method not in ("saturation", "od", "either", "both"):
        raise ValueError(f"unknown tissue-mask method {method!r}: choose saturation, od, either or both")

    valid = _channel_max_min(rgb)[0] >= black_level
    masks = []
    if method in ("saturation", "either", "both"):
        sat = saturation(rgb)
        masks.append(sat > clipped_otsu(sat[valid], SATURATION_BOUNDS))
    if method in ("od", "either", "both"):
        od = optical_density(rgb)
        masks.append(od > clipped_otsu(od[valid], OD_BOUNDS))
    mask = masks[0]
    for m in masks[1:]:
        mask = (mask & m) if method == "both" else (mask | m)
    return mask & valid


def clean_mask(mask: np.ndarray, min_object_fraction: float = 0.0005, max_hole_fraction: float = 0.002) -> np.ndarray:
    """Drop specks smaller than ``min_object_fraction`` of the image and fill holes up to ``max_hole_fraction``."""
    area = mask.size
    mask = remove_small_objects(mask, int(round(min_object_fraction * area)))
    return fill_small_holes(mask, int(round(max_hole_fraction * area)))


def byte_count_prescreen(
    counts: np.ndarray, coverage: np.ndarray | None = None, min_ratio: float = 1.5, min_separation: float = 0.8
) -> np.ndarray | None:
    """Likely-tissue cells of a tiled image from the compressed size of each tile (no decoding).

    Blank glass compresses better than tissue, so Otsu's threshold on log(bytes) splits the tiles
    into "busy" and "quiet". Returns the boolean busy map, or ``None`` when the sizes do not fall
    into two clear groups: the classes' typical sizes differ by less than ``min_ratio`` x, or
    Otsu's separability (between-class / total variance) is below ``min_separation`` (a single
    bell-shaped group scores ~0.64). A caller must still verify quiet cells by sampling pixels:
    pale tissue can compress as well as noisy glass.

    ``coverage``: the share of each tile inside the image. Edge tiles are partly padding, whose
    content depends on the writer, so only whole tiles set the threshold; an edge tile is busy
    when its size passes the threshold scaled by its coverage (blank padding makes it smaller,
    copied content does not: either way tissue is not missed).
    """
    from skimage.filters import threshold_otsu

    logc = np.log(np.maximum(np.asarray(counts, dtype=np.float64), 1.0))
    cov = np.ones_like(logc) if coverage is None else np.clip(np.asarray(coverage, dtype=np.float64), 1e-3, 1.0)
    whole = logc[cov >= 0.999]
    if whole.size < 4 or float(whole.max()) == float(whole.min()):
        return None
    threshold = threshold_otsu(whole)
    hi, lo = whole[whole > threshold], whole[whole <= threshold]
    if hi.size == 0 or lo.size == 0:
        return None
    share = hi.size / whole.size
    between = share * (1 - share) * (hi.mean() - lo.mean()) ** 2
    if np.exp(np.median(hi) - np.median(lo)) < min_ratio or between / whole.var() < min_separation:
        return None
    # Otsu's threshold sits at the edge of the lower group's histogram bin; the middle of the gap
    # between the two groups (geometric mean of their typical sizes) is the robust cut
    threshold = (np.median(hi) + np.median(lo)) / 2
    return logc > threshold + np.log(cov)


# ----------------------------------------------------------------------------- a slide's overview


def slide_overview(
    slide: Any, thumbnail_size: int = 1024, method: Method = "either", prescreen: bool = True
) -> tuple[np.ndarray, np.ndarray, str]:
    """A Slide's low-resolution view (RGB uint8), its tissue mask, and how they were made.

    Normally the Slide's ``thumbnail(thumbnail_size)`` and :func:`tissue_mask` on it
    (``"thumbnail"``). A single-level slide has no small level, so its thumbnail decodes every
    pixel; when such a slide is large (>= :data:`PRESCREEN_MIN_PIXELS`), ``prescreen`` is on and
    the Slide offers ``tile_byte_counts()`` (the tifffile source), the mask comes from the
    compressed size of its TIFF tiles instead, checked on a sample (``"byte_counts"``; see
    :func:`_prescreened_overview`). The view is then white except the sampled tiles.
    """
    how = "thumbnail"
    width, height = slide.dimensions
    if prescreen and width * height >= PRESCREEN_MIN_PIXELS:
        counts = _byte_counts(slide)
        busy = byte_count_prescreen(counts.counts, _coverage(counts, slide.dimensions)) if counts is not None else None
        if busy is not None:
            got = _prescreened_overview(slide, thumbnail_size, method, counts.tile_width, busy)
            if got is not None:
                return got
            how = "thumbnail (the byte-count prescreen missed tissue in sampled tiles)"
    thumb = np.asarray(slide.thumbnail(thumbnail_size))[..., :3].astype(np.uint8, copy=False)
    return thumb, tissue_mask(thumb, method=method), how


def _byte_counts(slide: Any) -> Any:
    """The compressed size of each level-0 tile, if the slide is single-level, tiled with square tiles, and says."""
    fn = getattr(slide, "tile_byte_counts", None)
    if fn is None or getattr(slide, "level_count", 1) != 1:
        return None
    try:
        counts = fn(0)
    except Exception:
        return None
    ok = counts.tile_width == counts.tile_height and counts.counts.ndim == 2 and counts.counts.shape[1] > 1
    return counts if ok else None


def _coverage(counts: Any, dimensions: tuple[int, int]) -> np.ndarray:
    """Share of each TIFF tile that lies inside the image (edge tiles are partly padding)."""
    rows, cols = counts.counts.shape
    t = counts.tile_width
    fx = np.clip((dimensions[0] - np.arange(cols) * t) / t, 0, 1)
    fy = np.clip((dimensions[1] - np.arange(rows) * t) / t, 0, 1)
    return np.outer(fy, fx)


def _prescreened_overview(
    slide: Any, thumbnail_size: int, method: Method, tile: int, busy: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Tissue mask from the compressed size of each TIFF tile, checked on a sample of pixels.

    The mask is the "busy" TIFF tiles (see :func:`byte_count_prescreen`)
    grown by one tile on every side, so that the edges of tissue are kept: nothing is decoded for
    it, and candidates are then read once, by tiling itself. To check the guess, a 1-in-16
    lattice of the other (quiet) TIFF tiles is decoded: if any holds tissue (>= 20 % of it), the
    byte counts cannot be trusted for this slide (pale tissue can compress like glass): return
    None so the caller decodes everything. The overview is white but for the sampled tiles;
    tiling pastes the candidates in.
    """
    from scipy.ndimage import binary_dilation

    width, height = (int(v) for v in slide.dimensions)
    px = max(1, round(tile * thumbnail_size / max(width, height)))  # overview pixels per TIFF tile
    ds = tile / px
    grown = binary_dilation(busy, structure=np.ones((3, 3), bool))
    sample = np.zeros_like(busy)
    sample[2::4, 2::4] = True
    sample &= ~grown
    rows, cols = busy.shape
    canvas = np.full((rows * px, cols * px, 3), 255, np.uint8)
    for r, c in np.argwhere(sample):
        canvas[r * px : (r + 1) * px, c * px : (c + 1) * px] = np.asarray(
            slide.read_region(int(c * tile), int(r * tile), tile, tile, ds)
        )[:px, :px, :3]
    h, w = round(height / ds), round(width / ds)
    found = np.zeros((rows * px, cols * px), bool)
    found[:h, :w] = tissue_pixels(canvas[:h, :w], method=method)
    share = found.reshape(rows, px, cols, px).mean(axis=(1, 3))
    if (share[sample] >= 0.2).any():
        return None
    mask = np.repeat(np.repeat(grown, px, axis=0), px, axis=1)[:h, :w]
    return canvas[:h, :w], mask, "byte_counts"
