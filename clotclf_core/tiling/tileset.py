"""The TileSet: what tiling writes and training reads (format in docs/data-formats.md).

A TileSet (format 2) is a folder::

    tileset.json          format name + version, the settings that produced it, per-slide status
    tileset.journal       per-slide statuses recorded since tileset.json was written (one JSON line each)
    index/<image_id>.csv  one row per candidate tile of the slide: kept ones and rejected ones
    pixels/<image_id>.npy uint8 (n_kept, S, S, 3) RGB at training resolution S, memory-mappable
    qc/<image_id>.png     QC picture per slide

Index columns: ``image_id, row, x, y, size, downsample, level0_px_per_pixel, tissue, darkness,
kept, rejected_by`` and one ``score_<filter>`` per filter. ``row`` is a kept tile's index in
``pixels/<image_id>.npy`` (-1 for a rejected tile); ``x, y, size`` the tile's top-left corner and
side in level-0 pixels (a tile may reach past the slide's edge, padded with its glass colour);
``level0_px_per_pixel`` what one cached pixel stands for. A slide's ``patient_id``,
``center_id`` and ``label`` live in its ``tileset.json`` entry (so a relabelled manifest needs no
index rewrite) and are joined into :attr:`TileSet.index`.

Each slide is written by whoever tiles it (a worker process, a Dask worker): its pixel file is
streamed to a temporary file and renamed, then its index shard written atomically; the run's
client then marks it ``done`` (a line of ``tileset.journal``, folded into ``tileset.json`` when the
run ends; readers apply the journal's lines). Readers only use slides marked ``done``, so an
interrupted run leaves nothing half-visible, and the next run re-tiles what is not done.
Format 1 TileSets (clotclf 0.1: one ``tiles.csv`` of kept tiles) are still read. This module
reads; :mod:`clotclf_core.tiling.writer` writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from clotclf_core.inputs import check_folder
from clotclf_core.journal import apply_journal_file
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import csv_unescape_frame
from clotclf_core.tiling.arrays import MappedArrays

FORMAT = "clotclf-tileset"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: the columns of :attr:`TileSet.index`, in this order (then the others alphabetically)
INDEX_COLUMNS = ["image_id", "patient_id", "center_id", "label", "row", "x", "y", "size", "downsample"]
#: the index columns that come from the manifest (kept per slide in tileset.json)
MANIFEST_COLUMNS = ("patient_id", "center_id", "label")
#: statuses recorded since tileset.json was written: ``{"id": ..., "slide": {...}}`` or ``{"id": ..., "forget": true}``
JOURNAL = "tileset.journal"
#: columns of an index shard before the score columns
SHARD_COLUMNS = ["image_id", "row", "x", "y", "size", "downsample", "level0_px_per_pixel", "tissue", "darkness", "kept", "rejected_by"]


class TileSetError(ClotclfError):
    pass


def _fix_hint(root: Path) -> str:
    return f"re-run `clotclf tile SLIDES --out {root} ...` (it tiles such slides again) or re-tile with `--overwrite`"


def not_a_tileset(root: Path, option: str = "") -> str:
    """Why ``root`` is not a TileSet and what to do: a folder of slides is tiled into a folder of its own."""
    from clotclf_core.slides.open import slide_files  # the plugin manager, only on this error path

    what = f"{option} '{root}'" if option else f"'{root}'"
    try:
        slides = slide_files(root)
    except OSError:
        slides = []
    if slides:
        return (f"{what} holds slide files ({len(slides)}, e.g. {slides[0].name}), not a TileSet: tile them into a "
                f"folder of their own, `clotclf tile {root} --out {root.parent / (root.name + '-tiles')}`, and pass that")
    return f"{what} is not a TileSet (no tileset.json); make one with `clotclf tile SLIDES --out {root}`"


def read_tileset_meta(root: Path) -> dict[str, Any]:
    """A TileSet's ``tileset.json``, checked (a TileSet of a format this clotclf reads)."""
    meta_path = root / "tileset.json"
    if not meta_path.is_file():
        raise TileSetError(not_a_tileset(root))
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TileSetError(f"'{meta_path}' is not valid JSON ({exc}); re-run `clotclf tile` with --overwrite") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise TileSetError(f"'{meta_path}' is not a clotclf TileSet description (format={got!r})")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise TileSetError(
            f"TileSet '{root}' has format version {meta.get('format_version')}, this clotclf reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; re-tile the slides with this version (`clotclf tile ... --overwrite`)"
        )
    apply_journal(root, meta)
    return meta


def apply_journal(root: Path, meta: dict[str, Any]) -> int:
    """Apply ``tileset.journal``'s lines, in order, to ``meta["slides"]``; returns how many applied
    (:func:`clotclf_core.journal.apply_journal_file`: a torn line is skipped, its slide tiled again)."""
    path = root / JOURNAL
    try:
        return apply_journal_file(path, meta.setdefault("slides", {}))
    except OSError as exc:
        raise TileSetError(f"cannot read '{path}' ({exc.strerror}); {_fix_hint(root)}") from None


def read_index_file(path: Path, required: list[str], root: Path) -> Any:
    """A tile index CSV (a shard, or format 1's tiles.csv) as a DataFrame; an empty, binary or
    malformed file is one :class:`TileSetError` naming it."""
    import pandas as pd

    try:
        head = path.read_bytes()[:65536]
    except OSError as exc:
        raise TileSetError(f"cannot read the tile index '{path}' ({exc.strerror}); {_fix_hint(root)}") from None
    if not head.strip():
        raise TileSetError(f"the tile index '{path}' is empty; {_fix_hint(root)}")
    binary = b"\x00" in head
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        binary = binary or exc.start < len(head) - 4  # (a character cut by the 64 KiB read is fine)
    if binary:
        raise TileSetError(f"the tile index '{path}' is not a CSV text file (binary data); {_fix_hint(root)}")
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "center_id": str, "label": str, "rejected_by": str},
                         keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise TileSetError(f"the tile index '{path}' is not a readable CSV ({type(exc).__name__}: {str(exc)[:120]}); {_fix_hint(root)}") from None
    csv_unescape_frame(df)  # ids written with their formula-neutralising quote (plugin.io.csv_safe)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TileSetError(f"the tile index '{path}' lacks columns {missing}; {_fix_hint(root)}")
    return df


def npy_problem(path: Path, dtype: Any, shape: tuple[int, ...]) -> str | None:
    """Why ``path`` cannot be a ``dtype`` array of ``shape`` saved with ``numpy.save`` (``None`` when
    it can): a slide's pixel file here, a slide's feature matrix in a feature store.

    Reads the .npy header and the file's size (no data, no memory map: no file descriptor stays
    open), so a missing, truncated or mis-shaped file is found when the folder is opened, not as a
    traceback in a loader worker. Running out of file descriptors is an :class:`OSError` (raised:
    the file is not to blame), never "truncated".
    """
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return "missing"
    except IsADirectoryError:
        return "missing (a folder is in its place)"
    except OSError as exc:
        raise_if_out_of_files(exc)
        return f"unreadable ({exc.strerror})"
    with fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                return f"unreadable (.npy format version {version[0]}.{version[1]})"
            header = read_header(fh, max_header_size=10000)
        except (ValueError, OSError, EOFError, SyntaxError) as exc:
            if fh.seek(0) == 0 and fh.read(2) == b"PK":  # an .npz archive under a .npy name
                return "not a .npy array"
            return f"truncated or unreadable ({type(exc).__name__}: {str(exc)[:120]})"
        got_shape, fortran, got_dtype = header
        size, start = os.fstat(fh.fileno()).st_size, fh.tell()
    want = tuple(int(v) for v in shape)
    if got_dtype != np.dtype(dtype) or tuple(got_shape) != want:
        return f"holds {got_dtype} {tuple(got_shape)} instead of {np.dtype(dtype)} {want}"
    need = start + int(np.prod(want, dtype=np.int64)) * np.dtype(dtype).itemsize
    if size < need:
        return f"truncated or unreadable: {size:,} bytes where its header needs {need:,}"
    return None


def raise_if_out_of_files(exc: OSError) -> None:
    """Re-raise "too many open files" as the one line saying so: it is never the data's fault."""
    import errno

    if exc.errno in (errno.EMFILE, errno.ENFILE):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        raise TileSetError(
            f"too many open files ({exc.strerror}: this process may open {soft:,}, `ulimit -n`) while opening "
            f"'{exc.filename}'; the data is not at fault: raise the limit (`ulimit -n 4096`) or use fewer loader workers"
        ) from None


def slide_problem(root: Path, image_id: str, rec: Mapping[str, Any], tile_pixels: int) -> tuple[str | None, Any]:
    """Why a done slide of a format 2 TileSet is broken (None when it is not), and its shard."""
    shard_path = root / "index" / f"{image_id}.csv"
    if not shard_path.is_file():
        return "index/" + f"{image_id}.csv: missing", None
    try:
        shard = read_index_file(shard_path, SHARD_COLUMNS, root)
    except TileSetError as exc:
        return str(exc).split("; re-run")[0], None
    kept = shard[shard["kept"].astype(str).isin(("True", "true", "1"))]
    n = int(rec.get("n_tiles", len(kept)))
    pix = root / "pixels" / f"{image_id}.npy"
    if n == 0:
        return (None if len(kept) == 0 else f"index/{image_id}.csv lists {len(kept)} kept tiles but none are recorded"), shard
    problem = None if rec.get("coords_only") else npy_problem(pix, np.uint8, (n, tile_pixels, tile_pixels, 3))
    if problem:
        return f"pixels/{image_id}.npy: {problem}", shard
    rows = kept["row"].astype(int)
    if len(kept) != n or (len(rows) and (rows.min() < 0 or rows.max() >= n or rows.nunique() != n)):
        held = f"tileset.json records {n} tiles" if rec.get("coords_only") else f"pixels/{image_id}.npy holds {n} tiles"
        return f"{held} but index/{image_id}.csv lists {len(kept)} kept", shard
    return None, shard


def index_stamp(slides: Mapping[str, Mapping[str, Any]]) -> str:
    """What the merged ``tiles.csv`` must have been made from: the done slides, their tile counts
    and manifest values."""
    import hashlib

    done = sorted((k, int(v.get("n_tiles", 0)), *(str(v.get(c, "")) for c in MANIFEST_COLUMNS))
                  for k, v in slides.items() if v.get("status") == "done")
    return hashlib.sha256(json.dumps(done).encode()).hexdigest()[:16]


def read_shards(root: Path, slides: Mapping[str, Mapping[str, Any]], done: list[str], tile_pixels: int) -> tuple[Any, Any, list[str]]:
    """(kept, rejected, problems) from the index shards of the ``done`` slides, with their manifest columns."""
    import pandas as pd

    shards, problems = [], []
    for image_id in done:
        problem, shard = slide_problem(root, image_id, slides[image_id], tile_pixels)
        if problem:
            problems.append(problem)
            continue
        for col in MANIFEST_COLUMNS:
            shard[col] = str(slides[image_id].get(col, ""))
        shards.append(shard)
    cols = INDEX_COLUMNS + [c for c in SHARD_COLUMNS if c not in INDEX_COLUMNS and c not in ("kept", "rejected_by")]
    if not shards:
        empty = pd.DataFrame(columns=cols)
        return empty, pd.DataFrame(columns=cols + ["rejected_by"]), problems
    every = pd.concat(shards, ignore_index=True)
    every["kept"] = every["kept"].astype(str).isin(("True", "true", "1"))
    cols += sorted(c for c in every.columns if c not in cols and c not in ("kept", "rejected_by"))
    kept = every[every["kept"]].reindex(columns=cols).reset_index(drop=True)
    kept["row"] = kept["row"].astype(int)
    rejected = every[~every["kept"]].reindex(columns=cols + ["rejected_by"]).reset_index(drop=True)
    return kept, rejected, problems


class TileSet:
    """Read access to a TileSet folder.

    ``index``: a pandas DataFrame of the kept tiles (``image_id, patient_id, center_id, label, row,
    x, y, size, downsample, level0_px_per_pixel, tissue, darkness, score_<filter>...``);
    ``rejected``: the candidates that were not kept, with their scores and ``rejected_by``.
    """

    def __init__(self, root: str | Path, slides_dir: str | Path | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise TileSetError(f"TileSet folder '{self.root}' does not exist; make one with `clotclf tile`")
        self.meta = read_tileset_meta(self.root)
        #: coordinates-only TileSets: the folder their slides are in now (default: the paths they recorded)
        self.slides_dir = Path(slides_dir) if slides_dir is not None else None
        self._arrays = MappedArrays()  # (a bounded number of memory maps: one file descriptor each)
        self._rejected = None
        done = [k for k, v in self.slides.items() if v.get("status") == "done"]
        if self.meta.get("format_version") == 1:
            self.index, self.rejected = self._read_v1(set(done))
        else:
            self.index, self.rejected = self._read_v2(done)

    # ------------------------------------------------------------------ reading
    def _read_v1(self, done: set[str]) -> tuple[Any, Any]:
        import pandas as pd

        index_path = self.root / "tiles.csv"
        if not index_path.is_file():
            raise TileSetError(f"TileSet '{self.root}' has no tiles.csv; tiling did not finish any slide")
        index = read_index_file(index_path, INDEX_COLUMNS, self.root)
        index = index[index["image_id"].isin(done)].reset_index(drop=True)  # rows of unfinished commits
        by_slide = index.groupby("image_id")["row"]
        n_rows, max_row = by_slide.size().to_dict(), by_slide.max().to_dict()
        problems = []
        for image_id in sorted(done):
            rows = int(n_rows.get(image_id, 0))
            n = int(self.slides[image_id].get("n_tiles", rows))
            problem = None if self.slides[image_id].get("coords_only") else npy_problem(
                self.root / "pixels" / f"{image_id}.npy", np.uint8, (n, self.tile_size, self.tile_size, 3))
            if problem is None and rows != n:
                problem = f"holds {n} tiles but tiles.csv lists {rows}"
            elif problem is None and rows and not 0 <= int(max_row.get(image_id, -1)) < n:
                problem = f"holds {n} tiles but tiles.csv refers to tile {max_row.get(image_id)}"
            if problem:
                problems.append(f"{self.root / 'pixels' / image_id}.npy: {problem}")
        self._raise_problems(problems)
        return index, pd.DataFrame(columns=INDEX_COLUMNS)

    def _read_v2(self, done: list[str]) -> tuple[Any, Any]:
        merged = self.meta.get("merged_index") or {}
        if merged.get("stamp") == index_stamp(self.slides) and (self.root / "tiles.csv").is_file():
            return self._read_v1(set(done))[0], None  # the merged index is up to date: one file to read
        kept, rejected, problems = read_shards(self.root, self.slides, done, self.tile_size)
        self._raise_problems(problems)
        return kept, rejected

    @property
    def rejected(self) -> Any:
        """The candidates that were not kept (``rejected_by``: the filter, or ``max_tiles``), with their scores."""
        if self._rejected is None:
            done = [k for k, v in self.slides.items() if v.get("status") == "done"]
            _, self._rejected, problems = read_shards(self.root, self.slides, done, self.tile_size)
            self._raise_problems(problems)
        return self._rejected

    @rejected.setter
    def rejected(self, value: Any) -> None:
        self._rejected = value

    def _raise_problems(self, problems: list[str]) -> None:
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise TileSetError(
                f"TileSet '{self.root}' has {len(problems)} broken slide file(s) (broken pixel file or index): "
                f"{'; '.join(problems[:3])}{more}; " + _fix_hint(self.root)
            )

    # ------------------------------------------------------------------ access
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

    @property
    def coords_only(self) -> bool:
        """Tiled with ``--coords-only``: no pixel cache; tiles are read from the slides
        (:mod:`clotclf_core.tiling.fill`)."""
        return bool(self.settings.get("coords_only"))

    def pixels(self, image_id: str) -> np.ndarray:
        """The memory-mapped uint8 (n, S, S, 3) array of one slide's kept tiles."""
        if self.coords_only or self.slides.get(image_id, {}).get("coords_only"):
            raise TileSetError(
                f"TileSet '{self.root}' was tiled with --coords-only: it caches no pixels; `clotclf embed` and `predict` read "
                f"slide '{image_id}' itself (clotclf_core.tiling.fill), or tile again without --coords-only")
        path = self.root / "pixels" / f"{image_id}.npy"
        try:
            return self._arrays.get(image_id, path)
        except FileNotFoundError:
            raise TileSetError(f"TileSet '{self.root}' lacks {path}; " + _fix_hint(self.root)) from None
        except (ValueError, OSError, EOFError) as exc:
            if isinstance(exc, OSError):
                raise_if_out_of_files(exc)  # (never blamed on the data)
            raise TileSetError(
                f"TileSet '{self.root}': {path} is truncated or unreadable ({type(exc).__name__}: {exc}); " + _fix_hint(self.root)
            ) from None

    def tile(self, i: int) -> np.ndarray:
        """Pixels of row ``i`` of the index, (S, S, 3) uint8."""
        rec = self.index.iloc[i]
        return np.asarray(self.pixels(rec["image_id"])[int(rec["row"])])

    def with_thresholds(self, **thresholds: float) -> Any:
        """The index with stricter filter thresholds applied, without re-reading any slide
        (``ts.with_thresholds(otsu=0.5)``): kept tiles whose ``score_<name>`` is below the new
        threshold are left out. A threshold below the one the TileSet was made with cannot be
        applied (the tiles it would add were never cached): that needs `clotclf tile` again."""
        used = {f["name"]: f.get("options", {}).get("threshold") for f in self.settings.get("filters", [])}
        keep = np.ones(len(self.index), bool)
        for name, value in thresholds.items():
            if f"score_{name}" not in self.index.columns:
                raise TileSetError(f"TileSet '{self.root}' has no score_{name} column (filters: {', '.join(used) or 'none'})")
            if used.get(name) is not None and value < used[name]:
                raise TileSetError(
                    f"threshold {name}={value} is below the {used[name]} this TileSet was made with: the tiles it would add "
                    f"were never cached; re-tile with `--filter {name}:threshold={value}`"
                )
            keep &= self.index[f"score_{name}"].to_numpy() >= value
        return self.index[keep].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):  # DataLoader workers re-open the memory maps themselves
        state = self.__dict__.copy()
        state["_arrays"] = MappedArrays()
        return state


def tileset_is_synthetic(ts: "TileSet") -> bool:
    """Slides of ``ts.index`` marked synthetic: ``demo-data`` writes a ``synthetic`` manifest column,
    ``tile`` records it in tileset.json (top level and per slide)."""
    if ts.meta.get("synthetic"):
        return True
    used = set(ts.index["image_id"])
    return any(str(v.get("synthetic", "")).lower() in ("true", "1") for k, v in ts.slides.items() if k in used)


def _run_dir_hint(p: Path) -> str:
    import json

    try:
        recorded = json.loads((p / "config.json").read_text(encoding="utf-8")).get("tileset", {}).get("path")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return f" (its config.json names '{recorded}')" if recorded else ""


def open_tileset(path: str | os.PathLike, option: str = "--tiles") -> "TileSet":
    """Open a TileSet, or say in one line what ``path`` is instead (missing, a loop, a run directory...)."""
    p = check_folder(path, f"{option}: TileSet folder", "make one with `clotclf tile SLIDES --out TILES`", TileSetError)
    if not (p / "tileset.json").exists():
        if (p / "config.json").is_file() or (p / "model.safetensors").is_file():
            raise TileSetError(
                f"{option} '{p}' is a run directory (from `clotclf train`), not a TileSet: pass the TileSet folder the "
                f"model should score or train on{_run_dir_hint(p)}")
        if (p / "tiles").is_dir() and (p / "tiles" / "tileset.json").is_file():
            raise TileSetError(f"{option} '{p}' is not a TileSet, but '{p / 'tiles'}' is: pass that folder")
        raise TileSetError(not_a_tileset(p, option))
    return TileSet(p)
