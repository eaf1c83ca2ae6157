"""The tile grid of one slide: working resolution, padding and centring, candidates, ranking.

Geometry is worked out in pixels of the *working resolution* (the raster of
:mod:`clotclf_core.tiling.reading`): 1/``factor`` of level 0, with ``factor`` the largest power of
two (at most 16) not above the level-0 pixels per cached pixel the settings ask for, so that the
raster is an exact box reduction of TIFF tiles. A tile is ``tile`` raster pixels (then resized to
``train_size`` when they differ), the grid steps by ``stride``.

With ``edges="pad"`` (the default) the grid covers the whole slide: as many tiles as it takes
along each axis, the grid centred on the slide, the part of a tile past the slide's edge filled
with the slide's glass colour — so no slide is too small and no edge remainder is left out. With
``edges="drop"`` (clotclf 0.1) the grid starts at (0, 0) and only whole tiles are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clotclf_core.tiling.settings import MAX_GRID_CELLS, SlideSkip

#: the working resolution never reduces level 0 by more than this (TIFF tiles are multiples of 16)
MAX_FACTOR = 16


def working_factor(size0: float, train_size: int) -> int:
    """Largest power of two <= min(:data:`MAX_FACTOR`, ``size0 / train_size``), at least 1."""
    ratio = size0 / float(train_size)
    if not math.isfinite(ratio) or ratio < 2:
        return 1
    return int(min(MAX_FACTOR, 2 ** int(math.floor(math.log2(ratio)))))


@dataclass(frozen=True)
class Grid:
    """Tile corners ``(x0 + c * stride, y0 + r * stride)`` in raster pixels, r < rows, c < cols."""

    tile: int
    stride: int
    x0: int
    y0: int
    cols: int
    rows: int

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    def xs(self) -> np.ndarray:
        return self.x0 + np.arange(self.cols, dtype=np.int64) * self.stride

    def ys(self) -> np.ndarray:
        return self.y0 + np.arange(self.rows, dtype=np.int64) * self.stride


def _axis(length: int, tile: int, stride: int, edges: str) -> tuple[int, int]:
    """(origin, count) along one axis of ``length`` raster pixels."""
    if edges == "drop":
        return 0, (length - tile) // stride + 1 if length >= tile else 0
    count = 1 if length <= tile else math.ceil((length - tile) / stride) + 1
    span = (count - 1) * stride + tile
    return -((span - length) // 2), count


def plan_grid(width: int, height: int, tile: int, stride: int, edges: str = "pad", what: str = "slide") -> Grid:
    """The grid over a ``width`` x ``height`` raster. Raises :class:`SlideSkip` when it would have
    more than :data:`MAX_GRID_CELLS` cells (a geometry mistake) or, with ``edges="drop"``, none."""
    x0, cols = _axis(width, tile, stride, edges)
    y0, rows = _axis(height, tile, stride, edges)
    if cols * rows > MAX_GRID_CELLS:
        raise SlideSkip(
            "failed",
            f"the tile geometry would cut this {what} into {cols:,} x {rows:,} = {cols * rows:,} tiles (more than "
            f"{MAX_GRID_CELLS:,}); use a larger --tile-size / --tile-um, --downsample or --stride",
        )
    if cols == 0 or rows == 0:
        raise SlideSkip("failed", f"the {what} is smaller than one tile ({tile} px at this resolution); lower --tile-size or --downsample, or use --edges pad")
    return Grid(tile, stride, x0, y0, cols, rows)


def cell_fractions(mask: np.ndarray, grid: Grid, raster_size: tuple[int, int]) -> np.ndarray:
    """Share of each grid cell inside the mask, (rows, cols) float32. The mask spans the raster;
    a cell's share is the mean of the mask over the mask pixels it covers (outside the slide: 0)."""
    rw, rh = raster_size
    mh, mw = mask.shape

    def bounds(starts: np.ndarray, n: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo = np.floor(starts * scale).astype(np.int64)
        hi = np.maximum(np.ceil((starts + grid.tile) * scale).astype(np.int64), lo + 1)
        return np.clip(lo, 0, n), np.clip(hi, 0, n), hi - lo  # clipped range, unclipped length

    c0, c1, cw = bounds(grid.xs(), mw, mw / rw)
    r0, r1, ch = bounds(grid.ys(), mh, mh / rh)
    sat = summed_area(mask)
    inside = sat[r1][:, c1] - sat[r0][:, c1] - sat[r1][:, c0] + sat[r0][:, c0]
    return (inside / np.outer(ch, cw)).astype(np.float32)  # padding counts as not tissue


def summed_area(mask: np.ndarray) -> np.ndarray:
    """The summed-area table of a boolean mask, (h + 1, w + 1) int64 with a zero first row and
    column: OpenCV's ``integral`` (a tenth of numpy's two cumulative sums) below 2**31 pixels."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    if 0 < mask.size < 2**31 - 1:
        import cv2

        return cv2.integral(np.ascontiguousarray(mask).view(np.uint8), sdepth=cv2.CV_32S).astype(np.int64)
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    return sat


def grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one cell into its 8 neighbours (nothing grows in from past the edge):
    ``scipy.ndimage.binary_dilation(mask, np.ones((3, 3)))`` by OpenCV (tested equal), which
    spares tiling the import of ``scipy.ndimage`` (~0.3 CPU-s)."""
    import cv2

    m = np.ascontiguousarray(mask, dtype=bool)
    if m.size == 0:
        return m.copy()
    return cv2.dilate(m.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def candidates(frac: np.ndarray, min_tissue: float) -> np.ndarray:
    """(n, 2) (row, col) of the cells with some tissue and at least ``min_tissue`` of it, row-major."""
    keep = (frac > 0) & (frac >= min_tissue)
    return np.argwhere(keep)


def rank_tiles(tissue: np.ndarray, darkness: np.ndarray, by: str) -> np.ndarray:
    """Order (best first) for ``max_tiles``: by tissue share then darkness, or by darkness alone;
    ties keep reading order (a stable sort), so the choice is the same on every run."""
    order = np.arange(len(tissue))
    if by == "dark":
        return order[np.argsort(-np.round(darkness, 6), kind="stable")]
    return np.lexsort((order, -np.round(darkness, 6), -np.round(tissue, 6)))


def candidate_grid(
    mask: np.ndarray, dimensions: tuple[int, int], size0: int, stride0: int, min_tissue: float
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (n, 2) of the whole tiles of a (0, 0) grid that overlap the mask enough,
    and their mask fraction (``edges="drop"`` geometry in level-0 pixels; used by export-patches)."""
    width, height = dimensions
    try:
        grid = plan_grid(width, height, size0, stride0, "drop")
    except SlideSkip:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    frac = cell_fractions(mask, grid, (width, height))
    rc = candidates(frac, min_tissue)
    xy = np.stack([grid.xs()[rc[:, 1]], grid.ys()[rc[:, 0]]], axis=1) if len(rc) else np.zeros((0, 2), np.int64)
    return xy, frac[rc[:, 0], rc[:, 1]]
