"""``clotclf embed``: every tile of a TileSet through a frozen encoder, once, into a feature store.

    embed_tileset("tiles/", "features/", "timm", {"model": "hf-hub:ORG/NAME"})

- Reads the TileSet only through its API (``index``, ``pixels``, ``slides``, ``settings``,
  ``tile_size``) and writes the feature store of :mod:`clotclf_core.features.store`.
- Batched, on the GPU when there is one (bf16 autocast on CUDA), with the next batch read from
  the memory-mapped pixel cache (and pinned) while the current one runs. Memory stays bounded: a
  couple of batches, the encoder, and the slide's output matrix, which is memory-mapped too.
- Batches never cross a slide, so a slide's features do not depend on which other slides were
  embedded in the same run: an interrupted and resumed embed gives the same bytes as one run.
- Resumable per slide: a slide is committed (matrix, rows, ``features.json``) as soon as its last
  tile is done. Running again embeds only what is missing: new slides, slides tiled again (other
  tiles), broken files. Slides whose manifest values changed (label, patient, centre) get their
  rows rewritten without re-embedding; slides gone from the TileSet are dropped.
- Refused before anything is written: another encoder than the store's (naming both), a TileSet cut
  with other settings than the store's, a non-empty folder that is not a feature store.
- Slides with no tile are listed as ``no_tiles`` with the TileSet's reason (no matrix).
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from clotclf_core import __version__
from clotclf_core.features.bags import FeatureBags
from clotclf_core.features.encoder import Encoder, build_encoder
from clotclf_core.features.store import (
    DTYPE,
    FORMAT,
    FORMAT_VERSION,
    META_NAME,
    SLIDES_DIR,
    FeatureStore,
    FeatureStoreError,
    describe_encoder,
    encoder_identity,
    read_rows,
    read_store_meta,
    rows_fingerprint,
    tileset_fingerprint,
)
from clotclf_core.plugin.errors import ClotclfError, Interrupted
from clotclf_core.plugin.io import atomic_path, write_csv, write_json
from clotclf_core.progress import bar
from clotclf_core.tiling.tileset import TileSet, npy_problem

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

MANIFEST_COLUMNS = ("patient_id", "center_id", "label")


# ----------------------------------------------------------------------------- the store being written


class FeatureStoreWriter:
    """Creates or resumes a feature store folder and commits one slide at a time."""

    def __init__(self, root: str | Path, encoder: dict[str, Any], tileset: dict[str, Any], num_features: int,
                 overwrite: bool = False):
        self.root = Path(root)
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
        n = len(rows)
        with atomic_path(self._path(image_id, ".npy"), suffix=".npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=(n, int(self.meta["num_features"])))
            try:
                yield out
                out.flush()
            finally:
                del out
        write_csv(self._path(image_id, ".csv"), rows)
        self.meta["slides"][image_id] = {"status": "done", "n_tiles": int(n), "tiles_sha256": rows_fingerprint(rows),
                                         **{c: str(rows[c].iloc[0]) for c in MANIFEST_COLUMNS}}
        self._write_meta()

    def _write_meta(self) -> None:
        self.meta["slides"] = dict(sorted(self.meta["slides"].items()))
        write_json(self.root / META_NAME, self.meta)


# ----------------------------------------------------------------------------- reading ahead


def _batches(tileset: TileSet, ids: list[str], batch_size: int, pin: bool) -> Iterator[tuple[str, int, Any]]:
    """``(image_id, start, uint8 tensor (b, S, S, 3))`` for every batch of every slide, in order."""
    for image_id in ids:
        pixels = tileset.pixels(image_id)
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(np.array(pixels[start:start + batch_size]))  # read here, in the read-ahead thread
            yield image_id, start, (batch.pin_memory() if pin else batch)


def read_ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate ``items`` with up to ``depth`` of them produced ahead by a background thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # hand the reader's error to the consumer
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="embed-read-ahead")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        thread.join(timeout=5)


# ----------------------------------------------------------------------------- the command


def _tileset_record(ts: TileSet) -> dict[str, Any]:
    """features.json's ``tileset``: its identity (fingerprint), how it was cut (settings, the filters'
    and sources' providers: what a MIL run records as its tiling recipe), where it is, synthetic or not."""
    record = {"fingerprint": tileset_fingerprint(ts.settings, ts.tile_size), "tile_pixels": int(ts.tile_size),
              "settings": ts.settings, "clotclf_version": ts.meta.get("clotclf_version"),
              "format_version": ts.meta.get("format_version"), "path": str(Path(ts.root).resolve()),
              "synthetic": bool(ts.meta.get("synthetic"))}
    if isinstance(ts.meta.get("components"), dict):
        record["components"] = ts.meta["components"]
    return record


def embed_tileset(tiles: str | Path, out: str | Path, backbone: str, options: dict[str, Any] | None = None, *,
                  input_size: int | None = None, batch_size: int = 64, device: str = "auto", seed: int = 0,
                  overwrite: bool = False, progress: bool = True, encoder: Encoder | None = None) -> dict[str, Any]:
    """Embed every tile of the TileSet ``tiles`` into the feature store ``out``; return a summary.

    ``encoder`` (already built, e.g. rebuilt from a MIL run's record) replaces ``backbone`` /
    ``options`` / ``input_size`` / ``seed``.
    """
    if batch_size < 1:
        raise ClotclfError(f"--batch-size must be at least 1, got {batch_size}")
    ts = TileSet(tiles)
    if len(ts) == 0:
        raise ClotclfError(
            f"TileSet '{tiles}' holds no tiles: no slide of it was tiled (see the statuses in its tileset.json); "
            "tile the slides again, e.g. with a lower --min-tissue"
        )
    if encoder is None:
        encoder = build_encoder(backbone, options, tile_size=ts.tile_size, input_size=input_size, device=device, seed=seed)
    record = encoder.record()
    writer = FeatureStoreWriter(out, record, _tileset_record(ts), encoder.num_features, overwrite=overwrite)
    index = ts.index
    by_slide = {k: v.reset_index(drop=True) for k, v in index.groupby("image_id", sort=True)} if len(index) else {}
    plan = writer.sync(ts, by_slide)
    todo = plan["todo"]
    total = sum(len(by_slide[i]) for i in todo)
    t0 = time.perf_counter()
    embedded: list[str] = []
    pin = encoder.device.type == "cuda"
    bar_ = bar(total=total, unit="tile", desc="embed", disable=not progress or total == 0)
    stream = read_ahead(_batches(ts, todo, batch_size, pin))
    try:
        current: tuple[str, Any] | None = None  # (image_id, the slide context manager)
        matrix = None
        for image_id, start, batch in stream:
            if current is None or current[0] != image_id:
                if current is not None:
                    current[1].__exit__(None, None, None)
                    embedded.append(current[0])
                cm = writer.slide(image_id, by_slide[image_id])
                matrix = cm.__enter__()
                current = (image_id, cm)
            feats = encoder.forward_tensor(batch).cpu().numpy()
            matrix[start:start + len(feats)] = feats
            bar_.update(len(feats))
        if current is not None:
            current[1].__exit__(None, None, None)
            embedded.append(current[0])
            current = None
    except BaseException as exc:
        if current is not None:  # the open slide's temporary matrix is removed; committed slides stay
            with contextlib.suppress(BaseException):
                current[1].__exit__(type(exc), exc, exc.__traceback__)
        if isinstance(exc, KeyboardInterrupt):
            done = len(plan["kept"]) + len(embedded)
            raise Interrupted(
                f"interrupted: {done} slide(s) have features in '{out}' ({len(embedded)} embedded in this run) and are kept; "
                "run the same command again to embed the rest") from None
        if _is_cuda_oom(exc):
            raise ClotclfError(f"the GPU ran out of memory at --batch-size {batch_size}: use a smaller --batch-size "
                               f"({len(embedded)} slide(s) were embedded and kept; run again to continue)") from None
        raise
    finally:
        stream.close()
        bar_.close()
    seconds = time.perf_counter() - t0
    return {
        "out": str(out),
        "encoder": describe_encoder(record),
        "weights_sha256": record["weights_sha256"],
        "num_features": encoder.num_features,
        "input_size": encoder.input_size,
        "normalisation": {"mean": record["mean"], "std": record["std"], "from": record["normalisation_from"]},
        "device": str(encoder.device),
        "precision": encoder.precision,
        "slides": len(writer.meta["slides"]),
        "embedded": len(embedded),
        "kept": len(plan["kept"]),
        "redone": plan["redo"],
        "relabelled": plan["relabelled"],
        "removed": plan["removed"],
        "no_tiles": {k: writer.meta["slides"][k]["reason"] for k in plan["empty"]},
        "tiles": total,
        "seconds": round(seconds, 2),
        "tiles_per_second": round(total / seconds, 1) if seconds > 0 and total else None,
    }


def embed_bags(tiles: str | Path, out: str | Path, encoder: Encoder, *, batch_size: int = 64,
               progress: bool = False) -> FeatureBags:
    """A MIL model on features scoring a TileSet: every tile of ``tiles`` embedded with the model's
    own ``encoder`` (rebuilt from its record: :func:`clotclf_core.features.encoder.encoder_from_record`)
    into the feature store ``out`` (resumable: slides already there are kept), opened as bags. The one
    "embed, then bag" of ``clotclf evaluate`` and ``clotclf predict``."""
    embed_tileset(tiles, out, encoder.backbone, encoder=encoder, batch_size=batch_size, progress=progress)
    return FeatureBags(FeatureStore(out))


def _is_cuda_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['embedded']} slide(s) embedded ({s['tiles']} tiles in {s['seconds']} s"
        + (f", {s['tiles_per_second']} tiles/s" if s["tiles_per_second"] else "") + f", {s['device']} {s['precision']}), "
        f"{s['kept']} already done; {s['slides']} slide(s) in {s['out']}",
        f"encoder: {s['encoder']}, {s['num_features']} features",
    ]
    for key, what in (("redone", "embedded again"), ("relabelled", "rows updated from the TileSet"), ("removed", "no longer in the TileSet, removed")):
        for image_id, why in s[key].items():
            lines.append(f"{image_id}: {what} ({why})")
    for image_id, reason in s["no_tiles"].items():
        lines.append(f"{image_id}: no tiles, no features ({reason})")
    return "\n".join(lines)
