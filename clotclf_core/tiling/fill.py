"""The tiles of a coordinates-only TileSet (``clotclf tile --coords-only``), read from its slides.

Such a TileSet has the grid, the mask, the scores and the QC pictures, but no pixel cache: whoever
needs pixels (``clotclf embed``, ``clotclf predict``, :class:`clotclf_core.tiling.dataset.TileDataset`)
reads them here (:class:`SlideBatches` reads cached and coordinates-only TileSets alike), from the
slide file the TileSet recorded (or the same file name in another folder:
``slides_dir``), checked against the fingerprint recorded when it was tiled.

:class:`SlideTiles` reads a slide's tiles as tiling would have cut them: the working level's segments
under the tiles decoded once (:class:`clotclf_core.tiling.sparse.WorkingLevel`), the tiles cut at the
working resolution, resized to the TileSet's tile size when they differ, the slide's glass colour past
its edge. Memory is the segments held: with rows read in order (what :func:`slide_batches` does) a
band of them; in any order, at most ``max_bytes`` (least recently used go first).

A tile read here is the one a run without ``--coords-only`` would have cached, with one exception:
where that run skipped decoding glass (the ``tifffile`` byte-count prescreen) and painted it with
the glass colour, the pixels read here are the glass itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from clotclf_core.tiling.tileset import TileSet, TileSetError

#: how much of the working level one reader may hold, in any reading order
MAX_HELD_BYTES = 256 * 2**20


def slide_path(ts: TileSet, image_id: str, slides_dir: str | Path | None = None) -> Path:
    """Where slide ``image_id`` of ``ts`` is: ``slides_dir`` / its file name when given, else the path
    the TileSet recorded. One :class:`TileSetError` naming the file and the fix when it is not there."""
    rec = ts.slides.get(image_id) or {}
    slides_dir = slides_dir if slides_dir is not None else ts.slides_dir
    if slides_dir is not None:
        path = Path(slides_dir) / str(rec.get("file") or "")
    elif rec.get("path"):
        path = Path(rec["path"])
    else:
        raise TileSetError(f"TileSet '{ts.root}' does not record where slide '{image_id}' is (not tiled with --coords-only?)")
    if not rec.get("file") or not path.is_file():
        raise TileSetError(
            f"slide '{image_id}' of the coordinates-only TileSet '{ts.root}' is not at '{path}'; its pixels are read from the "
            "slide: give the folder that holds the slide files (--slides DIR)")
    return path


class SlideTiles:
    """The tiles of one slide of a coordinates-only TileSet, read from the slide (see the module docstring)."""

    def __init__(self, ts: TileSet, image_id: str, slides_dir: str | Path | None = None, threads: int = 1,
                 max_bytes: int = MAX_HELD_BYTES):
        from clotclf_core.plugin.errors import ClotclfError
        from clotclf_core.slides.open import open_slide
        from clotclf_core.tiling.execution import file_fingerprint
        from clotclf_core.tiling.pipeline import geometry
        from clotclf_core.tiling.settings import TileSettings
        from clotclf_core.tiling.sparse import WorkingLevel

        rec = ts.slides[image_id]
        path = slide_path(ts, image_id, slides_dir)
        recorded = rec.get("fingerprint")
        if recorded and file_fingerprint(path) != recorded:
            raise TileSetError(
                f"slide file '{path}' is not the one slide '{image_id}' of '{ts.root}' was tiled from (size / content "
                f"fingerprint {file_fingerprint(path)}, recorded {recorded}); re-tile it (`clotclf tile` again), or give "
                "the folder of the original slides (--slides DIR)")
        source = rec.get("source")
        try:
            self.slide = open_slide(str(path), source=source) if source else open_slide(str(path))
        except ClotclfError as exc:
            raise TileSetError(f"slide '{image_id}' of '{ts.root}': {exc}") from None
        try:
            settings = TileSettings.from_recorded(ts.settings)
            geo = geometry(self.slide, settings)
            self.work = WorkingLevel(self.slide, geo["factor"], threads, max_bytes)
        except BaseException:
            self.slide.close()
            raise
        self.image_id = image_id
        self.tile = int(geo["tile"])
        self.size = int(ts.tile_size)
        self.background = np.asarray((rec.get("mask") or {}).get("background") or (255, 255, 255), np.uint8)

    def read(self, xy: np.ndarray, in_order: bool = True) -> np.ndarray:
        """uint8 (n, S, S, 3) tiles whose top-left corners are ``xy`` (n, 2) in level-0 px (the index's x, y).
        ``in_order``: the caller goes down the slide (rows in order), so the segments above these tiles
        are let go."""
        from clotclf_core.tiling.pipeline import _resize

        f = self.work.factor
        corners = [(int(round(x / f)), int(round(y / f))) for x, y in np.asarray(xy, np.float64).reshape(-1, 2)]
        self.work.ensure((x, y, self.tile) for x, y in corners)
        tiles = np.empty((len(corners), self.tile, self.tile, 3), np.uint8)
        for i, (x, y) in enumerate(corners):
            tiles[i] = self.work.window(x, y, self.tile, self.background)
        if corners and in_order:
            self.work.release_above(min(y for _, y in corners))
        return _resize(tiles, self.size) if self.tile != self.size and len(tiles) else tiles.reshape(-1, self.size, self.size, 3)

    def close(self) -> None:
        self.work.close()
        self.slide.close()

    def __enter__(self) -> "SlideTiles":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def slide_batches(ts: TileSet, image_id: str, batch_size: int, slides_dir: str | Path | None = None,
                  threads: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, uint8 (b, S, S, 3))`` for the kept tiles of one slide, in ``row`` order, ``batch_size`` at a time."""
    rows = ts.index[ts.index["image_id"] == image_id].sort_values("row")
    xy = rows[["x", "y"]].to_numpy()
    with SlideTiles(ts, image_id, slides_dir, threads) as tiles:
        for start in range(0, len(xy), batch_size):
            yield start, tiles.read(xy[start : start + batch_size])


class SlideBatches:
    """One slide's kept tiles of any TileSet — from its pixel cache, or read from the slide when it was
    tiled with ``--coords-only`` — ``(start, uint8 (b, S, S, 3))`` batch by batch in ``row`` order;
    with ``stain`` (a :class:`~clotclf_core.tiling.stain.StainTarget`), normalised with the slide's
    own estimate, fitted on its sampled tiles first. After iterating, ``unfitted`` says whether the
    slide had too little stain to estimate (its tiles then passed unchanged). The one reader of a
    slide's tiles for ``clotclf embed``, in process and in its workers."""

    def __init__(self, ts: TileSet, image_id: str, batch_size: int, stain: Any = None):
        self.ts, self.image_id, self.batch_size, self.stain = ts, image_id, int(batch_size), stain
        self.unfitted = False

    def __len__(self) -> int:
        """The slide's kept tiles."""
        return int((self.ts.index["image_id"] == self.image_id).sum())

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.ts.coords_only:
            xy = self.ts.index[self.ts.index["image_id"] == self.image_id].sort_values("row")[["x", "y"]].to_numpy()
            with SlideTiles(self.ts, self.image_id, self.ts.slides_dir) as tiles:
                yield from self._batches(len(xy), lambda a, b: tiles.read(xy[a:b]), lambda rows: tiles.read(xy[rows]))
        else:
            pixels = self.ts.pixels(self.image_id)
            yield from self._batches(len(pixels), lambda a, b: np.array(pixels[a:b]), lambda rows: np.asarray(pixels[rows]))

    def _batches(self, n: int, read: Any, sample: Any) -> Iterator[tuple[int, np.ndarray]]:
        norm = None
        if self.stain is not None:
            from clotclf_core.tiling.stain import SlideNormaliser, sample_rows

            norm = SlideNormaliser.fit(self.stain, sample(sample_rows(n)))
            self.unfitted = not norm.fitted
        for start in range(0, n, self.batch_size):
            tiles = read(start, start + self.batch_size)
            yield start, (norm(tiles) if norm is not None else tiles)


class SlideTileCache:
    """Open :class:`SlideTiles` of a coordinates-only TileSet, the ``keep`` most recently used, for
    readers that jump between slides (a training epoch, a DataLoader worker). Nothing is open
    after pickling (each worker opens its own)."""

    def __init__(self, ts: TileSet, slides_dir: str | Path | None = None, keep: int = 2):
        self.ts, self.slides_dir, self.keep = ts, slides_dir, keep
        self._open: dict[str, SlideTiles] = {}
        self._pid = os.getpid()

    def tile(self, image_id: str, x: float, y: float) -> np.ndarray:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the parent's open files are not ours to share
            self._open, self._pid = {}, os.getpid()
        reader = self._open.pop(image_id, None)
        if reader is None:
            reader = SlideTiles(self.ts, image_id, self.slides_dir)
        self._open[image_id] = reader  # most recent last
        while len(self._open) > self.keep:
            self._open.pop(next(iter(self._open))).close()
        return reader.read(np.array([[x, y]]), in_order=False)[0]

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open = {}

    def __del__(self) -> None:  # a dataset dropped without close(): its slides' files are closed, not leaked
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}
