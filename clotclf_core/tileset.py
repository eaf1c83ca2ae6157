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
re-running resumes after them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import ClotclfError
from .io import atomic_path, write_json, write_text

FORMAT = "clotclf-tileset"
FORMAT_VERSION = 1
INDEX_COLUMNS = ["image_id", "patient_id", "center_id", "label", "row", "x", "y", "size", "downsample"]


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
                raise TileSetError(f"TileSet '{self.root}' lacks {path.name}; re-tile with `clotclf tile ... --overwrite`")
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
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

    def _existing_rows(self) -> list[dict[str, Any]]:
        import pandas as pd

        path = self.root / "tiles.csv"
        if not path.is_file():
            return []
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        done = {k for k, v in self.meta["slides"].items() if v.get("status") == "done"}
        return [r for r in df.to_dict("records") if r["image_id"] in done]

    def is_done(self, image_id: str) -> bool:
        """True if this slide was already finished (tiled, or recorded as failed / without tissue)."""
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
