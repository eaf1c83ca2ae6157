"""The run summary of ``tile_slides`` (what ``clotclf tile --json`` prints) and its table.

Documented keys (scripts rely on them): ``out, slides, skipped, relabelled, removed, tiled,
no_tissue, failed, missing, candidates, tiles_kept, rejected, tiles_in_tileset, workers, threads,
engine, seconds, per_slide[] (image_id, status, candidates, kept, seconds, reason), notes,
failures[]``. ``missing``: manifest rows without a slide file (``count``, the ``first`` few, ``why``
the first is missing, the ``list`` file naming them all); they count in ``failed`` but are not in
``per_slide`` or ``failures``.
"""

from __future__ import annotations

from typing import Any


def per_slide_row(image_id: str, status: str, info: dict[str, Any], reason: str) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "status": status,
        "candidates": int(info.get("n_candidates", 0)),
        "kept": int(info.get("n_kept", 0)) if status == "done" else 0,
        "seconds": info.get("seconds", 0.0),
        "reason": reason,
    }


def build_summary(out: str, n_slides: int, skipped: int, changes: dict[str, dict[str, str]], per_slide: list[dict[str, Any]],
                  rejected: dict[str, int], meta_slides: dict[str, dict[str, Any]], workers: int, threads: int, engine: str,
                  seconds: float, notes: list[str], missing: dict[str, Any] | None = None) -> dict[str, Any]:
    failures = [{"image_id": s["image_id"], "reason": s["reason"]} for s in per_slide if s["status"] == "failed"]
    missing = missing or {"count": 0, "first": [], "list": None}
    return {
        "out": out,
        "slides": n_slides,
        "skipped": skipped,
        "relabelled": len(changes["relabelled"]),
        "removed": len(changes["removed"]),
        "tiled": sum(1 for s in per_slide if s["status"] == "done"),
        "no_tissue": sum(1 for s in per_slide if s["status"] == "no_tissue"),
        "failed": len(failures) + missing["count"],
        "missing": missing,
        "candidates": sum(s["candidates"] for s in per_slide),
        "tiles_kept": sum(s["kept"] for s in per_slide),
        "rejected": rejected,
        "tiles_in_tileset": sum(int(v.get("n_tiles", 0)) for v in meta_slides.values() if v.get("status") == "done"),
        "workers": workers,
        "threads": threads,
        "engine": engine,
        "seconds": round(seconds, 2),
        "per_slide": per_slide,
        "notes": notes,
        "failures": failures,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table printed by ``clotclf tile``."""
    lines = [
        f"TileSet {summary['out']}: {summary['slides']} slides: {summary['tiled']} tiled, {summary['skipped']} already done"
        + "".join(f", {summary[k]} {k}" for k in ("relabelled", "removed") if summary.get(k))
        + f", {summary['no_tissue']} without tissue, {summary['failed']} failed; {summary['seconds']} s with {summary['workers']} worker(s)"
        + (f" on {summary['engine']}" if summary.get("engine") == "dask" else ""),
        f"tiles: {summary['candidates']} candidates read, {summary['tiles_kept']} kept"
        + "".join(f", {k} rejected {v}" for k, v in summary["rejected"].items())
        + f"; {summary['tiles_in_tileset']} tiles in the TileSet",
    ]
    rows = summary["per_slide"]
    if rows:
        cols = ["image_id", "status", "candidates", "kept", "seconds", "reason"]
        width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
        lines.append("  ".join(c.upper().ljust(width.get(c, 0)) for c in cols).rstrip())
        for r in rows:
            reason = r["reason"] if len(r["reason"]) <= 100 else r["reason"][:99] + "…"
            lines.append("  ".join(str(reason if c == "reason" else r[c]).ljust(width.get(c, 0)) for c in cols).rstrip())
    missing = summary.get("missing") or {"count": 0}
    if missing["count"]:
        lines.append(f"missing: {missing['count']:,} slide(s) of the manifest have no file in the slide folder, listed in "
                     f"{missing['list']} (e.g. {', '.join(missing['first'])})")
    lines.extend(f"note: {n}" for n in summary.get("notes", []))
    return "\n".join(lines)


def failure_message(summary: dict[str, Any], shown: int = 3) -> str:
    """The one-line message of a partly failed run (exit code 3): the first ``shown`` failed slides
    with their reasons (each cut to one short line), how many more, and where every one is listed —
    one line of bounded length, however many slides failed."""
    from clotclf_core.tiling.locate import shorten

    fails = summary.get("failures", [])
    missing = summary.get("missing") or {"count": 0}
    parts = [f"{shorten(f['image_id'], 80)}: {shorten(f['reason'])}" for f in fails[:shown]]
    if len(fails) > shown:
        parts.append(f"and {len(fails) - shown:,} more, each with its reason in {summary['out']}/tileset.json")
    if missing["count"]:
        others = ", ".join(f"'{shorten(i, 80)}'" for i in missing["first"][1:])
        more = missing["count"] - len(missing["first"])
        parts.append(f"{missing['count']:,} without a slide file, all listed in {missing['list']}: "
                     f"{shorten(missing['first'][0], 80)}: {missing['why']}" + (f"; also {others}" if others else "")
                     + (f" and {more:,} more" if more > 0 else ""))
    return (f"{summary['failed']:,} of {summary['slides']:,} slide(s) could not be tiled ({'; '.join(parts)}). Everything "
            f"else was written to {summary['out']}; fix or remove those slides and run the same command again (finished "
            "slides are skipped)")
