"""Helpers a slide source needs: the ``read_region`` contract answered from decoded blocks of one
level, a :class:`RegionSlide` base built on it, the checks of a request, mpp sanity, a level's
storage layout, and the one area-weighted box reduction the core and the sources share.

A source that can decode a level in blocks (tiles, strips, any rectangle) subclasses
:class:`RegionSlide` and implements one method, ``_blocks(level)`` (a :data:`BlockReader`); the base
answers ``read_region`` (with :func:`check_region`), ``thumbnail``, ``level_layout``, ``close`` and
``with``. :func:`render_region` is the engine: level-0 coordinates, output size
``round(size / downsample)``, white outside the slide.

Box reduction (area averaging), one implementation for every caller:

- :func:`area_resize` / :func:`reduce_block`: a whole picture resized with OpenCV's ``INTER_AREA``
  (exact area weights; by a whole number, the exact box mean). The measured fastest: a 512-px tile
  reduced by 2, 4, 16 takes 0.06-0.7 ms, against 0.8-8.8 ms for the numpy reduction below,
  2.2-3.0 ms for PIL's ``BOX`` (which samples pixel centres: not area weights) and 68-80 ms for an
  overlap-matrix product; a 2967 x 2220 slide to 1024 x 766 takes 21 ms, against 191 ms streamed.
  Tiling's reader reduces every decoded TIFF tile with it; :func:`render_region` every rectangle on
  the pixel grid (tiles, thumbnails of single-level slides).
- :func:`box_reduce_axis` / :class:`AreaReducer`: the same area weights for rectangles off the
  pixel grid and for huge ones, streamed block by block into a small output (partial pixels split by their
  overlap), so a thumbnail of a 100k x 100k single-level slide never holds more than one block at
  full resolution. It agrees with OpenCV's to within 1 grey level (rounding). Tiling's view
  coverage is the same reduction of its map of decoded segments.

At about 450 lines this module is over the project's ~400: it is one concern (``read_region``
answered from decoded blocks: the request, the reduction, the engine and the base class built on
it), and a plugin author finds every helper a slide source needs in this one module.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from clotclf_core.plugin.errors import ClotclfError, SlideReadError

#: Regions larger than this (pixels of the chosen level) and reduced by 2 or more are streamed
#: through an :class:`AreaReducer` instead of being assembled whole.
DIRECT_READ_MAX_PIXELS = 16 * 1024 * 1024


#: One decoded block of a level: (x, y) of its top-left corner in level pixels, RGB uint8 pixels.
Block = tuple[int, int, np.ndarray]


#: ``blocks(x0, y0, x1, y1)`` yields the blocks of a level covering that rectangle (level pixels).
BlockReader = Callable[[int, int, int, int], Iterable[Block]]


#: microns per pixel outside this range are not a microscope's pixel size (72 dpi screen defaults,
#: a vips file without resolution tags read as 1,000 um/px ...): every source ignores them
MPP_RANGE = (0.05, 50.0)


def checked_mpp(value: Any, path: str = "") -> tuple[float | None, str]:
    """``(mpp, note)``: ``value`` as microns per pixel when it is a plausible one, else ``None`` and
    a note saying why it was ignored (recorded per slide; ``--tile-um`` then refuses the slide)."""
    if value is None or value == "":
        return None, ""
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        return None, f"the slide's microns per pixel {value!r} is not a number: ignored"
    lo, hi = MPP_RANGE
    if not (math.isfinite(mpp) and lo <= mpp <= hi):
        return None, (
            f"the slide reports {mpp:g} microns per pixel, outside the plausible {lo:g}-{hi:g}: ignored "
            "(a screen-resolution default or a missing tag, not the scanner's pixel size)"
        )
    return mpp, ""


@dataclass
class LevelLayout:
    """One level of a slide cut into the pieces its file stores (TIFF tiles or strips), so that a
    reader can decode each piece exactly once (what tiling does: :mod:`clotclf_core.tiling.reading`).

    ``read(row, col)`` returns the RGB uint8 pixels of segment (row, col), clipped to the level
    (``seg_height`` x ``seg_width`` except at the right and bottom edges), or ``None`` for an empty
    (sparse) segment. Segment (row, col) starts at level pixel (``col * seg_width``,
    ``row * seg_height``); a level pixel is ``downsample`` level-0 pixels. ``byte_counts``: the
    compressed size of each segment, (rows, cols), when the file says (a decode-free tissue guess).
    A source offers this through ``Slide.level_layout(level)`` (:class:`RegionSlide` makes one from
    its blocks); tiling makes one from ``read_region`` for any other Slide.
    """

    level: int
    width: int
    height: int
    downsample: float
    seg_width: int
    seg_height: int
    read: Callable[[int, int], "np.ndarray | None"]
    byte_counts: "np.ndarray | None" = None

    @property
    def rows(self) -> int:
        return -(-self.height // self.seg_height)

    @property
    def cols(self) -> int:
        return -(-self.width // self.seg_width)


#: block side (level pixels) for slides that hide their storage: a multiple of 16 (TIFF tiles are),
#: so that reductions by 2, 4, 8 or 16 stay aligned with the blocks
GENERIC_BLOCK = 1024


def check_region(x: float, y: float, width: float, height: float, downsample: float, path: str = "") -> tuple[int, int]:
    """Validate a ``read_region`` request; return the output (rows, columns)."""
    where = f" of slide '{path}'" if path else ""
    if not (width > 0 and height > 0):
        raise ClotclfError(f"read_region{where}: width and height must be positive (got {width} x {height})")
    if not (downsample > 0 and math.isfinite(downsample)):
        raise ClotclfError(f"read_region{where}: downsample must be a positive number (got {downsample})")
    return round(height / downsample), round(width / downsample)


def thumbnail_downsample(dimensions: tuple[int, int], max_size: int) -> float:
    """Downsample giving a whole-slide view whose longer side is ``max_size`` (never upsampling)."""
    if max_size < 1:
        raise ClotclfError(f"thumbnail size must be at least 1 pixel (got {max_size})")
    return max(1.0, max(dimensions) / max_size)


def best_level(level_downsamples: Iterable[float], downsample: float) -> int:
    """Index of the most reduced level that is still at least as detailed as ``downsample``."""
    downsamples = list(level_downsamples)
    best = 0
    for i, ds in enumerate(downsamples):
        if downsamples[best] < ds <= downsample * (1 + 1e-6):
            best = i
    return best


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Grey, grey+alpha, RGB or RGBA (uint8 or uint16) -> RGB uint8, alpha composited onto white."""
    a = np.asarray(pixels)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ClotclfError(f"unsupported pixel type {a.dtype}: slides must be 8- or 16-bit")
    if a.ndim == 2:
        a = a[:, :, None]
    channels = a.shape[2]
    if channels in (2, 4):
        if a[:, :, -1].min() == 255:  # fully opaque, the usual case: just drop alpha
            if channels == 4 and a.size:  # OpenCV's copy is ~30x numpy's strided one (an OpenSlide region)
                import cv2  # (out of `import clotclf_core.plugin.regions`, as below)

                return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGBA2RGB)
            a = a[:, :, :-1]
        else:
            colour, alpha = a[:, :, :-1].astype(np.uint16), a[:, :, -1:].astype(np.uint16)
            a = ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        channels -= 1
    if channels == 1:
        return np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


# ----------------------------------------------------------------------------- box reduction


def area_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a whole RGB uint8 picture to ``size`` (width, height) with OpenCV's ``INTER_AREA``: each
    output pixel the area-weighted mean of the pixels it covers (partial pixels by their overlap)."""
    h, w = pixels.shape[:2]
    if (w, h) == tuple(size):
        return np.ascontiguousarray(pixels[..., :3])
    import cv2  # OpenCV stays out of `import clotclf_core.plugin.regions` until a reduction runs

    src = pixels[..., :3]
    if src.strides[1:] != (3, 1) or src.strides[0] <= 0:  # OpenCV takes rows at any stride (a cropped view), packed pixels
        src = np.ascontiguousarray(src)
    return cv2.resize(src, tuple(size), interpolation=cv2.INTER_AREA)


def reduce_block(block: np.ndarray, ratio: int) -> np.ndarray:
    """Box-mean ``block`` by the whole number ``ratio`` (rows and columns beyond a multiple are
    dropped): :func:`area_resize`, the exact mean of each ``ratio`` x ``ratio`` square."""
    h, w = (block.shape[0] // ratio) * ratio, (block.shape[1] // ratio) * ratio
    if h == 0 or w == 0:
        return np.zeros((h // ratio, w // ratio, 3), np.uint8)
    return area_resize(block[:h, :w], (w // ratio, h // ratio))


def box_reduce_axis(
    values: np.ndarray, axis: int, first: int, start: float, scale: float, n_out: int, dtype: Any = np.float32
) -> tuple[int, np.ndarray]:
    """Box-filter ``values`` along ``axis`` onto output pixels, with exact area weights.

    Input pixel ``first + i`` covers ``[first + i, first + i + 1)``; output pixel ``o`` covers
    ``[start + o * scale, start + (o + 1) * scale)`` with ``scale >= 1``, so an input pixel lies
    in one output, or straddles the border of two. Each output gets the sum of its pixels (a
    straddling pixel split by its overlap) divided by ``scale``: a fully covered output is the mean
    of its inputs. Returns ``(o0, sums)``: the first output touched and the sums (of ``dtype``) of
    the consecutive outputs touched, within ``0..n_out-1``.
    """
    n = values.shape[axis]
    edges = (np.arange(first, first + n + 1, dtype=np.float64) - start) / scale  # pixel edges, output units
    lo = np.floor(edges[:-1]).astype(np.int64)  # the output each pixel starts in
    spill = np.clip(edges[1:] - (lo + 1), 0, None) * scale  # share of each pixel in output lo + 1
    first_out = int(lo[0])
    runs = np.flatnonzero(np.diff(lo, prepend=first_out - 1))  # with scale >= 1, outputs lo[0]..lo[-1] all occur
    shape = list(values.shape)
    shape[axis] = len(runs) + 1
    sums = np.zeros(shape, dtype)
    sums[_along(axis, slice(0, len(runs)))] = _sum_runs(values, runs, axis, dtype)
    straddling = np.flatnonzero(spill > 0)  # at most one pixel per output border
    if straddling.size:
        bshape = [1] * values.ndim
        bshape[axis] = -1
        moved = np.take(values, straddling, axis=axis) * spill[straddling].astype(dtype).reshape(bshape)
        sums[_along(axis, lo[straddling] - first_out)] -= moved
        sums[_along(axis, lo[straddling] + 1 - first_out)] += moved
    sums /= np.asarray(scale, dtype)
    o0, o1 = max(first_out, 0), min(first_out + len(runs) + 1, n_out)
    return o0, sums[_along(axis, slice(o0 - first_out, max(o1, o0) - first_out))]


def _sum_runs(values: np.ndarray, starts: np.ndarray, axis: int, dtype: Any) -> np.ndarray:
    """``np.add.reduceat(values, starts, axis)`` in ``dtype``. Along axis 0 a loop of slice sums:
    numpy's reduceat is several times slower there (measured 2.5 ms vs 0.35 ms per 512-px tile)."""
    if axis != 0:
        return np.add.reduceat(values, starts, axis=axis, dtype=dtype)
    ends = [*starts[1:], values.shape[0]]
    return np.stack([values[a:b].sum(axis=0, dtype=dtype) for a, b in zip(starts, ends)])


def _along(axis: int, index: Any) -> tuple:
    """An index tuple selecting ``index`` along ``axis`` and everything along the other axes."""
    return (slice(None),) * axis + (index,)


def _whole_ratio(fx0: float, fy0: float, scale_x: float, scale_y: float) -> int | None:
    """``k`` when output pixels are whole k x k squares of level pixels starting on a pixel border."""
    k = round(scale_x)
    if k >= 1 and all(abs(v - round(v)) < 1e-9 for v in (fx0, fy0)) and abs(scale_x - k) < 1e-9 and abs(scale_y - k) < 1e-9:
        return k
    return None


class AreaReducer:
    """Area-average (box filter) a level rectangle to a small image, one block at a time.

    Memory is the float32 output, however large the rectangle. Each block's pixels are spread
    over the output pixels they overlap with exact area weights (:func:`box_reduce_axis`, rows
    then columns; a block of whole output squares through :func:`reduce_block`), so the result
    does not depend on how the rectangle is cut into blocks. The share of each output pixel that
    blocks covered is kept too: the rest (outside the slide, empty tiles) is white.
    """

    def __init__(
        self, fx0: float, fy0: float, scale_x: float, scale_y: float, out_size: tuple[int, int], level_size: tuple[int, int]
    ):
        self.fx0, self.fy0, self.sx, self.sy = fx0, fy0, scale_x, scale_y
        self.whole = _whole_ratio(fx0, fy0, scale_x, scale_y)
        self.out_w, self.out_h = out_size
        self.level_w, self.level_h = level_size
        self.sums = np.zeros((self.out_h, self.out_w, 3), np.float32)
        self.covered = np.zeros((self.out_h, self.out_w, 1), np.float32)

    def add(self, bx: int, by: int, block: np.ndarray) -> None:
        """Add an RGB uint8 block whose top-left corner is (bx, by) in level pixels."""
        bh, bw = block.shape[:2]
        x0, y0, x1, y1 = max(bx, 0), max(by, 0), min(bx + bw, self.level_w), min(by + bh, self.level_h)
        if x0 >= x1 or y0 >= y1:
            return
        part = block[y0 - by : y1 - by, x0 - bx : x1 - bx]
        k = self.whole
        if k and not ((x0 - self.fx0) % k or (y0 - self.fy0) % k or (x1 - x0) % k or (y1 - y0) % k):
            self._add_whole(x0, y0, reduce_block(part, k))
            return
        oy, rows = box_reduce_axis(part, 0, y0, self.fy0, self.sy, self.out_h)
        ox, both = box_reduce_axis(rows, 1, x0, self.fx0, self.sx, self.out_w)
        _, cover_y = box_reduce_axis(np.ones(y1 - y0, np.float32), 0, y0, self.fy0, self.sy, self.out_h)
        _, cover_x = box_reduce_axis(np.ones(x1 - x0, np.float32), 0, x0, self.fx0, self.sx, self.out_w)
        rows_out, cols_out = slice(oy, oy + both.shape[0]), slice(ox, ox + both.shape[1])
        self.sums[rows_out, cols_out] += both
        self.covered[rows_out, cols_out, 0] += np.outer(cover_y, cover_x)

    def _add_whole(self, x0: int, y0: int, small: np.ndarray) -> None:
        """A block reduced to whole output pixels, starting at output (x0 - fx0, y0 - fy0) / k."""
        ox, oy = round((x0 - self.fx0) / self.whole), round((y0 - self.fy0) / self.whole)
        a, b = max(0, -oy), max(0, -ox)  # rows / columns of `small` before the output starts
        rows = slice(oy + a, min(self.out_h, oy + small.shape[0]))
        cols = slice(ox + b, min(self.out_w, ox + small.shape[1]))
        if rows.start < rows.stop and cols.start < cols.stop:
            self.sums[rows, cols] += small[a : a + rows.stop - rows.start, b : b + cols.stop - cols.start]
            self.covered[rows, cols] += 1.0

    def result(self) -> np.ndarray:
        white = 255.0 * np.clip(1.0 - self.covered, 0.0, 1.0)
        return np.clip(np.rint(self.sums + white), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- read_region from blocks


def render_region(
    blocks: BlockReader,
    level_size: tuple[int, int],
    level_downsample: float,
    x: float,
    y: float,
    width: float,
    height: float,
    downsample: float,
) -> np.ndarray:
    """Answer ``read_region(x, y, width, height, downsample)`` from one level's blocks.

    ``blocks(x0, y0, x1, y1)`` must yield RGB uint8 blocks of the level (alpha already composited)
    covering the level-pixel rectangle, or fewer where the level is empty; blocks may extend past
    the rectangle or the level (they are clipped). Everything not covered is white.

    A rectangle on the level's pixel grid (a tile, a thumbnail of a single-level slide) is assembled
    and resized with :func:`area_resize`, up to :data:`DIRECT_READ_MAX_PIXELS` when it is reduced by
    2 or more; other rectangles (fractional corners, huge reductions) are streamed through an
    :class:`AreaReducer`, except enlargements, which take the level pixel under each output pixel's
    centre. Either way each output pixel is the area-weighted mean of what it covers.
    """
    out_h, out_w = check_region(x, y, width, height, downsample)
    if out_h == 0 or out_w == 0:
        return np.full((out_h, out_w, 3), 255, np.uint8)
    lw, lh = level_size
    fx0, fy0 = x / level_downsample, y / level_downsample
    fx1, fy1 = (x + width) / level_downsample, (y + height) / level_downsample
    sx, sy = (fx1 - fx0) / out_w, (fy1 - fy0) / out_h
    ix0, iy0, ix1, iy1 = math.floor(fx0), math.floor(fy0), math.ceil(fx1), math.ceil(fy1)
    cx0, cy0, cx1, cy1 = max(ix0, 0), max(iy0, 0), min(ix1, lw), min(iy1, lh)  # the part inside the level
    inside = cx0 < cx1 and cy0 < cy1
    on_grid = all(abs(v - round(v)) < 1e-9 for v in (fx0, fy0, fx1, fy1))
    small = min(sx, sy) < 2 or (ix1 - ix0) * (iy1 - iy0) <= DIRECT_READ_MAX_PIXELS
    if (on_grid and small) or min(sx, sy) < 1:
        canvas = np.full((iy1 - iy0, ix1 - ix0, 3), 255, np.uint8)
        for bx, by, block in blocks(cx0, cy0, cx1, cy1) if inside else ():
            _paste(canvas, ix0, iy0, (cx0, cy0, cx1, cy1), bx, by, block)
        if on_grid:
            return area_resize(canvas, (out_w, out_h))
        cols = np.clip(np.floor(fx0 + (np.arange(out_w) + 0.5) * sx).astype(np.int64) - ix0, 0, ix1 - ix0 - 1)
        rows = np.clip(np.floor(fy0 + (np.arange(out_h) + 0.5) * sy).astype(np.int64) - iy0, 0, iy1 - iy0 - 1)
        return canvas[rows[:, None], cols[None, :]]
    reducer = AreaReducer(fx0, fy0, sx, sy, (out_w, out_h), level_size)
    for bx, by, block in blocks(cx0, cy0, cx1, cy1) if inside else ():
        reducer.add(bx, by, block)
    return reducer.result()


def _paste(canvas: np.ndarray, ox: int, oy: int, clip: tuple[int, int, int, int], bx: int, by: int, block: np.ndarray) -> None:
    """Copy the part of ``block`` (top-left at level pixel bx, by) inside ``clip`` onto ``canvas``
    (whose top-left is level pixel ox, oy)."""
    bh, bw = block.shape[:2]
    px0, py0 = max(bx, clip[0]), max(by, clip[1])
    px1, py1 = min(bx + bw, clip[2]), min(by + bh, clip[3])
    if px0 < px1 and py0 < py1:
        canvas[py0 - oy : py1 - oy, px0 - ox : px1 - ox] = block[py0 - by : py1 - by, px0 - bx : px1 - bx]


def grid_blocks(read: Callable[[int, int, int, int], np.ndarray], block: int = 2048) -> BlockReader:
    """A :data:`BlockReader` for sources that read any rectangle: cut it into ``block``-sized reads.

    ``read(x, y, w, h)`` returns the level's RGB uint8 pixels of that rectangle.
    """

    def blocks(x0: int, y0: int, x1: int, y1: int) -> Iterator[Block]:
        for by in range(y0, y1, block):
            for bx in range(x0, x1, block):
                w, h = min(block, x1 - bx), min(block, y1 - by)
                yield bx, by, read(bx, by, w, h)

    return blocks


# ----------------------------------------------------------------------------- the base class


class RegionSlide:
    """A :class:`~clotclf_core.plugin.protocols.Slide` answered from one method a source implements.

    A subclass sets, in its ``__init__``: ``path`` (str), ``dimensions`` ((width, height) at level 0),
    ``mpp`` (through :func:`checked_mpp`; ``mpp_note`` gets its note), ``level_dimensions`` and
    ``level_downsamples`` (most detailed first; ``[dimensions]`` and ``[1.0]`` for one level), and
    implements :meth:`_blocks`. It may override :meth:`_close` (release the file),
    :meth:`best_level` (its own choice of level), :meth:`_layout_block` (the block side its file
    decodes best) or :meth:`level_layout` itself (its stored tiles, with their byte counts).
    """

    path: str
    dimensions: tuple[int, int]
    mpp: float | None
    mpp_note: str = ""
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]

    # ------------------------------------------------------------------ what a source implements
    def _blocks(self, level: int) -> BlockReader:
        """The :data:`BlockReader` of ``level``: ``blocks(x0, y0, x1, y1)`` yields ``(x, y, pixels)``
        covering that rectangle of level pixels (RGB uint8, :func:`to_rgb`), as the file stores them
        or cut with :func:`grid_blocks`; raise :class:`~clotclf_core.plugin.errors.SlideReadError`
        for a piece that cannot be decoded."""
        raise NotImplementedError(f"{type(self).__name__} must implement _blocks(level)")

    def _close(self) -> None:
        """Release the file (called once, by :meth:`close`)."""

    def _layout_block(self, level: int, near: int = GENERIC_BLOCK) -> int:
        """Side of the square blocks :meth:`level_layout` cuts ``level`` into, about ``near`` pixels
        when the file allows (default :data:`GENERIC_BLOCK` whatever ``near``)."""
        return GENERIC_BLOCK

    def best_level(self, downsample: float) -> int:
        """The level ``read_region`` reads for ``downsample`` (default :func:`best_level`)."""
        return best_level(self.level_downsamples, downsample)

    # ------------------------------------------------------------------ the Slide
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, x: float, y: float, width: float, height: float, downsample: float = 1.0) -> np.ndarray:
        check_region(x, y, width, height, downsample, self.path)
        level = self.best_level(downsample)
        return render_region(self._blocks(level), self.level_dimensions[level], self.level_downsamples[level],
                             x, y, width, height, downsample)

    def thumbnail(self, max_size: int) -> np.ndarray:
        ds = thumbnail_downsample(self.dimensions, max_size)
        return self.read_region(0, 0, self.dimensions[0], self.dimensions[1], ds)

    def level_layout(self, level: int = 0, block: int | None = None) -> LevelLayout:
        """``level`` in square blocks of :meth:`_layout_block` pixels read through :meth:`_blocks`
        (white where the file holds nothing), so that tiling decodes each block once. ``block``: ask
        for blocks of about that side (tiling asks for small ones where it decodes only the tiles
        under tissue); the source may keep its own."""
        self._check_level(level)
        width, height = self.level_dimensions[level]
        side = self._layout_block(level) if block is None else self._layout_block(level, block)
        blocks = self._blocks(level)

        def read(row: int, col: int) -> np.ndarray:
            x, y = col * side, row * side
            w, h = min(side, width - x), min(side, height - y)
            got = list(blocks(x, y, x + w, y + h))
            if len(got) == 1 and got[0][:2] == (x, y) and got[0][2].shape[:2] == (h, w):
                return got[0][2]
            canvas = np.full((h, w, 3), 255, np.uint8)
            for bx, by, block in got:
                _paste(canvas, x, y, (x, y, x + w, y + h), bx, by, block)
            return canvas

        return LevelLayout(level, width, height, self.level_downsamples[level], side, side, read)

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise SlideReadError(f"slide '{self.path}' has levels 0..{self.level_count - 1}, not {level}")

    def close(self) -> None:
        self._close()

    def __enter__(self) -> "RegionSlide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"{type(self).__name__}('{os.fspath(self.path)}', {w}x{h}, levels={self.level_count}, mpp={self.mpp})"
