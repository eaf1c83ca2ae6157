"""Reading a slide once: every stored segment decoded at most once, reduced to the working resolution.

Tiling does not read regions per candidate tile (overlapping candidates, or candidates cutting
across the strips of a stripped TIFF, made the same pixels decode many times). Instead
:func:`scan_slide` walks the stored segments of one level (TIFF tiles or strips, through
:class:`clotclf_core.plugin.regions.LevelLayout`), decodes each once with the source's own decoder
(tifffile + imagecodecs for TIFFs), reduces it by an integer factor with
:func:`clotclf_core.plugin.regions.reduce_block` (OpenCV's ``INTER_AREA``: an exact box mean) and
stores it in a :class:`Raster`: the slide at the working resolution (1/``factor`` of level 0; a factor of 2, 4, 8 or 16 stays aligned with TIFF
tiles, whose sides are multiples of 16). A low-resolution view for the tissue mask is accumulated
on the way. Candidate tiles are then cut from the raster — no decoding at all.

Why this and not a library's region reader: measured on a synthetic 23,000 x 37,600 deflate TIFF
here (``benchmarks/tiling.py --engines``, docs/performance.md), decoding every tile once with
tifffile took 3.0 CPU-s, decode + ``INTER_AREA`` by 4 3.9 CPU-s, against 6.4 for row bands read
through tifffile's zarr view (``aszarr``) + the same reduction, and 5.7 for pyvips ``shrink``.

The raster (:class:`clotclf_core.tiling.raster.Raster`) is held in memory up to 768 MiB, else in an
anonymous temporary file read and written by rows, so memory stays bounded whatever the slide's size.

With ``prescreen``, a tiled TIFF's segments whose compressed size says glass
(:func:`clotclf_core.slides.prescreen.byte_count_prescreen`), away from every busy segment, are not decoded;
a lattice of one in four of them is, as a check, and any segment found to hold tissue gets its
skipped neighbours decoded too, until no tissue touches a skipped segment. Skipped segments are
filled with the slide's glass colour and shown as never decoded in the QC picture.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from clotclf_core.plugin.regions import LevelLayout, box_reduce_axis, reduce_block
from clotclf_core.tiling.levels import level_layout, working_level
from clotclf_core.tiling.raster import Raster, glass


@dataclass
class Scan:
    """What reading a slide once produced (see :func:`scan_slide`)."""

    raster: Raster
    #: level-0 pixels per raster pixel (``ratio`` x the level's downsample)
    factor: float
    level: int
    ratio: int
    #: segment size in raster pixels, and which segments were decoded (rows, cols)
    seg_width: int
    seg_height: int
    decoded: np.ndarray
    #: the low-resolution view (glass colour where nothing was decoded) and its scale (raster px per view px)
    view: np.ndarray
    view_scale: float
    #: share of each view pixel that was decoded (0..1)
    view_decoded: np.ndarray
    mask: np.ndarray
    recipe: Any
    stats: dict[str, Any] = field(default_factory=dict)
    #: (width, height) of the working raster (when ``raster`` is None: a survey, :mod:`clotclf_core.tiling.sparse`)
    raster_size: tuple[int, int] | None = None
    #: the :class:`clotclf_core.tiling.sparse.WorkingLevel` that decodes a survey's tiles on demand
    work: Any = None

    def view_scales(self) -> tuple[float, float]:
        """Working-raster pixels per view pixel along x and y."""
        if self.raster is not None:  # a scan's view: whole blocks of view_scale x view_scale raster pixels
            return float(self.view_scale), float(self.view_scale)
        (rw, rh), (vh, vw) = self.raster_size, self.view.shape[:2]
        return rw / max(vw, 1), rh / max(vh, 1)

    def close(self) -> None:
        if self.raster is not None:
            self.raster.close()
        if self.work is not None:
            self.work.close()


class _View:
    """The low-resolution view of the raster: each view pixel the box mean of ``scale`` x ``scale``
    raster pixels (an integer: OpenCV's ``INTER_AREA`` is then an exact block mean, the same
    whether the raster is reduced whole or band by band). The last view row / column, where the
    raster does not fill a whole block, averages what there is."""

    def __init__(self, raster: Raster, view_size: int):
        self.raster = raster
        rw, rh = raster.width, raster.height
        self.scale = max(1, -(-max(rw, rh) // view_size))
        self.vw, self.vh = max(1, -(-rw // self.scale)), max(1, -(-rh // self.scale))
        self.raw = np.zeros((self.vh, self.vw, 3), np.uint8)

    def update(self, y0: int = 0, y1: int | None = None) -> None:
        """Recompute the view rows covering raster rows ``y0:y1`` (default: all)."""
        k = self.scale
        v0 = y0 // k
        v1 = self.vh if y1 is None else min(self.vh, -(-y1 // k))
        band_rows = max(1, 512 // k)  # view rows per band
        for a in range(v0, v1, band_rows):
            b = min(v1, a + band_rows)
            self.raw[a:b] = self._reduce(self.raster.rows(a * k, b * k), b - a)

    def _reduce(self, rows: np.ndarray, n: int) -> np.ndarray:
        k = self.scale
        if k == 1:
            return rows[:n, : self.vw]
        if len(rows) < n * k:  # the last band: repeat the last row to fill the block
            rows = np.concatenate([rows, np.repeat(rows[-1:], n * k - len(rows), axis=0)])
        whole = (self.raster.width // k) * k
        out = np.empty((n, self.vw, 3), np.uint8)
        if whole:
            out[:, : whole // k] = reduce_block(rows[:, :whole], k)
        if whole < self.raster.width:
            rest = rows[:, whole:].reshape(n, k, -1, 3).mean(axis=(1, 2))
            out[:, -1] = np.clip(np.rint(rest), 0, 255).astype(np.uint8)
        return out

    def coverage(self, decoded: np.ndarray, seg_w: int, seg_h: int) -> np.ndarray:
        """Share of each view pixel inside decoded segments (exact, from the segment map): the
        area-weighted box reduction of "which segment holds this raster row / column" (float64)."""
        wy = self._weights(decoded.shape[0], seg_h, self.raster.height, self.vh)
        wx = self._weights(decoded.shape[1], seg_w, self.raster.width, self.vw)
        return np.clip(wy @ decoded.astype(np.float64) @ wx.T, 0, 1).astype(np.float32)

    def _weights(self, n_seg: int, seg: int, length: int, n_view: int) -> np.ndarray:
        """(n_view, n_seg): share of each view pixel's raster pixels (the last view pixel covers
        fewer) that lie in each segment, along one axis."""
        member = np.repeat(np.eye(n_seg, dtype=bool), seg, axis=1)[:, :length]  # segment x raster pixel
        _, sums = box_reduce_axis(member, 1, 0, 0.0, self.scale, n_view, np.float64)  # along axis 1: one reduceat
        covered = np.minimum((np.arange(n_view) + 1) * self.scale, length) - np.arange(n_view) * self.scale
        return np.ascontiguousarray(sums.T) * self.scale / np.maximum(covered, 1)[:, None]

    def view(self, coverage: np.ndarray, background: np.ndarray) -> np.ndarray:
        """The view with never-decoded parts (zeros in the raster) filled with the glass colour."""
        out = self.raw.copy()
        part = coverage < 1  # only there is glass added (fully decoded pixels are the raw view: the usual case)
        if part.any():
            fill = np.asarray(background, np.float32) * (1 - coverage[part][:, None])
            out[part] = np.clip(np.rint(self.raw[part] + fill), 0, 255).astype(np.uint8)
        return out


def _skip_plan(layout: LevelLayout) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Segments not to decode at first (True = skip), from their compressed sizes; None: decode all."""
    from clotclf_core.slides.prescreen import byte_count_prescreen
    from clotclf_core.tiling.grid import grow

    counts = layout.byte_counts
    if counts is None or counts.ndim != 2 or min(counts.shape) < 2:
        return None, {"prescreen": "not used (no per-tile byte counts)"}
    fx = np.clip((layout.width - np.arange(layout.cols) * layout.seg_width) / layout.seg_width, 0, 1)
    fy = np.clip((layout.height - np.arange(layout.rows) * layout.seg_height) / layout.seg_height, 0, 1)
    busy = byte_count_prescreen(counts, np.outer(fy, fx))
    if busy is None:
        return None, {"prescreen": "not used (tile sizes do not split into glass and tissue)"}
    grown = grow(busy)
    lattice = np.zeros_like(busy)
    lattice[::2, ::2] = True  # one in four quiet segments is decoded to check the guess
    skip = ~grown & ~lattice & (counts > 0)
    return skip, {"prescreen": "used", "busy_segments": int(busy.sum())}


def scan_slide(
    slide: Any,
    factor: int,
    view_size: int = 1024,
    method: str = "either",
    prescreen: bool = True,
    background: Any = None,
    threads: int = 1,
    scratch_dir: str | None = None,
    progress: Any = None,
) -> Scan:
    """Decode the slide once at the level that serves 1/``factor`` and build the :class:`Scan`.

    ``background``: the glass colour to use (RGB); default: estimated from the view.
    ``progress``: a tqdm-like bar, advanced once per segment row.
    """
    from clotclf_core.slides.tissue import tissue_mask_recipe

    level, ratio = working_level(slide, factor)
    layout = level_layout(slide, level)
    rh, rw = layout.height // ratio, layout.width // ratio
    raster = Raster(rh, rw, scratch_dir)
    try:
        acc = _View(raster, view_size)
        strips = layout.cols == 1
        skip, stats = (None, {"prescreen": "off"}) if not prescreen else (None, {"prescreen": "not used (strips)"}) if strips else _skip_plan(layout)
        if progress is not None:
            progress.reset(total=layout.rows)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            if strips:  # strips (or one-column layouts): a stream of full-width rows, all decoded
                _scan_rows(layout, ratio, raster, pool, progress)
                decoded = np.ones((1, 1), bool)
                seg_w, seg_h = max(1, rw), max(1, rh)
            else:
                if layout.seg_height % ratio or layout.seg_width % ratio:
                    raise ValueError(f"segments of {layout.seg_width} x {layout.seg_height} px cannot be reduced by {ratio}")
                decoded = np.zeros((layout.rows, layout.cols), bool)
                seg_w, seg_h = layout.seg_width // ratio, layout.seg_height // ratio
                todo = [(r, c) for r in range(layout.rows) for c in range(layout.cols) if skip is None or not skip[r, c]]
                decode_segments(layout, ratio, todo, raster, decoded, pool, progress, per_row=True)
            acc.update()
            bg = None if background is None else np.asarray(background, np.uint8).reshape(3)
            rounds = 0
            while True:
                cov = acc.coverage(decoded, seg_w, seg_h)
                valid = cov >= 0.999
                if bg is None:
                    from clotclf_core.slides.tissue import estimate_background

                    est, how = estimate_background(acc.view(cov, (255, 255, 255)), valid)
                else:
                    est, how = bg, "given"
                view = acc.view(cov, est)
                mask, recipe = tissue_mask_recipe(view, method, background=est, valid=cov > 0)
                if skip is None or decoded.all():
                    break
                more = _neighbours_of_tissue(mask, decoded, acc.scale, seg_w, seg_h, (rw, rh))
                if not more:
                    break
                rounds += 1
                decode_segments(layout, ratio, more, raster, decoded, pool, None, per_row=False)
                for r in sorted({r for r, _ in more}):
                    acc.update(r * seg_h, (r + 1) * seg_h)
        recipe = type(recipe)(recipe.background, how, recipe.method, recipe.thresholds)
        stats.update(
            segments=int(decoded.size), decoded_segments=int(decoded.sum()), flood_rounds=rounds,
            level=level, ratio=ratio, raster=f"{rw} x {rh}", raster_on_disk=raster.on_disk,
        )
        return Scan(raster, ratio * layout.downsample, level, ratio, seg_w, seg_h, decoded, view, acc.scale,
                    cov, mask, recipe, stats, (rw, rh))
    except BaseException:
        raster.close()
        raise


def decode_segments(
    layout: LevelLayout, ratio: int, todo: list[tuple[int, int]], raster: Raster,
    decoded: np.ndarray, pool: ThreadPoolExecutor, progress: Any, per_row: bool,
) -> None:
    """Decode and reduce the segments ``todo`` (row-major) into the raster and the view."""
    sw, sh = layout.seg_width // ratio, layout.seg_height // ratio

    def work(rc: tuple[int, int]) -> tuple[int, int, np.ndarray | None]:
        r, c = rc
        block = layout.read(r, c)
        return r, c, None if block is None else reduce_block(block, ratio)

    by_row: dict[int, list[tuple[int, int]]] = {}
    for r, c in todo:
        by_row.setdefault(r, []).append((r, c))
    band = None
    for r in range(layout.rows) if per_row else sorted(by_row):
        items = by_row.get(r, [])
        y = r * sh
        if per_row and raster.on_disk:
            band_h = min(sh, raster.height - y)
            band = np.zeros((max(0, band_h), raster.width, 3), np.uint8)
        for rr, cc, small in pool.map(work, items):
            decoded[rr, cc] = True
            if small is None or small.size == 0:
                continue
            x = cc * sw
            small = small[: raster.height - y, : raster.width - x]
            if band is not None:
                band[: small.shape[0], x : x + small.shape[1]] = small
            else:
                raster.write(y, x, small)
        if band is not None and band.size:
            raster.write(y, 0, band)
        if progress is not None:
            progress.update()


def bounded_map(pool: ThreadPoolExecutor, fn: Any, items: Iterable[Any], ahead: int | None = None) -> Iterable[Any]:
    """``pool.map`` in order, with at most ``ahead`` results in flight (``Executor.map`` submits
    everything at once: every strip of a slide would be decoded into memory together)."""
    from collections import deque

    ahead = ahead or 2 * max(1, getattr(pool, "_max_workers", 1))
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _scan_rows(layout: LevelLayout, ratio: int, raster: Raster, pool: ThreadPoolExecutor, progress: Any) -> None:
    """One-column layouts (strips): decode each strip once, in order, carrying rows that do not
    fill a multiple of ``ratio`` over to the next strip."""
    carry = np.zeros((0, layout.width, 3), np.uint8)
    y_out = 0
    for r, block in enumerate(bounded_map(pool, lambda i: layout.read(i, 0), range(layout.rows))):
        if block is None:
            block = np.full((min(layout.seg_height, layout.height - r * layout.seg_height), layout.width, 3), 255, np.uint8)
        rows = np.concatenate([carry, block[..., :3]]) if len(carry) else block[..., :3]
        n = (len(rows) // ratio) * ratio
        if n:
            small = reduce_block(rows[:n], ratio)[: raster.height - y_out]
            if len(small):
                raster.write(y_out, 0, small)
                y_out += len(small)
        carry = rows[n:]
        if progress is not None:
            progress.update()


def _neighbours_of_tissue(
    mask: np.ndarray, decoded: np.ndarray, scale: float, seg_w: int, seg_h: int, raster_size: tuple[int, int]
) -> list[tuple[int, int]]:
    """Skipped segments next to (8-neighbourhood) a decoded segment holding tissue in the mask."""
    from clotclf_core.tiling.grid import grow

    rows, cols = decoded.shape
    vh, vw = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return []
    # segment of each tissue pixel of the view (its centre, in raster pixels)
    r = np.clip(((ys + 0.5) * scale // seg_h).astype(np.int64), 0, rows - 1)
    c = np.clip(((xs + 0.5) * scale // seg_w).astype(np.int64), 0, cols - 1)
    holds = np.zeros_like(decoded)
    holds[r, c] = True
    holds &= decoded
    want = grow(holds) & ~decoded
    return [(int(a), int(b)) for a, b in np.argwhere(want)]


def windows(
    scan: Any, ys: Iterable[int], xs_per_row: Iterable[np.ndarray], tile: int, background: np.ndarray
) -> Iterable[tuple[int, int, np.ndarray]]:
    """Cut ``tile``-pixel squares from ``scan.raster`` (a :class:`Scan`, or a
    :class:`clotclf_core.tiling.sparse.WorkingLevel`): for each grid row top ``y`` (raster pixels,
    possibly negative), the squares at its ``xs``; outside the slide and over never-decoded
    segments the pixels are the glass colour. Yields ``(x, y, (tile, tile, 3) uint8)``; the array
    may be a view of a buffer that the next grid row reuses: copy it (the pipeline copies it into
    its batch)."""
    raster = scan.raster
    bg = np.asarray(background, np.uint8).reshape(1, 1, 3)
    skipped = ~scan.decoded
    rows, cols = skipped.shape
    sh, sw = scan.seg_height, scan.seg_width
    for y, xs in zip(ys, xs_per_row):
        band = raster.rows(y, y + tile)
        top = max(0, y) - y  # band row 0 is window row `top`
        r0, r1 = max(0, y // sh), min(rows - 1, max(0, (y + tile - 1) // sh))
        gaps = skipped[r0 : r1 + 1].any(axis=0) if skipped.any() else None
        for x in xs:
            x = int(x)
            x0, x1 = max(0, x), min(raster.width, x + tile)
            c0, c1 = max(0, x // sw), min(cols - 1, max(0, (x + tile - 1) // sw))
            holes = gaps is not None and bool(gaps[c0 : c1 + 1].any())
            if len(band) == tile and x0 == x and x1 == x + tile and not holes:
                yield x, y, band[:, x0:x1]  # inside the slide, all decoded: a view (copy it before the next row)
                continue
            win = glass((tile, tile, 3), background)
            if x1 > x0 and len(band):
                win[top : top + len(band), x0 - x : x1 - x] = band[:, x0:x1]
            if holes:
                for rr in range(r0, r1 + 1):
                    for cc in range(c0, c1 + 1):
                        if skipped[rr, cc]:
                            ya, yb = rr * sh - y, (rr + 1) * sh - y
                            xa, xb = cc * sw - x, (cc + 1) * sw - x
                            win[max(0, ya) : max(0, yb), max(0, xa) : max(0, xb)] = bg
            yield x, y, win
