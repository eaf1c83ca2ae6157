"""Writing a TileSet (format in docs/data-formats.md; reading: :mod:`clotclf_core.tiling.tileset`).

- :class:`PixelFileWriter` / :func:`slide_pixels`: one slide's kept tiles streamed into
  ``pixels/<image_id>.npy`` (whoever tiles the slide: this process, a worker, a Dask worker);
- :func:`write_shard`: its index shard ``index/<image_id>.csv``, atomically;
- :class:`TileSetWriter`: the run's client — creates / resumes the folder, brings it up to date
  with the manifest (:meth:`TileSetWriter.sync`), records each slide's status and merges the index
  at the end (:meth:`TileSetWriter.merge_index`).

Each slide's status is one line appended to ``tileset.journal`` (after its files are written), not
a rewrite of ``tileset.json``: rewriting a file that grows with the cohort after every slide made a
run quadratic (1,000 slides 28 s, 3,000 slides 118 s). ``tileset.json`` is rewritten when the run
starts and ends (the journal then emptied); readers apply the journal's lines on top of it
(:func:`clotclf_core.tiling.tileset.read_tileset_meta`), so a killed run resumes exactly where it
was: what a line records is done, what has no line is tiled again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from clotclf_core import __version__
from clotclf_core.journal import Journal
from clotclf_core.plugin.io import _umask, write_csv, write_text
from clotclf_core.tiling.tileset import (
    FORMAT,
    FORMAT_VERSION,
    JOURNAL,
    MANIFEST_COLUMNS,
    SHARD_COLUMNS,
    TileSetError,
    _fix_hint,
    index_stamp,
    read_shards,
    read_tileset_meta,
    slide_problem,
)

# ----------------------------------------------------------------------------- writing one slide


def npy_header(n: int, size: int) -> bytes:
    """The .npy header numpy writes for uint8 (n, size, size, 3). numpy leaves room in it for the
    first axis to grow (up to 21 digits), so its length does not depend on ``n``: the header of a
    streamed file is reserved first and written last, in place."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (int(n), int(size), int(size), 3)})
    return buf.getvalue()


class PixelFileWriter:
    """Streams kept tiles into ``pixels/<image_id>.npy`` (a temporary file until :meth:`finish`).

    Tiles are appended with plain writes (no memory map, so they do not stay in this process's
    memory); the header (:func:`npy_header`), whose shape is known only at the end, is written last
    into the space reserved for it. :meth:`finish` with ``keep`` copies only those tiles, in that order.

    Why not ``numpy.lib.format.open_memmap``: it needs the shape when the file is created, and the
    number of kept tiles is known only when the slide is done; writing the tiles elsewhere first and
    copying them in cost 2.0 CPU-s and 3.4 s for the 790 MB of kept tiles of benchmarks/tiling.py's
    fine geometry (whose whole tiling takes 7.6 CPU-s).
    """

    def __init__(self, root: Path, image_id: str, size: int):
        self.path = Path(root) / "pixels" / f"{image_id}.npy"
        self.size = int(size)
        self.tile_bytes = self.size * self.size * 3
        self.count = 0
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb")
        self.header_bytes = len(npy_header(0, self.size))
        self._fh.write(b"\0" * self.header_bytes)

    def add(self, pixels: np.ndarray) -> None:
        if pixels.dtype != np.uint8 or pixels.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"tiles must be uint8 (n, {self.size}, {self.size}, 3), got {pixels.dtype} {pixels.shape}")
        try:
            self._fh.write(np.ascontiguousarray(pixels))
        except OSError as exc:  # name the file: it is in the TileSet folder (full disk, quota)
            raise OSError(exc.errno, exc.strerror, str(self.tmp)) from None
        self.count += len(pixels)

    def finish(self, keep: np.ndarray | None) -> int:
        self._fh.flush()
        if keep is not None:
            self._fh.close()
            self._select(np.asarray(keep, np.int64))
        else:
            self._fh.seek(0)
            self._fh.write(self._header(self.count))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        if self.count == 0:
            self.tmp.unlink(missing_ok=True)
            return 0
        os.chmod(self.tmp, 0o666 & ~_umask())
        os.replace(self.tmp, self.path)
        return self.count

    def _select(self, keep: np.ndarray) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            src = os.open(self.tmp, os.O_RDONLY)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(self._header(len(keep)))
                    for i in keep:
                        out.write(os.pread(src, self.tile_bytes, self.header_bytes + int(i) * self.tile_bytes))
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                os.close(src)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.tmp.unlink(missing_ok=True)
        self.tmp = Path(tmp)
        self.count = len(keep)

    def _header(self, n: int) -> bytes:
        header = npy_header(n, self.size)
        if len(header) != self.header_bytes:  # numpy's growth room makes this impossible below 10**21 tiles
            raise ValueError(f"the .npy header of {n} tiles does not fit the {self.header_bytes} bytes reserved")
        return header

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._fh.close()
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def slide_pixels(root: Path, image_id: str, size: int) -> Iterator[PixelFileWriter]:
    """A :class:`PixelFileWriter` that leaves nothing behind if the block raises."""
    writer = PixelFileWriter(root, image_id, size)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise


def write_shard(root: Path, image_id: str, rows: list[dict[str, Any]]) -> int:
    """Write ``index/<image_id>.csv`` (every candidate row) atomically; returns the row count."""
    import pandas as pd

    df = pd.DataFrame(rows)
    for c in SHARD_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series(dtype=object)
    df["image_id"] = image_id
    df = df.reindex(columns=SHARD_COLUMNS + sorted(c for c in df.columns if c not in SHARD_COLUMNS))
    write_csv(Path(root) / "index" / f"{image_id}.csv", df)
    return len(df)


# ----------------------------------------------------------------------------- the client's side


def meta_text(meta: dict[str, Any]) -> str:
    """``tileset.json``'s text: indented at the top, one line per slide (json's indenting encoder is
    pure Python: 4 s for 3,000 slides; this is its C encoder, one call per slide)."""
    head = {k: v for k, v in meta.items() if k != "slides"}
    start = json.dumps(head, indent=2, default=str)[:-2] + ",\n" if head else "{\n"  # (without its closing "\n}")
    slides = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v, default=str)}" for k, v in meta.get("slides", {}).items())
    body = "{\n" + slides + "\n  }" if slides else "{}"
    return start + f'  "slides": {body}\n}}\n'


class TileSetWriter:
    """Creates / resumes a TileSet folder and records each slide's status (the run's client)."""

    def __init__(self, root: str | Path, settings: dict[str, Any], tile_pixels: int, overwrite: bool = False,
                 components: dict[str, Any] | None = None):
        self.root = Path(root)
        self.settings = settings
        self.tile_pixels = int(tile_pixels)
        self.order: dict[str, int] = {}
        self.journal = Journal(self.root / JOURNAL)
        meta_path = self.root / "tileset.json"
        if meta_path.exists() and not overwrite:
            meta = read_tileset_meta(self.root)
            if meta.get("format_version") != FORMAT_VERSION:
                raise TileSetError(
                    f"'{self.root}' holds a TileSet of format {meta.get('format_version')} (an older clotclf); it can still be "
                    "read, but not resumed: choose another --out, or pass --overwrite to re-tile it"
                )
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

                for name in ("pixels", "qc", "index", "tiles.csv", JOURNAL, "tileset.json"):
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
        if components is not None:
            self.meta["components"] = components
        for name in ("pixels", "qc", "index"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        #: done slides whose files were missing or broken (id -> why): no longer done, so tiled again
        self.broken = self._forget_broken()

    def _done(self) -> set[str]:
        return {k for k, v in self.meta["slides"].items() if v.get("status") == "done"}

    def _forget_broken(self) -> dict[str, str]:
        broken: dict[str, str] = {}
        for image_id in sorted(self._done()):
            problem, _ = slide_problem(self.root, image_id, self.meta["slides"][image_id], self.tile_pixels)
            if problem:
                broken[image_id] = problem
                del self.meta["slides"][image_id]
        return broken

    def forget(self, image_id: str) -> None:
        """Mark a slide as not done (it is about to be tiled again)."""
        if self.meta["slides"].pop(image_id, None) is not None:
            self.journal.forget(image_id)

    def sync(self, listed: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
        """Bring the TileSet up to date with the current manifest, without pixel work.

        ``listed``: every slide of the current manifest (or file list), in order, image_id -> its
        ``patient_id``, ``center_id`` and ``label``. Finished slides take these values (they live
        in tileset.json); slides no longer listed leave the TileSet (status, then their files).
        Returns ``{"removed": {id: what it was}, "relabelled": {id: what changed}}``.
        """
        self.order = {k: i for i, k in enumerate(listed)}
        removed = {
            k: f"was {v.get('status')}" + (f", {v.get('n_tiles', 0)} tiles" if v.get("status") == "done" else "")
            for k, v in self.meta["slides"].items()
            if k not in listed
        }
        removed.update({k: f"files broken: {why}" for k, why in self.broken.items() if k not in listed})
        for k in removed:
            self.meta["slides"].pop(k, None)
        relabelled: dict[str, str] = {}
        changed = bool(removed or self.broken)
        for image_id, rec in self.meta["slides"].items():
            want = {c: str(listed[image_id].get(c, "")) for c in MANIFEST_COLUMNS}
            old = {c: str(rec.get(c, "")) for c in MANIFEST_COLUMNS}
            if old != want:
                if rec.get("status") == "done":
                    relabelled[image_id] = ", ".join(f"{c} {old[c]!r} -> {want[c]!r}" for c in MANIFEST_COLUMNS if old[c] != want[c])
                rec.update(want)
                changed = True
        # tileset.json first: readers ignore files of slides it does not list as done; a new folder gets
        # it here too (slides then only append to the journal, which needs a tileset.json to apply to)
        if changed or (self.root / JOURNAL).exists() or not (self.root / "tileset.json").exists():
            self._write_meta()
        self._delete_unused_files(list(removed))
        return {"removed": removed, "relabelled": relabelled}

    def _delete_unused_files(self, removed: list[str]) -> None:
        """Files of slides that are not done (removed, broken, or left by an interrupted run)."""
        done = self._done()
        for sub, suffix in (("pixels", ".npy"), ("index", ".csv")):
            for path in (self.root / sub).glob(f"*{suffix}"):
                if path.stem not in done:
                    path.unlink(missing_ok=True)
            for path in (self.root / sub).glob(".*.tmp"):
                path.unlink(missing_ok=True)
        for image_id in removed:
            (self.root / "qc" / f"{image_id}.png").unlink(missing_ok=True)

    def commit(self, image_id: str, status: str, info: dict[str, Any], listed: Mapping[str, Any] | None = None,
               reason: str = "") -> None:
        """Record one slide's outcome (its files, if any, are already written)."""
        rec = {"status": status, **({"reason": reason} if reason else {}), "n_tiles": int(info.get("n_kept", 0)) if status == "done" else 0}
        rec.update({c: str((listed or {}).get(c, "")) for c in MANIFEST_COLUMNS})
        rec.update({k: v for k, v in info.items() if k not in rec})
        self.meta["slides"][image_id] = rec
        if (self.root / "tileset.json").exists():
            self.journal.record(image_id, rec)
        else:  # a writer used without sync() (a script, the 0.1 API): the journal needs a tileset.json to apply to
            self._write_meta()

    def merge_index(self) -> int:
        """Write ``tiles.csv``: the kept tiles of every done slide in one file (what readers open
        first when it is up to date; the shards stay the truth). Returns its row count."""
        self._sort_slides()  # (slides were recorded in the order they finished, which depends on the workers)
        done = [k for k, v in self.meta["slides"].items() if v.get("status") == "done"]
        kept, _, problems = read_shards(self.root, self.meta["slides"], done, self.tile_pixels)
        if problems:
            raise TileSetError(f"cannot merge the index of '{self.root}': {'; '.join(problems[:3])}; {_fix_hint(self.root)}")
        write_csv(self.root / "tiles.csv", kept)
        self.meta["merged_index"] = {"file": "tiles.csv", "stamp": index_stamp(self.meta["slides"]), "rows": int(len(kept))}
        self._write_meta()
        return len(kept)

    def _write_meta(self) -> None:
        """Rewrite ``tileset.json`` (slides in manifest order) and empty the journal it now holds."""
        self._sort_slides()
        write_text(self.root / "tileset.json", meta_text(self.meta))
        self.journal.remove()  # (killed before this: its lines are applied again, to the same effect)

    def _sort_slides(self) -> None:
        """Slides in manifest order (a slide no longer listed last)."""
        if self.order:
            big = len(self.order)
            self.meta["slides"] = dict(sorted(self.meta["slides"].items(), key=lambda kv: self.order.get(kv[0], big)))

    # kept for callers of clotclf 0.1's writer (tests build tiny TileSets with it)
    def add_slide(self, image_id: str, pixels: np.ndarray, rows: list[dict[str, Any]], info: dict[str, Any],
                  listed: Mapping[str, Any] | None = None) -> None:
        """Commit a finished slide from memory: its kept tiles, their index rows and its status."""
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (self.tile_pixels, self.tile_pixels, 3):
            raise ValueError(f"pixels must be uint8 (n, {self.tile_pixels}, {self.tile_pixels}, 3), got {pixels.dtype} {pixels.shape}")
        if len(rows) != len(pixels):
            raise ValueError("one index row per tile is required")
        listed = listed or (rows[0] if rows else {})
        with slide_pixels(self.root, image_id, self.tile_pixels) as sink:
            sink.add(pixels)
            n = sink.finish(None)
        shard = [{**{k: v for k, v in r.items() if k not in MANIFEST_COLUMNS}, "row": i, "kept": True, "rejected_by": ""}
                 for i, r in enumerate(rows)]
        write_shard(self.root, image_id, shard)
        self.commit(image_id, "done", {**info, "n_kept": n}, listed)
        self.merge_index()
