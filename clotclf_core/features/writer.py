"""Writing a feature store (format in docs/data-formats.md; reading: :mod:`clotclf_core.features.store`).

:class:`FeatureStoreWriter` is the one writer of a store, for ``clotclf embed`` (in process and
through its workers: :mod:`clotclf_core.features.parallel`) and the synthetic stores of the
benchmarks: it checks what the folder holds against the encoder and the TileSet (refusing another
encoder or other tiles before anything is written), plans what is left to embed (``sync``), and
commits a slide (matrix, rows, a line of ``features.journal``) as soon as it is complete;
:meth:`FeatureStoreWriter.finish` folds the journal into ``features.json`` at the end of the run
(``features.json`` is written a fixed number of times per run, whatever the number of slides).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from clotclf_core import __version__
from clotclf_core.features.store import (
    DTYPE,
    FORMAT,
    FORMAT_VERSION,
    JOURNAL_NAME,
    META_NAME,
    SLIDES_DIR,
    FeatureStoreError,
    encoder_identity,
    matrix_file,
    read_rows,
    read_store_meta,
    rows_fingerprint,
)
from clotclf_core.journal import Journal
from clotclf_core.models.config import describe_encoder
from clotclf_core.plugin.io import write_csv, write_json
from clotclf_core.tiling.tileset import MANIFEST_COLUMNS, TileSet, npy_problem

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


class FeatureStoreWriter:
    """Creates or resumes a feature store folder and commits one slide at a time."""

    def __init__(self, root: str | Path, encoder: dict[str, Any], tileset: dict[str, Any], num_features: int,
                 overwrite: bool = False):
        self.root = Path(root)
        self.journal = Journal(self.root / JOURNAL_NAME)
        if self.root.exists() and not self.root.is_dir():
            raise FeatureStoreError(f"--out '{self.root}' is a file, not a folder: choose a folder for the feature store")
        has_meta = (self.root / META_NAME).is_file()
        if not has_meta and self.root.is_dir() and any(self.root.iterdir()):
            # features.json is always written first: a folder without it was not made by clotclf embed,
            # and nothing in it is ours to replace (a cohort's slides/ folder, say), --overwrite or not
            raise FeatureStoreError(
                f"--out '{self.root}' is not empty and is not a feature store (no {META_NAME}): choose a new or empty folder")
        if has_meta:
            meta = self._read_own_meta(overwrite)
        if has_meta and not overwrite:
            if encoder_identity(meta.get("encoder", {})) != encoder_identity(encoder):
                raise FeatureStoreError(
                    f"'{self.root}' holds features made with the encoder {describe_encoder(meta.get('encoder', {}))}, not "
                    f"{describe_encoder(encoder)}: choose another --out for these features, or pass --overwrite to replace them")
            if meta.get("tileset", {}).get("fingerprint") != tileset["fingerprint"]:
                raise FeatureStoreError(
                    f"'{self.root}' holds features of a TileSet cut with other tiling settings: choose another --out, or "
                    "pass --overwrite to replace them")
            self.meta = meta
            self.meta["encoder"] = encoder  # same identity; refresh the information fields (plugin version…)
            self.meta["tileset"] = tileset
        else:
            if has_meta:  # --overwrite of a feature store: only its own files go
                shutil.rmtree(self.root / SLIDES_DIR, ignore_errors=True)
            self.meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "clotclf_version": __version__,
                         "encoder": encoder, "num_features": int(num_features), "dtype": "float16",
                         "tileset": tileset, "slides": {}}
            self._write_meta()  # first, before slides/: it marks the folder as a feature store
        (self.root / SLIDES_DIR).mkdir(parents=True, exist_ok=True)

    def _read_own_meta(self, overwrite: bool) -> dict[str, Any]:
        """The existing features.json; with ``overwrite`` a damaged one is accepted (it is replaced),
        but never one that says it is something else."""
        try:
            return read_store_meta(self.root)
        except FeatureStoreError:
            if not overwrite:
                raise
            try:
                other = json.loads((self.root / META_NAME).read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError, OSError):
                return {}  # unreadable: a damaged store of ours (the name is ours), replaced
            if isinstance(other, dict) and other.get("format") == FORMAT:
                return other  # another format version of ours
            raise FeatureStoreError(
                f"'{self.root / META_NAME}' is not a clotclf feature store's, so --overwrite will not replace the folder: "
                "choose another --out") from None

    def _path(self, image_id: str, suffix: str) -> Path:
        return self.root / SLIDES_DIR / f"{image_id}{suffix}"

    def _is_intact(self, image_id: str, entry: dict[str, Any]) -> bool:
        ok = npy_problem(self._path(image_id, ".npy"), DTYPE, (int(entry.get("n_tiles", 0)), self.meta["num_features"])) is None
        return ok and self._path(image_id, ".csv").is_file()

    def sync(self, tileset: TileSet, by_slide: dict[str, "pd.DataFrame"]) -> dict[str, Any]:
        """Bring the store up to date with ``tileset`` without encoder work; return the plan:
        ``todo`` (ids to embed), ``kept``, ``relabelled``, ``removed``, ``empty``, ``redo`` (id -> why)."""
        slides = self.meta["slides"]
        plan: dict[str, Any] = {"todo": [], "kept": [], "relabelled": {}, "removed": {}, "empty": [], "redo": {}}
        listed = set(tileset.slides) | set(by_slide)
        for image_id in sorted(set(slides) - listed):
            plan["removed"][image_id] = slides.pop(image_id).get("status", "?")
        for image_id in sorted(listed):
            rows = by_slide.get(image_id)
            if rows is None or len(rows) == 0:
                ts_entry = tileset.slides.get(image_id, {})
                status = ts_entry.get("status", "done")
                reason = ts_entry.get("reason") or "the TileSet kept no tile of this slide"
                known = {c: str(ts_entry[c]) for c in (*MANIFEST_COLUMNS, "synthetic") if ts_entry.get(c) not in (None, "")}
                slides[image_id] = {"status": "no_tiles", "n_tiles": 0, "tileset_status": status, "reason": reason, **known}
                plan["empty"].append(image_id)
                continue
            entry = slides.get(image_id)
            want = {c: str(rows[c].iloc[0]) for c in MANIFEST_COLUMNS}
            if entry is None or entry.get("status") != "done":
                plan["todo"].append(image_id)
            elif entry.get("tiles_sha256") != rows_fingerprint(rows):
                plan["todo"].append(image_id)
                plan["redo"][image_id] = "tiled again (other tiles)"
            elif not self._is_intact(image_id, entry):
                plan["todo"].append(image_id)
                plan["redo"][image_id] = "its files were missing or broken"
            else:
                cols = list(MANIFEST_COLUMNS)
                stored = read_rows(self._path(image_id, ".csv"))[cols].astype(str).reset_index(drop=True)
                if not stored.equals(rows[cols].astype(str).reset_index(drop=True)):  # manifest changed, tiles did not
                    old = {c: entry.get(c, "") for c in cols}
                    write_csv(self._path(image_id, ".csv"), rows)
                    entry.update(want)
                    plan["relabelled"][image_id] = ", ".join(f"{c} {old[c]!r} -> {want[c]!r}" for c in cols if old[c] != want[c]) or "rows"
                plan["kept"].append(image_id)
        for image_id in plan["todo"]:  # not done until committed again
            slides.pop(image_id, None)
        self._write_meta()
        for image_id in plan["removed"]:
            for suffix in (".npy", ".csv"):
                self._path(image_id, suffix).unlink(missing_ok=True)
        self._delete_unused()
        return plan

    def _delete_unused(self) -> None:
        """Files of slides that are not done, and temporary files a killed run left (slides/ is ours)."""
        done = {k for k, v in self.meta["slides"].items() if v.get("status") == "done"}
        for path in (self.root / SLIDES_DIR).iterdir():
            if (path.suffix in (".npy", ".csv") and path.stem not in done) or (path.name.startswith(".") and path.suffix == ".tmp"):
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def slide(self, image_id: str, rows: "pd.DataFrame") -> Iterator[np.ndarray]:
        """Yield the slide's writable float16 (n, F) matrix (memory-mapped, in a temporary file);
        on a clean exit commit matrix, rows and ``features.json``; on an exception leave nothing."""
        with matrix_file(self._path(image_id, ".npy"), len(rows), int(self.meta["num_features"])) as out:
            yield out
        self.commit(image_id, rows)

    def commit(self, image_id: str, rows: "pd.DataFrame") -> None:
        """The slide's matrix is in place (written by :meth:`slide`, or by a worker process): its
        rows, then its line in ``features.journal``, make it part of the store."""
        write_csv(self._path(image_id, ".csv"), rows)
        entry = {"status": "done", "n_tiles": len(rows), "tiles_sha256": rows_fingerprint(rows),
                 **{c: str(rows[c].iloc[0]) for c in MANIFEST_COLUMNS}}
        self.meta["slides"][image_id] = entry
        self.journal.record(image_id, entry)

    def finish(self) -> None:
        """Fold the journal into ``features.json`` (the end of a run; readers apply the journal's
        lines meanwhile, so a run that never gets here (killed, or a script) is read the same)."""
        if self.journal.exists():
            self._write_meta()

    def _write_meta(self) -> None:
        """Rewrite ``features.json`` (slides sorted) and empty the journal it now holds."""
        self.meta["slides"] = dict(sorted(self.meta["slides"].items()))
        write_json(self.root / META_NAME, self.meta)
        self.journal.remove()  # (killed before this: its lines are applied again, to the same effect)
