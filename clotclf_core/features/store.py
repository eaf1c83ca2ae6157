"""The feature store: what ``clotclf embed`` writes and bag-level (MIL) training reads.

A feature store is a folder (format in docs/data-formats.md)::

    features.json           format + version, the encoder (name, options, weights sha256,
                            normalisation, input size), the TileSet it came from, one entry per slide
    slides/<image_id>.npy   float16 (n_tiles, F): row i is the feature vector of the slide's tile i
    slides/<image_id>.csv   the slide's n_tiles rows of the TileSet's tiles.csv, in the same order
    features.journal        during a run: one JSON line per slide committed since features.json was written

Slides without tiles (no tissue, failed tiling) are listed in ``features.json`` with status
``no_tiles`` and have no files. Commit order per slide: the matrix, then its rows (each atomic),
then its line in ``features.journal`` (:mod:`clotclf_core.journal`: rewriting ``features.json``
after every slide made ``embed`` quadratic in the number of slides), so a slide belongs to the
store only once ``features.json`` or the journal says ``done`` and an interrupted ``embed`` leaves
only finished slides behind. ``features.json`` is rewritten when a run starts and ends, which
empties the journal; readers (:func:`read_store_meta`) apply the journal's lines on top of it.

Identity checks, both used by MIL training and prediction:

- :func:`check_encoder`: features made with another encoder than expected are refused, naming both.
- :func:`check_matches_tileset`: a feature store and a TileSet that do not describe the same
  tiles (other tiling settings, slides tiled again, slides missing) are refused, naming them.

No torch here; numpy and pandas only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from clotclf_core.journal import apply_journal_file
from clotclf_core.models.config import describe_encoder
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import csv_unescape_frame
from clotclf_core.tiling.arrays import MappedArrays
from clotclf_core.tiling.tileset import npy_problem, raise_if_out_of_files

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clotclf_core.models.config import EncoderRecord
    from clotclf_core.tiling.tileset import TileSet

FORMAT = "clotclf-features"
FORMAT_VERSION = 1
META_NAME = "features.json"
#: per-slide records since features.json was written (``{"id": ..., "slide": {...}}`` lines)
JOURNAL_NAME = "features.journal"
SLIDES_DIR = "slides"
DTYPE = np.float16
#: what makes two encoders the same encoder (everything else in the record is information)
ENCODER_IDENTITY = ("backbone", "options", "weights_sha256", "mean", "std", "input_size", "stain_normalise")
#: tile index columns that say where a tile is (the manifest columns may change without re-embedding)
GEOMETRY_COLUMNS = ("row", "x", "y", "size", "downsample")


class FeatureStoreError(ClotclfError):
    pass


# ----------------------------------------------------------------------------- fingerprints


def tileset_fingerprint(settings: dict[str, Any], tile_pixels: int) -> str:
    """sha256 of the tiling settings and cache size: equal for TileSets cut the same way."""
    blob = json.dumps({"settings": settings, "tile_pixels": int(tile_pixels)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def rows_fingerprint(rows: "pd.DataFrame") -> str:
    """sha256 of a slide's tiles: where each one is (row, x, y, size, downsample), in order."""
    h = hashlib.sha256()
    cols = [rows[c].to_numpy() for c in GEOMETRY_COLUMNS]
    for r, x, y, size, ds in zip(*cols):
        h.update(f"{int(r)},{int(x)},{int(y)},{int(size)},{float(ds)!r}\n".encode())
    return h.hexdigest()


def encoder_identity(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ENCODER_IDENTITY}


def check_encoder(store: "FeatureStore", expected: dict[str, Any], what: str = "the run") -> None:
    """Refuse features made with another encoder than ``expected`` (an encoder record), naming both."""
    got = store.encoder
    if encoder_identity(got) == encoder_identity(expected):
        return
    differ = [k for k in ENCODER_IDENTITY if got.get(k) != expected.get(k)]
    raise FeatureStoreError(
        f"the feature store '{store.root}' was made with the encoder {describe_encoder(got)}, but {what} expects "
        f"{describe_encoder(expected)} (they differ in {', '.join(differ)}): embed the tiles with that encoder "
        "(`clotclf embed --tiles TILES --backbone NAME:opts --out NEW_FOLDER`) and use the new feature store"
    )


def tileset_mismatches(store: "FeatureStore", tileset: "TileSet") -> list[str]:
    """Why ``store`` does not hold the features of ``tileset``'s tiles (empty list: it does)."""
    problems = []
    rec = store.meta.get("tileset", {})
    if rec.get("fingerprint") != tileset_fingerprint(tileset.settings, tileset.tile_size):
        problems.append("the TileSet was cut with other tiling settings than the one the features were made from")
    index = tileset.index
    by_slide = dict(tuple(index.groupby("image_id", sort=True))) if len(index) else {}
    done = store.done
    missing = sorted(set(by_slide) - set(done))
    extra = sorted(set(done) - set(by_slide))
    changed = sorted(i for i in set(done) & set(by_slide) if store.slides[i].get("tiles_sha256") != rows_fingerprint(by_slide[i]))
    for label, ids in (("slide(s) of the TileSet have no features", missing),
                       ("slide(s) with features are not (or no longer) in the TileSet", extra),
                       ("slide(s) were tiled again since they were embedded (other tiles)", changed)):
        if ids:
            more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
            problems.append(f"{len(ids)} {label}: {', '.join(ids[:3])}{more}")
    return problems


def check_matches_tileset(store: "FeatureStore", tileset: "TileSet", tiles: str | Path | None = None) -> None:
    """Refuse a feature store and a TileSet (``--features`` and ``--tiles``) that describe different
    tiles; ``tiles`` is the TileSet's folder as the user gave it (for the message)."""
    problems = tileset_mismatches(store, tileset)
    if problems:
        where = tiles if tiles is not None else getattr(tileset, "root", "TILES")
        raise FeatureStoreError(
            f"the feature store '{store.root}' does not match the TileSet '{where}': " + "; ".join(problems)
            + f". Bring the features up to date with `clotclf embed --tiles {where} --out {store.root} ...` "
            "(same encoder: it embeds only what changed), or give the TileSet the features were made from"
        )


def encoder_record(store: "FeatureStore") -> "EncoderRecord":
    """The store's encoder record, checked (what a MIL run records as its ``model.encoder``); a
    damaged one is blamed on ``features.json``, naming every problem in full."""
    from pydantic import ValidationError

    from clotclf_core.models.config import EncoderRecord
    from clotclf_core.plugin.spec import format_validation_error

    try:
        return EncoderRecord.model_validate(store.encoder)
    except ValidationError as err:
        problems = format_validation_error(err, f"the encoder record of '{store.root / META_NAME}'")
        raise FeatureStoreError(
            problems.replace(": option '", ": field '").replace("; option '", "; field '") + ". The file was edited or "
            "damaged: make the feature store again (`clotclf embed ... --overwrite`, or `clotclf import-features ... "
            "--overwrite` for imported features)") from None


# ----------------------------------------------------------------------------- reading


def read_store_meta(root: Path) -> dict[str, Any]:
    """A feature store's ``features.json``, checked (a store of the format this clotclf reads), with
    the lines of ``features.journal`` applied (the slides committed since it was written)."""
    path = root / META_NAME
    if not path.is_file():
        raise FeatureStoreError(
            f"'{root}' is not a feature store (no {META_NAME}); make one with `clotclf embed --tiles TILES --backbone NAME --out {root}`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeatureStoreError(f"'{path}' is not valid JSON ({exc}); re-run `clotclf embed` with --overwrite") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FeatureStoreError(f"'{path}' is not a clotclf feature store description (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise FeatureStoreError(
            f"feature store '{root}' has format version {meta.get('format_version')}, this clotclf reads version "
            f"{FORMAT_VERSION}; embed the tiles again with this version (`clotclf embed ... --overwrite`)")
    journal = root / JOURNAL_NAME
    try:
        apply_journal_file(journal, meta.setdefault("slides", {}))
    except OSError as exc:
        raise FeatureStoreError(f"cannot read '{journal}' ({exc.strerror}); re-run the same `clotclf embed` command, or "
                                "`clotclf embed ... --overwrite`") from None
    return meta


@contextlib.contextmanager
def matrix_file(path: Path, n: int, num_features: int) -> Iterator[np.ndarray]:
    """A slide's writable float16 (n, F) matrix, memory-mapped in a temporary file renamed onto
    ``path`` on a clean exit (nothing left on an exception): how every writer of a store writes one."""
    from clotclf_core.plugin.io import atomic_path

    with atomic_path(path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=(int(n), int(num_features)))
        try:
            yield out
            out.flush()
        finally:
            del out


def read_rows(path: Path) -> "pd.DataFrame":
    import pandas as pd

    rows = pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "center_id": str, "label": str}, keep_default_na=False)
    return csv_unescape_frame(rows)  # (written through plugin.io.write_csv)


class FeatureStore:
    """Read access to a feature store folder (every done slide's files are checked when opened)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FeatureStoreError(f"feature store folder '{self.root}' does not exist; make one with `clotclf embed`")
        self.meta = read_store_meta(self.root)
        self._arrays = MappedArrays()  # (a bounded number of memory maps: one file descriptor each)
        self._rows: dict[str, "pd.DataFrame"] = {}
        problems = [f"{self.matrix_path(i)}: {p}" for i in self.done if (p := self.slide_problem(i))]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise FeatureStoreError(
                f"feature store '{self.root}' has {len(problems)} broken slide file(s): {'; '.join(problems[:3])}{more}; "
                "re-run the same `clotclf embed` command (it embeds such slides again)")

    # ------------------------------------------------------------------ description
    @property
    def encoder(self) -> dict[str, Any]:
        """The encoder record: backbone, options, plugin / distribution / version, weights_sha256,
        mean, std, input_size, num_features, seed, precision."""
        return self.meta.get("encoder", {})

    @property
    def num_features(self) -> int:
        return int(self.meta["num_features"])

    @property
    def slides(self) -> dict[str, dict[str, Any]]:
        return self.meta.get("slides", {})

    @property
    def done(self) -> list[str]:
        """Slides with features, sorted."""
        return sorted(k for k, v in self.slides.items() if v.get("status") == "done")

    @property
    def empty(self) -> dict[str, dict[str, Any]]:
        """Slides of the TileSet without any tile (status ``no_tiles``): no features; listed with the reason."""
        return {k: v for k, v in sorted(self.slides.items()) if v.get("status") == "no_tiles"}

    def matrix_path(self, image_id: str) -> Path:
        return self.root / SLIDES_DIR / f"{image_id}.npy"

    def rows_path(self, image_id: str) -> Path:
        return self.root / SLIDES_DIR / f"{image_id}.csv"

    def slide_problem(self, image_id: str) -> str | None:
        entry = self.slides[image_id]
        problem = npy_problem(self.matrix_path(image_id), DTYPE, (int(entry.get("n_tiles", 0)), self.num_features))
        if problem is None and not self.rows_path(image_id).is_file():
            problem = f"its tile rows {self.rows_path(image_id).name} are missing"
        return problem

    # ------------------------------------------------------------------ data
    def features(self, image_id: str) -> np.ndarray:
        """The memory-mapped float16 (n_tiles, F) matrix of one slide."""
        if self.slides.get(image_id, {}).get("status") != "done":
            status = self.slides.get(image_id, {}).get("status", "not in the store")
            raise FeatureStoreError(f"slide '{image_id}' has no features in '{self.root}' ({status})")
        try:
            return self._arrays.get(image_id, self.matrix_path(image_id))
        except OSError as exc:
            raise_if_out_of_files(exc)  # (never blamed on the data)
            raise FeatureStoreError(f"cannot read '{self.matrix_path(image_id)}' ({exc.strerror or exc}); re-embed with "
                                    "`clotclf embed ... --overwrite`") from None

    def tiles(self, image_id: str) -> "pd.DataFrame":
        """The slide's tile index rows (the TileSet's tiles.csv columns); row i goes with feature row i."""
        rows = self._rows.get(image_id)
        if rows is None:
            self.features(image_id)  # same status check
            rows = self._rows[image_id] = read_rows(self.rows_path(image_id))
        return rows

    @functools.cached_property
    def index(self) -> "pd.DataFrame":
        """Every done slide's tile rows in one table (like ``TileSet.index``), with ``feature_row``:
        the row in that slide's matrix. Splits and metrics work on it unchanged. Read once."""
        import pandas as pd

        parts = [self.tiles(i).assign(feature_row=np.arange(len(self.tiles(i)))) for i in self.done]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["image_id", "feature_row"])

    def bags(self, image_ids: Iterable[str], max_tiles: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Padded float32 bags ``(B, N, F)`` and their bool mask ``(B, N)`` for these slides
        (N = the longest bag, or ``max_tiles``: the first ``max_tiles`` tiles of longer slides).
        A slide without features gives an all-False mask."""
        ids = list(image_ids)
        lengths = [int(self.slides.get(i, {}).get("n_tiles", 0)) if self.slides.get(i, {}).get("status") == "done" else 0 for i in ids]
        n = max(lengths, default=0)
        if max_tiles is not None:
            n = min(n, int(max_tiles))
        bags = np.zeros((len(ids), max(n, 1), self.num_features), dtype=np.float32)
        mask = np.zeros((len(ids), max(n, 1)), dtype=bool)
        for b, (image_id, length) in enumerate(zip(ids, lengths)):
            k = min(length, n)
            if k:
                bags[b, :k] = self.features(image_id)[:k]
                mask[b, :k] = True
        return bags, mask
