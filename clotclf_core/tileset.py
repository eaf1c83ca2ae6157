"""The TileSet: what tiling writes and training reads (format in docs/data-formats.md).

A TileSet is a folder::

    tileset.json          format name + version, the settings that produced it, per-slide status
    tiles.csv             the tile index: one row per kept tile
    pixels/<image_id>.npy uint8 (n_tiles, S, S, 3) RGB at training resolution S, memory-mappable
    qc/<image_id>.png     QC picture per slide

``tiles.csv`` columns: ``image_id, patient_id, center_id, label, row, x, y, size, downsample``
then one ``score_<filter>`` column per filter. ``row`` is the tile's index in
``pixels/<image_id>.npy``; ``x, y, size`` are the tile's top-left corner and side in level-0
pixels; ``downsample`` is level-0 pixels per pixel of the view the tile was cut from.

Every file is written atomically; a slide's pixels and index rows are committed together with
its status in ``tileset.json``, so an interrupted run leaves only finished slides behind and
re-running resumes after them. A resumed run also brings the finished slides up to date with the
current manifest (:meth:`TileSetWriter.sync`: new labels / patients, slides no longer listed
dropped) and tiles again any slide whose pixel file is missing or broken.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import __version__
from .errors import ClotclfError
from .io import atomic_path, write_json, write_text

FORMAT = "clotclf-tileset"
FORMAT_VERSION = 1
INDEX_COLUMNS = ["image_id", "patient_id", "center_id", "label", "row", "x", "y", "size", "downsample"]
#: the index columns that come from the manifest (rewritten when it changes, no pixel work)
MANIFEST_COLUMNS = ("patient_id", "center_id", "label")


class TileSetError(ClotclfError):
    pass


def _read_meta(root: Path) -> dict[str, Any]:
    meta_path = root / "tileset.json"
    if not meta_path.is_file():
        raise TileSetError(f"'{root}' is not a TileSet (no tileset.json); make one with `clotclf tile SLIDES --out {root}`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TileSetError(f"'{meta_path}' is not valid JSON ({exc}); re-run `clotclf tile` with --overwrite") from None
    if meta.get("format") != FORMAT:
        raise TileSetError(f"'{meta_path}' is not a clotclf TileSet description (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise TileSetError(
            f"TileSet '{root}' has format version {meta.get('format_version')}, this clotclf reads version "
            f"{FORMAT_VERSION}; re-tile the slides with this version (`clotclf tile ... --overwrite`)"
        )
    return meta


def pixel_file_problem(path: Path, n_tiles: int, tile_pixels: int) -> str | None:
    """Why ``path`` cannot be a slide's pixel file of ``n_tiles`` tiles (``None`` when it can).

    Reads the .npy header and maps the file (no pixel is read), so a missing, truncated or
    mis-shaped file is found when the TileSet is opened, not as a traceback in a loader worker.
    """
    if not path.is_file():
        return "missing"
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # truncated data: "mmap length is greater than file size"
        return f"truncated or unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    if not isinstance(arr, np.ndarray):  # e.g. an .npz archive under a .npy name
        getattr(arr, "close", lambda: None)()
        return "not a .npy array"
    shape, dtype = arr.shape, arr.dtype
    del arr
    want = (int(n_tiles), tile_pixels, tile_pixels, 3)
    if dtype != np.uint8 or shape != want:
        return f"holds {dtype} {tuple(shape)} instead of uint8 {want}"
    return None


def _slide_problem(root: Path, image_id: str, n_tiles: int, tile_pixels: int, n_rows: int, max_row: int) -> str | None:
    """Why a done slide's pixel file and its ``n_rows`` index rows (highest ``row`` ``max_row``) disagree."""
    problem = pixel_file_problem(root / "pixels" / f"{image_id}.npy", n_tiles, tile_pixels)
    if problem is None and n_rows != n_tiles:
        problem = f"holds {n_tiles} tiles but tiles.csv lists {n_rows}"
    elif problem is None and n_rows and not 0 <= max_row < n_tiles:
        problem = f"holds {n_tiles} tiles but tiles.csv refers to tile {max_row}"
    return problem


def _fix_hint(root: Path) -> str:
    return f"re-run `clotclf tile SLIDES --out {root} ...` (it tiles such slides again) or re-tile with `--overwrite`"


class TileSet:
    """Read access to a TileSet folder. ``index`` is a pandas DataFrame of ``tiles.csv``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise TileSetError(f"TileSet folder '{self.root}' does not exist; make one with `clotclf tile`")
        self.meta = _read_meta(self.root)
        import pandas as pd

        index_path = self.root / "tiles.csv"
        if not index_path.is_file():
            raise TileSetError(f"TileSet '{self.root}' has no tiles.csv; tiling did not finish any slide")
        self.index = pd.read_csv(
            index_path, dtype={"image_id": str, "patient_id": str, "center_id": str, "label": str}, keep_default_na=False
        )
        missing = [c for c in INDEX_COLUMNS if c not in self.index.columns]
        if missing:
            raise TileSetError(f"'{index_path}' lacks columns {missing}; re-tile with this clotclf version")
        done = {k for k, v in self.slides.items() if v.get("status") == "done"}
        # rows of a slide whose commit was interrupted are not part of the TileSet
        self.index = self.index[self.index["image_id"].isin(done)].reset_index(drop=True)
        self._arrays: dict[str, np.ndarray] = {}
        self._check_pixel_files(sorted(done))

    def _check_pixel_files(self, done: list[str]) -> None:
        """Every done slide's pixel file holds exactly its index rows' tiles (else one TileSetError)."""
        by_slide = self.index.groupby("image_id")["row"]
        n_rows, max_row = by_slide.size().to_dict(), by_slide.max().to_dict()
        problems = []
        for image_id in done:
            rows = int(n_rows.get(image_id, 0))
            n = int(self.slides[image_id].get("n_tiles", rows))
            problem = _slide_problem(self.root, image_id, n, self.tile_size, rows, int(max_row.get(image_id, -1)))
            if problem:
                problems.append(f"{self.root / 'pixels' / image_id}.npy: {problem}")
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise TileSetError(
                f"TileSet '{self.root}' has {len(problems)} broken pixel file(s): {'; '.join(problems[:3])}{more}; "
                + _fix_hint(self.root)
            )

    @property
    def settings(self) -> dict[str, Any]:
        return self.meta.get("settings", {})

    @property
    def tile_size(self) -> int:
        """Side in pixels of the cached tiles (the training resolution)."""
        return int(self.meta["tile_pixels"])

    @property
    def slides(self) -> dict[str, dict[str, Any]]:
        return self.meta.get("slides", {})

    def pixels(self, image_id: str) -> np.ndarray:
        """The memory-mapped uint8 (n, S, S, 3) array of one slide's kept tiles."""
        arr = self._arrays.get(image_id)
        if arr is None:
            path = self.root / "pixels" / f"{image_id}.npy"
            if not path.is_file():
                raise TileSetError(f"TileSet '{self.root}' lacks {path}; " + _fix_hint(self.root))
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise TileSetError(
                    f"TileSet '{self.root}': {path} is truncated or unreadable ({type(exc).__name__}: {exc}); " + _fix_hint(self.root)
                ) from None
            self._arrays[image_id] = arr
        return arr

    def tile(self, i: int) -> np.ndarray:
        """Pixels of row ``i`` of the index, (S, S, 3) uint8."""
        rec = self.index.iloc[i]
        return np.asarray(self.pixels(rec["image_id"])[int(rec["row"])])

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):  # DataLoader workers re-open the memory maps themselves
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state


class TileSetWriter:
    """Creates / resumes a TileSet folder and commits one slide at a time."""

    def __init__(self, root: str | Path, settings: dict[str, Any], tile_pixels: int, overwrite: bool = False):
        self.root = Path(root)
        self.settings = settings
        self.tile_pixels = int(tile_pixels)
        meta_path = self.root / "tileset.json"
        if meta_path.exists() and not overwrite:
            meta = _read_meta(self.root)
            if meta.get("settings") != settings or meta.get("tile_pixels") != self.tile_pixels:
                changed = sorted(
                    k for k in set(settings) | set(meta.get("settings", {}))
                    if settings.get(k) != meta.get("settings", {}).get(k)
                )
                raise TileSetError(
                    f"'{self.root}' holds a TileSet made with different settings ({', '.join(changed) or 'tile_pixels'}); "
                    "choose another --out, or pass --overwrite to replace it"
                )
            self.meta = meta
        else:
            if overwrite and self.root.exists():
                import shutil

                for name in ("pixels", "qc", "tiles.csv", "tileset.json"):
                    p = self.root / name
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
            self.meta = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "clotclf_version": __version__,
                "tile_pixels": self.tile_pixels,
                "settings": settings,
                "slides": {},
            }
        (self.root / "pixels").mkdir(parents=True, exist_ok=True)
        (self.root / "qc").mkdir(parents=True, exist_ok=True)
        self._rows = self._existing_rows()
        #: done slides whose pixel file was missing or broken (id -> why): no longer done, so tiled again
        self.broken = self._forget_broken()

    def _existing_rows(self) -> list[dict[str, Any]]:
        import pandas as pd

        path = self.root / "tiles.csv"
        if not path.is_file():
            return []
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        done = self._done()
        return [r for r in df.to_dict("records") if r["image_id"] in done]

    def _done(self) -> set[str]:
        return {k for k, v in self.meta["slides"].items() if v.get("status") == "done"}

    def _forget_broken(self) -> dict[str, str]:
        """Drop (in memory; written with the next commit) the done slides whose pixel file is
        missing, truncated or does not match their index rows, so that they are tiled again."""
        counts: dict[str, int] = {}
        max_row: dict[str, int] = {}
        for r in self._rows:
            k = r["image_id"]
            counts[k] = counts.get(k, 0) + 1
            max_row[k] = max(max_row.get(k, -1), int(r["row"]))
        broken: dict[str, str] = {}
        for image_id in sorted(self._done()):
            n = int(self.meta["slides"][image_id].get("n_tiles", counts.get(image_id, 0)))
            problem = _slide_problem(self.root, image_id, n, self.tile_pixels, counts.get(image_id, 0), max_row.get(image_id, -1))
            if problem:
                broken[image_id] = problem
                del self.meta["slides"][image_id]
        if broken:
            self._rows = [r for r in self._rows if r["image_id"] not in broken]
        return broken

    def sync(self, listed: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
        """Bring the finished slides up to date with the current manifest, without pixel work.

        ``listed``: every slide of the current manifest (or file list), image_id -> its
        ``patient_id``, ``center_id`` and ``label``. Done slides keep their pixels but their index
        rows take these values; slides no longer listed leave the TileSet (status, rows, pixel
        file, QC picture). So a resumed TileSet says what a fresh one would.

        Commit order keeps every crash point consistent: ``tileset.json`` first (readers ignore
        rows and pixels of a slide it does not list as done), then ``tiles.csv``, then the
        files are deleted (a left-over file is unused and deleted by the next sync).
        Returns ``{"removed": {id: what it was}, "relabelled": {id: what changed}}``.
        """
        removed = {
            k: f"was {v.get('status')}" + (f", {v.get('n_tiles', 0)} tiles" if v.get("status") == "done" else "")
            for k, v in self.meta["slides"].items()
            if k not in listed
        }
        removed.update({k: f"pixel file broken: {why}" for k, why in self.broken.items() if k not in listed})
        for k in removed:
            self.meta["slides"].pop(k, None)
        done = self._done()
        relabelled: dict[str, str] = {}
        rows = []
        for r in self._rows:
            image_id = r["image_id"]
            if image_id not in done:
                continue
            want = {c: str(listed[image_id].get(c, "")) for c in MANIFEST_COLUMNS}
            old = {c: str(r.get(c, "")) for c in MANIFEST_COLUMNS}
            if old != want:
                relabelled.setdefault(
                    image_id, ", ".join(f"{c} {old[c]!r} -> {want[c]!r}" for c in MANIFEST_COLUMNS if old[c] != want[c])
                )
                r = {**r, **want}
            rows.append(r)
        if removed or relabelled or self.broken:
            write_json(self.root / "tileset.json", self.meta)
            self._rows = rows
            self._write_index()
        self._delete_unused_files(list(removed))
        return {"removed": removed, "relabelled": relabelled}

    def _delete_unused_files(self, removed: list[str]) -> None:
        """Pixel files of slides that are not done (removed, broken, or left by an interrupted
        commit) and the QC pictures of removed slides."""
        done = self._done()
        for path in (self.root / "pixels").glob("*.npy"):
            if path.stem not in done:
                path.unlink(missing_ok=True)
        for image_id in removed:
            (self.root / "qc" / f"{image_id}.png").unlink(missing_ok=True)

    def is_done(self, image_id: str) -> bool:
        """True if this slide was already finished (tiled, or recorded as failed / without tissue);
        a slide whose pixel file is missing or broken is not."""
        return image_id in self.meta["slides"]

    def add_slide(self, image_id: str, pixels: np.ndarray, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
        """Commit one finished slide: its pixel array, its index rows and its status (``info``)."""
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (self.tile_pixels, self.tile_pixels, 3):
            raise ValueError(f"pixels must be uint8 (n, {self.tile_pixels}, {self.tile_pixels}, 3), got {pixels.dtype} {pixels.shape}")
        if len(rows) != len(pixels):
            raise ValueError("one index row per tile is required")
        with atomic_path(self.root / "pixels" / f"{image_id}.npy", suffix=".npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(pixels), allow_pickle=False)
        self._rows = [r for r in self._rows if r["image_id"] != image_id] + [
            {**r, "image_id": image_id, "row": i} for i, r in enumerate(rows)
        ]
        self._write_index()
        self.meta["slides"][image_id] = {"status": "done", "n_tiles": int(len(pixels)), **info}
        write_json(self.root / "tileset.json", self.meta)

    def record_failure(self, image_id: str, status: str, reason: str, info: dict[str, Any] | None = None) -> None:
        """Record a slide that produced no tiles (``status`` e.g. ``failed`` or ``no_tissue``)."""
        self.meta["slides"][image_id] = {"status": status, "reason": reason, "n_tiles": 0, **(info or {})}
        write_json(self.root / "tileset.json", self.meta)

    def _write_index(self) -> None:
        import pandas as pd

        df = pd.DataFrame(self._rows)
        cols = INDEX_COLUMNS + sorted(c for c in df.columns if c not in INDEX_COLUMNS)
        df = df.reindex(columns=cols) if len(df) else pd.DataFrame(columns=INDEX_COLUMNS)
        write_text(self.root / "tiles.csv", df.to_csv(index=False))
