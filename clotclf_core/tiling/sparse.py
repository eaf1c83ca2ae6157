"""Reading a slide only where tissue is: the tissue mask from a low level (or the thumbnail the
slide stores), then only the working level's segments under the tiles that need pixels decoded.

:func:`clotclf_core.tiling.reading.scan_slide` decodes the working level whole (glass skipped only
where a TIFF's byte counts say so, which only the ``tifffile`` source can tell). On a pyramid that
is wasteful: a level 16-64x smaller already shows where the tissue is. So for a slide with such a
level (:func:`clotclf_core.tiling.levels.mask_level`):

1. :func:`survey` decodes that low level (or takes the stored thumbnail), reduces it to the
   view (longer side ``view_size``, OpenCV ``INTER_AREA``) and makes the glass colour and the tissue
   mask from it exactly as the scan does from its view;
2. the pipeline picks the candidate tiles from that mask;
3. :class:`WorkingLevel` decodes the working-level segments under those candidates, each once,
   reduced by the same exact integer box mean as the scan, grid row after grid row, and cuts the
   tiles from them (the pixels a full scan would have given them); segments above the current grid
   row are let go, so memory holds a band of segments, not the slide.

Everything goes through the public Slide members (``level_dimensions``, ``level_downsamples``,
``level_layout``, ``stored_thumbnail``): any source that offers a pyramid gets this. The
:class:`WorkingLevel` is also how a coordinates-only TileSet's tiles are read later
(:mod:`clotclf_core.tiling.fill`).
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import numpy as np

from clotclf_core.plugin.regions import area_resize, reduce_block
from clotclf_core.tiling.levels import level_layout, pyramid, working_level
from clotclf_core.tiling.raster import glass
from clotclf_core.tiling.reading import Scan

#: the block side (level px) asked of a source that cuts its levels as asked (OpenSlide: a multiple of
#: its tile side): small, so that decoding the blocks under the tiles decodes little glass beside them
SPARSE_BLOCK = 256


class WorkingLevel:
    """The slide at 1/``factor`` of level 0, decoded on demand, one segment at a time.

    :meth:`ensure` decodes the working level's segments under some squares (each segment once while
    it is held), :meth:`window` cuts a square from them, :meth:`release_above` drops the segments a
    caller going down the slide no longer needs; with ``max_bytes`` the least recently used
    segments go first (random access). Memory is the segments held, nothing else: no raster of
    the whole slide is made (writing scattered blocks into one touched 6x their size in memory
    pages here)."""

    def __init__(self, slide: Any, factor: int, threads: int = 1, max_bytes: int | None = None):
        self.level, self.ratio = working_level(slide, factor)
        layout = level_layout(slide, self.level, block=SPARSE_BLOCK)
        if layout.seg_width % self.ratio or layout.seg_height % self.ratio:
            layout = level_layout(slide, self.level, own=False)  # blocks of a multiple of 16 px, through read_region
        self.layout = layout
        self.factor = self.ratio * layout.downsample  # level-0 px per working px
        self.width, self.height = layout.width // self.ratio, layout.height // self.ratio
        self.seg_width, self.seg_height = layout.seg_width // self.ratio, layout.seg_height // self.ratio
        self.decoded = np.zeros((layout.rows, layout.cols), bool)  # ever decoded
        self.max_bytes = max_bytes
        self._held: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads)) if threads > 1 else None

    def _segments(self, x: int, y: int, side: int) -> tuple[range, range]:
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + side), min(self.height, y + side)
        if x1 <= x0 or y1 <= y0:
            return range(0), range(0)
        return range(y0 // self.seg_height, (y1 - 1) // self.seg_height + 1), range(x0 // self.seg_width, (x1 - 1) // self.seg_width + 1)

    def _read(self, rc: tuple[int, int]) -> np.ndarray:
        r, c = rc
        h = min(self.seg_height, self.height - r * self.seg_height)
        w = min(self.seg_width, self.width - c * self.seg_width)
        block = self.layout.read(r, c)
        if block is None:  # an empty (sparse) segment: white, as a region read gives it
            return np.full((max(0, h), max(0, w), 3), 255, np.uint8)
        return np.ascontiguousarray(reduce_block(np.asarray(block)[..., :3], self.ratio)[:h, :w])

    def ensure(self, boxes: Iterable[tuple[int, int, int]]) -> int:
        """Decode the segments under the squares ``(x, y, side)`` (working px) that are not held;
        returns how many were decoded."""
        todo: dict[tuple[int, int], None] = {}
        for x, y, side in boxes:
            rows, cols = self._segments(x, y, side)
            for r in rows:
                for c in cols:
                    if (r, c) in self._held:
                        self._held.move_to_end((r, c))
                    else:
                        todo[(r, c)] = None
        cells = list(todo)
        blocks = self._pool.map(self._read, cells) if self._pool is not None and len(cells) > 1 else map(self._read, cells)
        for rc, block in zip(cells, blocks):
            self._held[rc] = block
            self._bytes += block.nbytes
            self.decoded[rc] = True
        if self.max_bytes is not None:
            while self._bytes > self.max_bytes and len(self._held) > len(cells):
                self._bytes -= self._held.popitem(last=False)[1].nbytes
        return len(cells)

    def window(self, x: int, y: int, side: int, background: np.ndarray) -> np.ndarray:
        """The ``side``-pixel square at working px (x, y) from the held segments (call :meth:`ensure`
        first); the glass colour ``background`` outside the slide. A square inside one held segment is
        a view of it (copy it before the segment is let go: the pipeline copies it into its batch)."""
        rows, cols = self._segments(x, y, side)
        if len(rows) == 1 and len(cols) == 1 and x >= 0 and y >= 0:
            block = self._held.get((rows[0], cols[0]))
            by, bx = rows[0] * self.seg_height, cols[0] * self.seg_width
            if block is not None and y + side <= by + block.shape[0] and x + side <= bx + block.shape[1]:
                return block[y - by : y - by + side, x - bx : x - bx + side]
        out = glass((side, side, 3), background)
        for r in rows:
            for c in cols:
                block = self._held.get((r, c))
                if block is None:
                    continue
                by, bx = r * self.seg_height, c * self.seg_width
                ya, yb = max(y, by), min(y + side, by + block.shape[0])
                xa, xb = max(x, bx), min(x + side, bx + block.shape[1])
                if yb > ya and xb > xa:
                    out[ya - y : yb - y, xa - x : xb - x] = block[ya - by : yb - by, xa - bx : xb - bx]
        return out

    def release_above(self, y: int) -> None:
        """Drop the held segments that end above working row ``y``."""
        for rc in [rc for rc in self._held if (rc[0] + 1) * self.seg_height <= y]:
            self._bytes -= self._held.pop(rc).nbytes

    def stats(self) -> dict[str, Any]:
        return {"level": self.level, "ratio": self.ratio, "segments": int(self.decoded.size),
                "decoded_segments": int(self.decoded.sum()), "raster": f"{self.width} x {self.height}"}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._held.clear()
        self._bytes = 0


def _assemble(slide: Any, level: int, threads: int) -> np.ndarray:
    """A whole (small) level as one RGB array, each of its segments decoded once."""
    layout = level_layout(slide, level)
    out = np.full((layout.height, layout.width, 3), 255, np.uint8)

    def read(rc: tuple[int, int]) -> tuple[int, int, np.ndarray | None]:
        return rc[0], rc[1], layout.read(*rc)

    cells = [(r, c) for r in range(layout.rows) for c in range(layout.cols)]
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 and len(cells) > 1 else None  # (a pool costs ~0.3 ms)
    try:
        for r, c, block in (pool.map(read, cells) if pool is not None else map(read, cells)):
            if block is not None:
                y, x = r * layout.seg_height, c * layout.seg_width
                block = np.asarray(block)[: layout.height - y, : layout.width - x, :3]
                out[y : y + block.shape[0], x : x + block.shape[1]] = block
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return out


def survey(slide: Any, factor: int, source: str, mask_level: int | None, view_size: int, method: str,
           background: Any, threads: int = 1) -> Scan:
    """The :class:`Scan` of a slide read where tissue is: view, glass colour and tissue mask from
    ``mask_level`` (``source="level"``) or the stored thumbnail (``source="thumbnail"``), and an
    empty :class:`WorkingLevel` (``scan.work``, made on first use) to decode the tiles' segments."""
    from clotclf_core.slides.tissue import tissue_mask_recipe
    from clotclf_core.tiling.levels import stored_thumbnail

    level, ratio = working_level(slide, factor)
    dims, downsamples = pyramid(slide)
    lw, lh = dims[level]
    rw, rh = lw // ratio, lh // ratio
    if source == "thumbnail":
        low = stored_thumbnail(slide)
        where = f"the stored thumbnail ({low.shape[1]} x {low.shape[0]} px)"
    else:
        low = _assemble(slide, int(mask_level), threads)
        where = f"level {mask_level} (1/{downsamples[mask_level]:g}, {low.shape[1]} x {low.shape[0]} px)"
    h, w = low.shape[:2]
    scale = min(1.0, view_size / max(h, w))
    view = area_resize(low, (max(1, round(w * scale)), max(1, round(h * scale)))) if scale < 1 else np.ascontiguousarray(low)
    mask, recipe = tissue_mask_recipe(view, method, background=background)  # (None: the glass estimated from the view)
    vh, vw = view.shape[:2]
    stats = {"prescreen": "not used (mask from a low level)" if source != "thumbnail" else "not used (mask from the stored thumbnail)",
             "mask_from": where, "level": level, "ratio": ratio, "raster": f"{rw} x {rh}"}
    return Scan(None, ratio * downsamples[level], level, ratio, 0, 0, np.zeros((0, 0), bool), view, rw / max(vw, 1),
                np.ones((vh, vw), np.float32), mask, recipe, stats, raster_size=(rw, rh))
