"""Manifest rows -> slide files, with one listing of the slide folder, before any slide is tiled.

A manifest may list 1,000,000 slides, most of them not in the folder (the wrong folder, a cohort
split by hand): each row is one dictionary look-up (:class:`clotclf_core.slides.open.SlideFolder`),
the rows without a file are not tiled but listed in ``OUT/missing_slides.csv`` (one ``image_id`` a
line), and every message names the first few of them only, so an error line stays one short line
whatever the manifest's length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clotclf_core.plugin.errors import ClotclfError

#: the list of manifest rows without a slide file, in the TileSet folder
MISSING_LIST = "missing_slides.csv"
#: how many ids (and reasons) a message names before "... and N more"
SHOWN = 3


def listing(slides_dir: Path, records: list[dict[str, Any]]) -> Any:
    """A :class:`SlideFolder` of ``slides_dir`` when some row has no ``path`` of its own (a manifest), else None."""
    if all(rec.get("path") for rec in records):
        return None
    from clotclf_core.slides.open import SlideFolder

    return SlideFolder(slides_dir)


def locate_all(todo: list[dict[str, Any]], folder: Any, per_slide: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """``(rows with their "path", ids without a file)``; a row several files match is a failed slide
    (its row in ``per_slide``, the reason naming the files)."""
    found, missing = [], []
    for rec in todo:
        if rec.get("path"):
            found.append(rec)
            continue
        try:
            path = folder.find(rec["image_id"])
        except ClotclfError as exc:
            per_slide.append({"image_id": rec["image_id"], "status": "failed", "candidates": 0, "kept": 0,
                              "seconds": 0.0, "reason": str(exc)})
            continue
        if path is None:
            missing.append(rec["image_id"])
        else:
            found.append({**rec, "path": str(path)})
    return found, missing


def list_missing(out: Path, missing: list[str]) -> None:
    """Write ``OUT/missing_slides.csv`` (or remove an earlier run's when nothing is missing now)."""
    from clotclf_core.plugin.io import csv_rows_text, write_text

    target = Path(out) / MISSING_LIST
    if not missing:
        target.unlink(missing_ok=True)
        return
    write_text(target, csv_rows_text([{"image_id": i} for i in missing], ["image_id"]))


def missing_example(folder: Any, missing: list[str]) -> str:
    """The first missing slides, the first with the reason in words (NFC / NFD, a name too long...)."""
    first = folder.why_missing(missing[0]) if folder is not None else f"no slide file for image_id '{missing[0]}'"
    more = ", ".join(f"'{i}'" for i in missing[1:SHOWN])
    return f"{missing[0]}: {shorten(first, 400)}" + (f"; also {more}" if more else "") + (
        f" and {len(missing) - SHOWN:,} more" if len(missing) > SHOWN else "")


def missing_summary(out: Path, missing: list[str], folder: Any) -> dict[str, Any]:
    """The summary's ``missing`` entry: how many, the first few (the first one's reason in words), and
    the file listing them all."""
    if not missing:
        return {"count": 0, "first": [], "why": "", "list": None}
    why = folder.why_missing(missing[0]) if folder is not None else f"no slide file for image_id '{missing[0]}'"
    return {"count": len(missing), "first": missing[:SHOWN], "why": shorten(why, 400), "list": str(Path(out) / MISSING_LIST)}


def shorten(text: str, limit: int = 400) -> str:
    """``text`` on one line of at most ``limit`` characters; a longer one keeps its start and its end
    (where a message says the fix), with "…" between."""
    from clotclf_core.plugin.errors import printable

    flat = printable(" ".join(str(text).split()), 10 * limit)
    if len(flat) <= limit:
        return flat
    tail = limit * 2 // 5
    return flat[: limit - tail - 3] + " … " + flat[-tail:]
