"""Slides -> TileSet: :func:`tile_slides` (a cohort, resumable) and :func:`tile_slide` (one open slide).

A re-run skips finished slides (``failed`` ones are retried, and so are slides whose files are
missing or broken, and slides whose file changed since it was tiled: size and content
fingerprint), after bringing the TileSet up to date with the current manifest: new patient /
centre / label values go into ``tileset.json`` without pixel work, and slides it no longer lists
leave the TileSet.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from clotclf_core.plugin.errors import ClotclfError, Interrupted
from clotclf_core.slides.open import SLIDE_SUFFIXES, slide_files
from clotclf_core.tiling.filters import BuiltFilter, FilterRef, as_built, check_coords_only, filters_for
from clotclf_core.tiling.locate import (
    MISSING_LIST,
    list_missing,
    listing,
    locate_all,
    missing_example,
    missing_summary,
    shorten,
)
from clotclf_core.tiling.settings import TileSettings, TilingError
from clotclf_core.tiling.summary import build_summary, per_slide_row


def tile_slide(
    slide: Any,
    settings: TileSettings | None = None,
    filters: Sequence[FilterRef | BuiltFilter] = (("otsu", {}),),
    threads: int = 1,
) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """Tile one open Slide without writing anything.

    Returns ``(pixels, rows, info)``: uint8 (n, S, S, 3) kept tiles at ``train_size`` (None with
    ``settings.coords_only``), one dict per
    kept tile (x, y, size, downsample, level0_px_per_pixel, tissue, darkness, score_<filter>...)
    and facts about the slide (``info["rejected_rows"]`` holds the rejected candidates). A slide
    without tissue gives zero tiles and ``info["status"] == "no_tissue"`` with the reason; a slide
    that cannot be tiled raises :class:`SlideSkip`. The result does not depend on ``threads``.
    """
    from clotclf_core.tiling.pipeline import MemorySink, tile_one

    settings = settings or TileSettings()
    sink = MemorySink(settings.train_size)
    res = tile_one(slide, settings, as_built(filters), sink, threads)
    kept = [r for r in res.rows if r["kept"]]
    kept.sort(key=lambda r: r["row"])
    res.info.update(status=res.status, rejected_rows=[r for r in res.rows if not r["kept"]])
    if res.reason:
        res.info["reason"] = res.reason
    return (None if settings.coords_only else sink.pixels), kept, res.info


def _components(built: list[BuiltFilter], source: str | None) -> dict[str, Any]:
    """Every filter and source that may be used, with its plugin, distribution and version."""
    from clotclf_core.config import parse_component_ref
    from clotclf_core.plugin_manager import get_manager

    mgr = get_manager()
    specs = [mgr.get("source", parse_component_ref(source, "--source")[0])] if source else list(mgr.components("source"))
    return {
        "filters": [{"name": b.name, **b.component} for b in built],
        "sources": [{"name": s.name, "plugin": s.plugin, "distribution": s.distribution, "version": s.version} for s in specs],
    }


def _output_failure(exc: OSError, out: Path) -> ClotclfError:
    from clotclf_core.plugin.errors import os_error_message

    return TilingError(os_error_message(exc, "the TileSet", out, "its index needs a few MiB, each slide its tiles: ~150 KiB per 224-px tile", "run the same command to resume") or f"cannot write the TileSet folder '{out}': {exc}")


def tile_slides(
    slides_dir: str | Path,
    out: str | Path,
    manifest: str | Path | None = None,
    settings: TileSettings | None = None,
    filters: Sequence[FilterRef] = (("otsu", {}),),
    source: str | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    labels: Iterable[str] = ("CE", "LAA"),
    require_labels: bool = False,
    threads: int | None = None,
    dask: str | None = None,
    scratch_dir: str | None = None,
    require_tiles: bool = True,
    trust_declared_size: bool = False,
) -> dict[str, Any]:
    """Tile every slide of ``slides_dir`` (those of ``manifest``, or every slide file) into a TileSet.

    Returns the summary (also what ``clotclf tile --json`` prints; see
    :mod:`clotclf_core.tiling.summary`). Raises :class:`TilingError` when it cannot start (no
    folder, no slide files, unreachable Dask scheduler, unwritable ``out``) or when no slide at all
    could be tiled, and :class:`clotclf_core.plugin.errors.Interrupted` on Ctrl-C (finished slides kept).
    ``threads``: decoding threads per worker (default: the CPU cores shared among the workers, at
    most 8). ``dask``: a scheduler address (``tcp://host:8786``) or ``local``; default: local processes.
    ``scratch_dir``: where large working rasters go (default: ``TMPDIR``).
    ``require_tiles=False`` returns the summary even when no slide gave a tile (``predict``, which
    still owes every patient a row). ``trust_declared_size``: read TIFFs whose declared size passes
    the memory caps (:mod:`clotclf_core.slides.guard`).

    Manifest rows whose slide file is not in ``slides_dir`` are not tiled: they are listed in
    ``OUT/missing_slides.csv`` (and counted in the summary's ``missing``), and the error line names
    the first few only, however many there are.
    """
    from clotclf_core import progress as bars
    from clotclf_core.inputs import check_folder
    from clotclf_core.slides.manifest import manifest_from_files, read_manifest
    from clotclf_core.tiling.execution import DaskCluster, file_fingerprint, make_engine
    from clotclf_core.tiling.tileset import MANIFEST_COLUMNS
    from clotclf_core.tiling.writer import TileSetWriter

    t_start = time.perf_counter()
    settings = settings or TileSettings()
    slides_dir, out = Path(slides_dir), Path(out)
    check_folder(slides_dir, "slide folder", "check the SLIDES argument", TilingError)  # a loop is not "does not exist"
    if workers < 1:
        raise TilingError(f"--workers must be at least 1 (got {workers})")
    if threads is None:
        threads = min(8, max(1, (os.cpu_count() or 1) // workers))  # each thread holds one decoded segment
    if threads < 1:
        raise TilingError(f"--threads must be at least 1 (got {threads})")
    if manifest is not None:
        df = read_manifest(manifest, labels=labels, require_labels=require_labels)
    else:
        files = slide_files(slides_dir)
        if not files:
            raise TilingError(
                f"no slide files ({', '.join(SLIDE_SUFFIXES)}) in '{slides_dir}'; pass the folder holding the slides, "
                "or a --manifest"
            )
        df = manifest_from_files(files)
    if source:  # fail now on an unknown source, not once per slide
        from clotclf_core.config import parse_component_ref
        from clotclf_core.plugin_manager import get_manager

        name, options = parse_component_ref(source, "--source")
        get_manager().get("source", name).validate_options(options)

    refs = [(str(n), dict(o or {})) for n, o in filters]
    built = filters_for(refs)
    check_coords_only(built, settings.coords_only)  # before anything is written
    recorded = {**settings.record(), "filters": [b.describe() for b in built], "source": source or "auto"}
    records = df.to_dict("records")
    listed = {rec["image_id"]: {c: rec.get(c, "") for c in MANIFEST_COLUMNS} for rec in records}
    marks = {rec["image_id"]: mark for rec in records if (mark := synthetic_mark(rec)) is not None}
    engine = None
    try:
        # connect before anything is written: an unreachable scheduler leaves no folder behind
        engine = DaskCluster(dask, workers) if dask else None
        try:
            writer = TileSetWriter(out, recorded, tile_pixels=settings.train_size, overwrite=overwrite,
                                   components=_components(built, source))
            changes = writer.sync(listed)
        except OSError as exc:
            raise _output_failure(exc, out) from None
        listed_in = "manifest" if manifest is not None else "slide folder"
        per_slide: list[dict[str, Any]] = [
            {"image_id": k, "status": "removed", "candidates": 0, "kept": 0, "seconds": 0.0, "reason": f"no longer in the {listed_in} ({why})"}
            for k, why in changes["removed"].items()
        ] + [
            {"image_id": k, "status": "relabelled", "candidates": 0, "kept": 0, "seconds": 0.0, "reason": what}
            for k, what in changes["relabelled"].items()
        ]
        notes = list(df.attrs.get("notes", []))
        notes += [f"{k}: its files were broken ({why}); tiling it again" for k, why in writer.broken.items() if k not in changes["removed"]]
        folder = listing(slides_dir, records)
        todo, skipped = [], []
        for rec in records:
            meta = writer.meta["slides"].get(rec["image_id"], {})
            if meta.get("status") in ("done", "no_tissue") and not _changed(rec, meta, folder, file_fingerprint, notes):
                skipped.append(rec)
            else:
                if meta.get("status") in ("done", "no_tissue"):
                    writer.forget(rec["image_id"])
                todo.append(rec)
        todo, missing = locate_all(todo, folder, per_slide)
        try:
            list_missing(out, missing)
        except OSError as exc:
            raise _output_failure(exc, out) from None
        jobs = [
            {"image_id": rec["image_id"], "path": os.path.realpath(rec["path"]),  # (realpath: a link loop is the guard's to name)
             "folder": str(slides_dir.resolve()), "source": source,
             "settings": settings.model_dump(), "filters": refs, "out": str(out.resolve()), "threads": threads,
             "scratch": scratch_dir, "qc": True, "trust_declared_size": trust_declared_size}
            for rec in todo
        ]
        rejected = {b.name: 0 for b in built}
        overall = bars.bar(total=len(jobs), desc="slides", unit="slide", disable=not progress)
        inner = bars.bar(total=0, desc="tiles", unit="row", leave=False, inner=True, disable=not progress)
        if engine is None:
            engine = make_engine(workers, len(jobs), inner if progress else None)
        finished: list[str] = []

        def commit(res: dict[str, Any]) -> None:
            if res.get("fatal"):
                raise TilingError(res["fatal"])
            image_id = res["image_id"]
            info = res["info"]
            if image_id in marks:
                info = {**info, "synthetic": marks[image_id]}
            try:
                writer.commit(image_id, res["status"], info, listed[image_id], res["reason"])
            except OSError as exc:
                raise _output_failure(exc, out) from None
            for k, v in (info.get("rejected") or {}).items():
                rejected[k] = rejected.get(k, 0) + v
            per_slide.append(per_slide_row(image_id, res["status"], info, res["reason"]))
            notes.extend(f"{image_id}: {info[k]}" for k in ("mpp_note", "levels_note") if info.get(k))
            finished.append(image_id)
            overall.update()

        try:
            engine.run(jobs, commit)
        except KeyboardInterrupt:
            done_now = sum(1 for v in writer.meta["slides"].values() if v.get("status") == "done")
            raise Interrupted(
                f"interrupted: {len(finished)} slide(s) finished in this run and kept ({done_now} tiled slides in '{out}'); "
                f"the slide(s) in progress were discarded. Run the same command again to resume: finished slides are skipped"
            ) from None
        finally:
            overall.close()
            inner.close()
    finally:
        if engine is not None:
            engine.close()

    writer.meta["geometry"] = _geometry_of(writer.meta["slides"])
    # true as soon as one slide of the manifest is synthetic (demo-data marks its slides): training,
    # the model card and list-models say so wherever the numbers appear
    writer.meta["synthetic"] = any(marks.values())
    try:
        writer.merge_index()  # one tiles.csv for fast reading (the shards stay the truth)
    except OSError as exc:
        raise _output_failure(exc, out) from None
    summary = build_summary(str(out), len(records), len(skipped), changes, per_slide, rejected, writer.meta["slides"],
                            workers, threads, engine.name, time.perf_counter() - t_start, notes, missing_summary(out, missing, folder))
    done_total = sum(1 for v in writer.meta["slides"].values() if v.get("status") == "done")
    if done_total == 0 and require_tiles:
        tried = [s for s in per_slide if s["status"] in ("failed", "no_tissue")]
        reasons = "; ".join(f"{s['image_id']}: {shorten(s['reason'])}" for s in tried[:3])
        gone = (f"{len(missing):,} have no slide file in '{slides_dir}' (listed in {out / MISSING_LIST}; "
                f"e.g. {missing_example(folder, missing)}); " if missing else "")
        raise TilingError(
            f"no slide could be tiled ({summary['failed']:,} failed, {summary['no_tissue']:,} without tissue): {gone}{reasons}"
            + (" ..." if len(tried) > 3 else "")
            + f". Statuses are in {out / 'tileset.json'}"
        )
    return summary


def synthetic_mark(rec: dict[str, Any]) -> bool | None:
    """A manifest row's ``synthetic`` column (``demo-data`` writes ``true``) as a bool; ``None``
    without the column."""
    if "synthetic" not in rec:
        return None
    return str(rec["synthetic"]).strip().lower() in ("true", "1", "yes")


def _geometry_of(slides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What one cached pixel stands for across the TileSet's tiled slides (level-0 px, microns)."""
    done = [v for v in slides.values() if v.get("status") == "done"]
    px = sorted({v["level0_px_per_pixel"] for v in done if v.get("level0_px_per_pixel") is not None})
    um = [v["um_per_pixel"] for v in done if v.get("um_per_pixel") is not None]
    return {"level0_px_per_pixel": px[0] if len(px) == 1 else px,
            "um_per_pixel": (round(min(um), 4), round(max(um), 4)) if um else None,
            "slides_without_mpp": sum(1 for v in done if v.get("um_per_pixel") is None)}


def _changed(rec: dict[str, Any], meta: dict[str, Any], folder: Any, fingerprint: Any, notes: list[str]) -> bool:
    """Whether a finished slide's file was replaced since it was tiled (then it is tiled again)."""
    old = meta.get("fingerprint")
    if not old:
        return False
    try:
        path = rec.get("path") or (folder.find(rec["image_id"]) if folder is not None else None)
        if path is None:
            return False
        now = fingerprint(path)
    except (ClotclfError, OSError):
        return False  # gone: the slide keeps its tiles; a manifest that drops it removes it
    if now != old:
        notes.append(f"{rec['image_id']}: the slide file changed since it was tiled (size/content {old} -> {now}); tiling it again")
        return True
    return False
