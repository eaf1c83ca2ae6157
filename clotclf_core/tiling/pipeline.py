"""One slide -> its tiles: read once, mask, grid, cut, filter, keep — streamed into a sink.

1. :func:`clotclf_core.tiling.reading.scan_slide` decodes the slide once at the working resolution
   and makes the low-resolution view, the glass colour and the tissue mask;
2. the grid (:mod:`clotclf_core.tiling.grid`) covers the slide; *candidates* are cells with at least
   ``min_tissue`` of their area in the mask;
3. candidates are cut from the raster grid row by grid row, resized to ``train_size`` when the tile
   is another size, and scored by the filters in batches; the survivors stream into the sink (the
   TileSet's pixel file, or memory for :func:`tile_slide`) as they are made, so memory does not grow
   with the number of kept tiles;
4. with ``max_tiles``, the sink keeps the best ``max_tiles`` (see :func:`grid.rank_tiles`).

Every candidate gets an index row: kept tiles with their ``row`` in the pixel file, rejected ones
with ``row = -1`` and the filter (or ``max_tiles``) that dropped them.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Iterable, Iterator, Protocol

import numpy as np

from clotclf_core.tiling.filters import BuiltFilter, check_coords_only, run_filters
from clotclf_core.tiling.grid import Grid, candidates, cell_fractions, plan_grid, rank_tiles, working_factor
from clotclf_core.tiling.levels import level_problems, mask_level, raster_shape, working_level
from clotclf_core.tiling.reading import Scan, scan_slide, windows
from clotclf_core.tiling.settings import MAX_BATCH_BYTES, MIN_SLIDE_SIDE, SlideSkip, TileSettings
from clotclf_core.tiling.sparse import WorkingLevel, survey
from clotclf_core.tiling.views import view_window_batches


class TileSink(Protocol):
    """Where kept tiles go, as they are made."""

    def add(self, pixels: np.ndarray) -> None: ...

    def finish(self, keep: np.ndarray | None) -> int:
        """Done adding; keep only tiles ``keep`` (indices, in that order) when given. Returns the count."""


class MemorySink:
    """Kept tiles in a list of batches (for :func:`tile_slide`, which returns them)."""

    def __init__(self, size: int):
        self.parts: list[np.ndarray] = []
        self.pixels = np.zeros((0, size, size, 3), np.uint8)

    def add(self, pixels: np.ndarray) -> None:
        self.parts.append(np.array(pixels, copy=True))

    def finish(self, keep: np.ndarray | None) -> int:
        if self.parts:
            self.pixels = np.concatenate(self.parts)
        if keep is not None:
            self.pixels = self.pixels[keep]
        self.parts = []
        return len(self.pixels)


@dataclass
class SlideResult:
    """What tiling one slide produced: the index rows of every candidate, facts about the slide,
    and what the QC picture needs."""

    status: str
    reason: str
    info: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    view: np.ndarray | None = None
    view_decoded: np.ndarray | None = None
    mask: np.ndarray | None = None
    #: per candidate: (x, y, side) in level-0 px and -1 kept / filter index / len(filters) for max_tiles
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def _resize(tiles: np.ndarray, size: int) -> np.ndarray:
    import cv2

    side = tiles.shape[1]
    how = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(t, (size, size), interpolation=how) for t in tiles])


def darkness(tiles: np.ndarray, background: np.ndarray) -> np.ndarray:
    """1 - mean grey of each tile / grey of the glass, clipped to 0..1 (0: as bright as glass).

    A channel's mean is ``cv2.mean``'s (the exact integer sum times 1 / pixels), tile by tile; for
    tiles of up to 400 pixels (a low-resolution view's windows, ``--coords-only``) the sums of the
    whole batch come from one ``cv2.reduce`` instead, the same floats (tested): ``cv2.mean`` costs
    ~1 us a call whatever the tile's size (4x the reduce on 14-px windows), the reduce 10x
    ``cv2.mean`` on 224-px tiles."""
    import cv2

    n, pixels = len(tiles), int(np.prod(tiles.shape[1:3]))
    if n == 0 or pixels == 0:
        return np.zeros(n, np.float64)
    if pixels <= 400:
        flat = np.ascontiguousarray(tiles[..., :3]).reshape(n, pixels, 3)
        means = cv2.reduce(flat, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).reshape(n, 3) * (1.0 / pixels)
        grey = (means[:, 0] + means[:, 1] + means[:, 2]) / 3.0
    else:
        grey = np.array([sum(cv2.mean(t)[:3]) / 3.0 for t in tiles], np.float64)
    glass = max(float(np.mean(background)), 1.0)
    return np.clip(1.0 - grey / glass, 0.0, 1.0)


def geometry(slide: Any, settings: TileSettings) -> dict[str, Any]:
    """The slide's geometry at these settings, checked before any pixel is read."""
    width, height = (int(v) for v in slide.dimensions)
    if width < MIN_SLIDE_SIDE or height < MIN_SLIDE_SIDE:
        raise SlideSkip("failed", f"the slide is {width} x {height} px, smaller than {MIN_SLIDE_SIDE} px a side: not a slide to tile")
    from clotclf_core.plugin.regions import checked_mpp

    mpp, note = checked_mpp(getattr(slide, "mpp", None))  # the same range for every source, third-party ones too
    if note and not getattr(slide, "mpp_note", ""):
        try:
            slide.mpp_note = note
        except AttributeError:
            pass
    size0, stride0 = settings.level0_geometry(mpp)
    factor = working_factor(size0, settings.train_size)
    rh, rw = raster_shape(slide, factor)
    tile = max(1, round(size0 / factor))
    stride = max(1, round(stride0 / factor))
    batch_bytes = settings.batch_size * tile * tile * 3
    if batch_bytes > MAX_BATCH_BYTES:
        raise SlideSkip(
            "failed",
            f"a tile would be {round(size0):,} level-0 px a side ({tile:,} px at the 1/{factor} working resolution; the slide is "
            f"{width:,} x {height:,} px), so a batch of {settings.batch_size} tiles needs {batch_bytes / 2**30:.1f} GiB (more than "
            f"{MAX_BATCH_BYTES / 2**30:.1f}); use a smaller --tile-size / --tile-um or --downsample, or a smaller --batch-size",
        )
    grid = plan_grid(rw, rh, tile, stride, settings.edges)
    return {"width": width, "height": height, "mpp": mpp, "factor": factor, "tile": tile, "stride": stride,
            "grid": grid, "raster": (rw, rh)}


def read_slide(slide: Any, settings: TileSettings, geo: dict[str, Any], threads: int = 1, scratch_dir: str | None = None,
               progress: Any = None) -> Scan:
    """The slide's view, glass colour and tissue mask (and, for a scan, its working raster): from a
    low pyramid level or the stored thumbnail (:func:`clotclf_core.tiling.sparse.survey`: then only
    the tiles that need pixels are decoded), else by scanning the working level whole
    (:func:`clotclf_core.tiling.reading.scan_slide`). ``settings.mask_from`` chooses."""
    bg = (255, 255, 255) if settings.background == "white" else None
    factor = geo["factor"]
    if settings.mask_from == "thumbnail":
        return survey(slide, factor, "thumbnail", None, settings.thumbnail_size, settings.tissue_method, bg, threads)
    if settings.mask_from == "auto":
        low = mask_level(slide, working_level(slide, factor)[0], settings.thumbnail_size)
        if low is not None:
            return survey(slide, factor, "level", low, settings.thumbnail_size, settings.tissue_method, bg, threads)
    return scan_slide(slide, factor, settings.thumbnail_size, settings.tissue_method, settings.prescreen, bg, threads,
                      scratch_dir, progress)


def levels_note(slide: Any, level: int) -> str:
    """What tiling says about pyramid levels it would not read (their size or aspect disagree with level 0)."""
    bad = level_problems(slide)
    if not bad:
        return ""
    return ("; ".join(bad.values()) + f": {'that level does' if len(bad) == 1 else 'those levels do'} not match level 0, "
            f"so tiling did not use {'it' if len(bad) == 1 else 'them'} (it read level {level})")


_BLAS: Any = None  # see blas_controller


def blas_controller() -> Any:
    """threadpoolctl's view of the BLAS libraries loaded, made once per process (~15 ms: it lists
    the loaded libraries, like an import)."""
    global _BLAS
    from threadpoolctl import ThreadpoolController

    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS


@contextlib.contextmanager
def compute_threads(threads: int) -> Iterator[None]:
    """A context keeping BLAS (numpy's OpenBLAS) and OpenCV to ``threads`` threads each, as they were
    after. Tiling's few small matrix products and per-view OpenCV calls gain nothing from more, and
    waiting threads spin: on a 2-core machine OpenBLAS's doubled the CPU time of tiling a 4,420-px
    slide (0.10 against 0.05 CPU-s, benchmarks/peers.py), and OpenCV's two threads took 1.5-2.5x the
    CPU time of one on a 587 x 359 view's connected components and channel extremes. The BLAS
    libraries are those loaded when :func:`blas_controller` first ran in the process (numpy's, which
    tiling uses). OpenCV's count is set only when it changes: each change costs its next calls ~2 ms."""
    import cv2

    n = max(1, int(threads))
    before = cv2.getNumThreads()
    want = min(n, before) if before > 0 else n
    with blas_controller().limit(limits=n, user_api="blas"):
        if want != before:
            cv2.setNumThreads(want)
        try:
            yield
        finally:
            if want != before:
                cv2.setNumThreads(before)


def tile_one(
    slide: Any, settings: TileSettings, filters: list[BuiltFilter], sink: TileSink | None, threads: int = 1,
    scratch_dir: str | None = None, progress: Any = None,
) -> SlideResult:
    """Tile one open slide into ``sink`` (None with ``settings.coords_only``: nothing is cut). Raises
    :class:`SlideSkip` for a slide that cannot be tiled (too small, no usable mpp for ``tile_um``, a
    grid too large, an absent or damaged stored thumbnail with ``mask_from: thumbnail``); a slide
    without tissue is a result with status ``no_tissue``. BLAS and OpenCV run on ``threads`` threads
    meanwhile (:func:`compute_threads`)."""
    with compute_threads(threads):
        return _tile_one(slide, settings, filters, sink, threads, scratch_dir, progress)


def _tile_one(slide: Any, settings: TileSettings, filters: list[BuiltFilter], sink: TileSink | None, threads: int,
              scratch_dir: str | None, progress: Any) -> SlideResult:
    start = time.perf_counter()
    check_coords_only(filters, settings.coords_only)
    geo = geometry(slide, settings)
    info: dict[str, Any] = {"width": geo["width"], "height": geo["height"], "mpp": geo["mpp"]}
    if getattr(slide, "mpp_note", ""):
        info["mpp_note"] = slide.mpp_note
    scan = read_slide(slide, settings, geo, threads, scratch_dir, progress)
    try:
        note = levels_note(slide, scan.level)
        if note:
            info["levels_note"] = note
        if settings.coords_only:
            info["coords_only"] = True
        return _tile_scanned(scan, settings, filters, sink, geo, info, start, lambda: WorkingLevel(slide, geo["factor"], threads))
    finally:
        scan.close()


def _mask_from(scan: Scan) -> str:
    if scan.raster is not None:
        return f"scan of level {scan.level} at 1/{scan.ratio}" + (
            f", {scan.stats['decoded_segments']} of {scan.stats['segments']} TIFF tiles decoded (byte-count prescreen)"
            if scan.stats.get("prescreen") == "used" else "")
    text = scan.stats["mask_from"]
    if scan.work is not None:
        text += (f"; then {int(scan.work.decoded.sum())} of {scan.work.decoded.size} segments of level {scan.level} decoded "
                 f"at 1/{scan.ratio} (those under the candidate tiles)")
    return text


def _tile_scanned(scan: Scan, settings: TileSettings, filters: list[BuiltFilter], sink: TileSink | None, geo: dict[str, Any],
                  info: dict[str, Any], start: float, open_work: Any) -> SlideResult:
    grid: Grid = geo["grid"]
    f = scan.factor  # level-0 px per raster px
    S = settings.train_size
    bg = np.asarray(scan.recipe.background, np.uint8)
    side0 = int(round(grid.tile * f))
    px = side0 / S
    info.update(
        level0_px_per_pixel=round(px, 4), um_per_pixel=round(px * geo["mpp"], 4) if geo["mpp"] else None,
        tile_size_level0=side0, stride_level0=int(round(grid.stride * f)),
        grid={"cols": grid.cols, "rows": grid.rows, "x0": int(round(grid.x0 * f)), "y0": int(round(grid.y0 * f))},
        mask_from=None, mask=scan.recipe.describe(), decoding=None,  # (in this order in tileset.json; set below)
        # what one pixel of masks/<image_id>.png covers (the view is view_scales() raster pixels a pixel)
        mask_level0_px_per_pixel=round(f * float(np.mean(scan.view_scales())), 4),
    )
    info["decoded_fraction"] = None
    info["tissue_fraction"] = round(float(scan.mask.mean()), 4)
    frac = cell_fractions(scan.mask, grid, geo["raster"])
    cells = candidates(frac, settings.min_tissue)
    info["n_candidates"] = int(len(cells))
    result = SlideResult("done", "", info, view=scan.view, view_decoded=scan.view_decoded, mask=scan.mask)
    rejected = {fl.name: 0 for fl in filters}
    info["rejected"] = rejected
    empty = "the tissue mask is empty (blank or unreadable image?)" if not scan.mask.any() else (
        f"no tile has at least {settings.min_tissue:.0%} of its area in the tissue mask" if len(cells) == 0 else "")
    if empty and len(cells) == 0 and scan.mask.any() and min(geo["width"], geo["height"]) < side0:
        empty += (f": the slide, {geo['width']:,} x {geo['height']:,} px, is smaller than one tile ({side0:,} level-0 px a "
                  "side at these settings), so its tissue covers little of any tile; use a smaller --tile-size / --tile-um "
                  "or --downsample, or a lower --min-tissue")

    xs, ys = grid.xs(), grid.ys()
    corners = np.stack([xs[cells[:, 1]], ys[cells[:, 0]]], axis=1)  # (cells are row-major, as the windows come)
    tissue = frac[cells[:, 0], cells[:, 1]].tolist()
    if settings.coords_only:  # scores from the low-resolution view: no pixel of the working level is needed
        side = max(8, round(grid.tile / float(np.mean(scan.view_scales()))))
        info["scores_from"] = f"the low-resolution view ({side} px a tile)"
    if empty:
        _describe_reading(scan, info)
        return _no_tissue(result, sink, empty, start)

    kept_rank: list[tuple[float, float]] = []
    rows: list[dict[str, Any]] = []
    px4 = round(px, 4)

    def flush(batch: np.ndarray, pending: list[tuple[int, int, float]]) -> None:
        if grid.tile != S and not settings.coords_only:
            batch = _resize(batch, S)
        alive, scores, by = run_filters(filters, batch, bg)
        dark = darkness(batch, bg).tolist()  # (Python floats: one conversion a batch, not one a tile)
        xs_, ys_, frs = zip(*pending)
        # level-0 corners: round(x * f) as Python rounds it (to even), in numpy; the rest column by column
        x0, y0 = (np.rint(np.asarray(v, np.float64) * f).astype(np.int64).tolist() for v in (xs_, ys_))
        kept = alive.tolist()
        number = np.where(alive, np.cumsum(alive) - 1 + len(kept_rank), -1).tolist()
        why = ["" if ok else filters[b].name for ok, b in zip(kept, by.tolist())]
        kept_rank.extend((fr, d) for fr, d, ok in zip(frs, dark, kept) if ok)
        for name in why:
            if name:
                rejected[name] += 1
        keys = ("x", "y", "size", "downsample", "level0_px_per_pixel", "tissue", "darkness",
                *(f"score_{name}" for name in scores), "row", "kept", "rejected_by")
        columns = [[round(v, 4) for v in values.tolist()] for values in scores.values()]
        rows.extend(dict(zip(keys, values)) for values in zip(
            x0, y0, repeat(side0), repeat(settings.downsample), repeat(px4), [round(v, 4) for v in frs],
            [round(v, 4) for v in dark], *columns, number, kept, why))
        if alive.any() and sink is not None and not settings.coords_only:
            sink.add(batch if alive.all() else batch[alive])

    B = settings.batch_size
    if settings.coords_only:
        xy = corners.tolist()
        for a, batch in view_window_batches(scan, corners, grid.tile, side, bg, B):
            flush(batch, [(x, y, fr) for (x, y), fr in zip(xy[a : a + len(batch)], tissue[a : a + len(batch)])])
    else:
        by_row: dict[int, list[int]] = {}
        for r, c in cells.tolist():
            by_row.setdefault(r, []).append(c)
        row_ids = sorted(by_row)
        if scan.raster is None:  # a survey: decode the working level under the candidates only, row by row
            scan.work = open_work()
            cuts = work_windows(scan.work, [int(ys[r]) for r in row_ids], [xs[by_row[r]] for r in row_ids], grid.tile, bg)
        else:
            cuts = windows(scan, [int(ys[r]) for r in row_ids], [xs[by_row[r]] for r in row_ids], grid.tile, bg)
        buf = np.empty((B, grid.tile, grid.tile, 3), np.uint8)  # reused: no fresh pages per batch
        pending: list[tuple[int, int, float]] = []
        for fr, (x, y, win) in zip(tissue, cuts):
            buf[len(pending)] = win
            pending.append((x, y, fr))
            if len(pending) >= B:
                flush(buf[:B], pending)
                pending = []
        if pending:
            flush(buf[: len(pending)], pending)
    _describe_reading(scan, info)  # after the cutting: how much of the working level a survey decoded

    keep = None
    n_kept = len(kept_rank)
    if settings.max_tiles is not None and n_kept > settings.max_tiles:
        t = np.array([k[0] for k in kept_rank]), np.array([k[1] for k in kept_rank])
        best = np.sort(rank_tiles(t[0], t[1], settings.max_tiles_by)[: settings.max_tiles])
        keep = best
        new_row = {int(old): i for i, old in enumerate(best)}
        for row in rows:
            if row["kept"]:
                if row["row"] in new_row:
                    row["row"] = new_row[row["row"]]
                else:
                    row.update(row=-1, kept=False, rejected_by="max_tiles")
        info["rejected_by_max_tiles"] = n_kept - settings.max_tiles
    n = sink.finish(keep) if sink is not None and not settings.coords_only else sum(1 for row in rows if row["kept"])
    info["n_kept"] = n
    result.rows = rows
    names = [fl.name for fl in filters]
    result.boxes = [(r["x"], r["y"], r["size"], -1 if r["kept"] else (names.index(r["rejected_by"]) if r["rejected_by"] in names else len(names)))
                    for r in rows]
    info["seconds"] = round(time.perf_counter() - start, 3)
    if n == 0:
        result.status = "no_tissue"
        result.reason = f"all {len(rows)} candidate tiles were rejected by the filters (" + ", ".join(f"{k}: {v}" for k, v in rejected.items()) + ")"
    return result


def _describe_reading(scan: Scan, info: dict[str, Any]) -> None:
    info["mask_from"] = _mask_from(scan)
    info["decoding"] = {**scan.stats, **(scan.work.stats() if scan.work is not None else {})}
    info["decoded_fraction"] = round(float(scan.view_decoded.mean()), 4) if scan.raster is not None else (
        round(float(scan.work.decoded.mean()), 4) if scan.work is not None else 0.0)


def work_windows(work: WorkingLevel, ys: list[int], xs_per_row: list[np.ndarray], tile: int,
                 background: np.ndarray) -> Iterable[tuple[int, int, np.ndarray]]:
    """:func:`clotclf_core.tiling.reading.windows` for a survey: each grid row's segments decoded
    just before its tiles are cut, the segments above the next grid row let go."""
    for i, (y, xs) in enumerate(zip(ys, xs_per_row)):
        work.ensure((int(x), y, tile) for x in xs)
        for x in xs:
            yield int(x), y, work.window(int(x), y, tile, background)
        work.release_above(ys[i + 1] if i + 1 < len(ys) else y + tile)


def _no_tissue(result: SlideResult, sink: TileSink | None, reason: str, start: float) -> SlideResult:
    if sink is not None:
        sink.finish(None)
    result.status, result.reason = "no_tissue", reason
    result.info["n_kept"] = 0
    result.info["seconds"] = round(time.perf_counter() - start, 3)
    return result
