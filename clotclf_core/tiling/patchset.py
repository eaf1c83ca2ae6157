"""`clotclf export-patches`: a labelled tissue / background patch set cut from slides.

A learned background filter (e.g. ``mobilenetv3``) needs patches labelled tissue or background.
The public STRIP AI background set is one; this builds another from any slides, labelled by the
tissue mask of each slide's thumbnail (:func:`clotclf_core.slides.tissue.tissue_mask`), with the tile
geometry of `clotclf tile` (tiles of ``tile_size`` pixels at 1/``downsample``, saved at ``size``
pixels, the TileSet's training size) so the filter learns from tiles like those it will score:

- a grid of non-overlapping tiles covers the slide;
- a tile is **tissue** when at least ``min_tissue`` of it lies inside the mask, **background**
  when none of it, nor the mask pixels around it, does; tiles in between are left out;
- each slide gives at most ``per_slide`` tiles of each class (seeded random choice), then the
  larger class is trimmed at random so that the set is balanced 50/50.

Only the chosen tiles are read at full resolution. The whole patch set is written into a temporary
folder inside ``DATA`` and moved into place at the end, so a full disk, a read-only folder or a
Ctrl-C leaves no partial patch set (and an earlier one untouched). Output (``DATA``)::

    tissue/<image_id>_x<X>_y<Y>.png       size x size RGB (X, Y: level-0 top-left corner)
    background/<image_id>_x<X>_y<Y>.png
    patches.csv                            file, label, image_id, x, y, size, downsample, tissue_fraction
    patchset.json                          settings, counts, slides skipped and why

The labels are only as good as the mask: a filter trained on them learns to agree with it at
full resolution (and to reject debris specks, which the mask drops as too small).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from clotclf_core import __version__
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import atomic_path, csv_rows_text, write_json, write_text

LABELS = ("tissue", "background")


class PatchSetError(ClotclfError):
    pass


def slides_to_export(slides: str | Path, manifest: str | Path | None = None) -> list[tuple[str, Path]]:
    """(image_id, path) of the slides to cut patches from: one slide file, or the slide files of a
    folder (only those a manifest lists, when given; found as ``<image_id>.<ext>`` like `clotclf tile` does)."""
    from clotclf_core.inputs import why_unusable
    from clotclf_core.slides.open import SLIDE_SUFFIXES, slide_files

    root = Path(slides)
    if (problem := why_unusable(root)) is not None:
        hint = ": give a slide file or a folder of slides" if problem == "does not exist" else ""
        raise PatchSetError(f"slide path '{root}' {problem}{hint}")
    if root.is_file():
        if manifest is not None:
            raise PatchSetError(f"--manifest selects slides in a folder, but '{root}' is one file; drop --manifest or pass the folder")
        return [(root.stem, root)]
    if manifest is not None:
        from clotclf_core.slides.manifest import read_manifest
        from clotclf_core.slides.open import find_slide

        return [(i, find_slide(root, i)) for i in read_manifest(manifest, require_labels=False)["image_id"]]
    from clotclf_core.slides.manifest import manifest_from_files

    files = slide_files(root)
    if not files:
        raise PatchSetError(f"no slide files ({', '.join(SLIDE_SUFFIXES)}) in '{root}'; pass a slide file, a folder of slides, or a --manifest")
    table = manifest_from_files(files)  # checks that no two files share an image_id
    return [(i, Path(p)) for i, p in zip(table["image_id"], table["path"])]


def labelled_cells(mask: np.ndarray, dims: tuple[int, int], side: int, min_tissue: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Grid cells of ``side`` level-0 px labelled by ``mask`` (which spans the whole slide):
    ``{"tissue": (xy, fraction), "background": (xy, fraction)}``.

    Background cells must not touch the mask even one mask pixel away (the mask is dilated by
    one pixel first), so a coarse mask's edge never leaks tissue into the background class.
    """
    from clotclf_core.tiling.grid import candidate_grid, grow

    tissue_xy, tissue_frac = candidate_grid(mask, dims, side, side, min_tissue)
    glass = ~grow(mask)
    glass_xy, _ = candidate_grid(glass, dims, side, side, 1.0)
    return {"tissue": (tissue_xy, tissue_frac), "background": (glass_xy, np.zeros(len(glass_xy), np.float32))}


def _csv(rows: list[dict[str, Any]]) -> str:
    return csv_rows_text(rows, list(rows[0]))


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def export_patches(
    slides: str | Path,
    out: str | Path,
    manifest: str | Path | None = None,
    per_slide: int = 20,
    size: int = 224,
    tile_size: int = 224,
    downsample: float = 4.0,
    min_tissue: float = 0.75,
    thumbnail_size: int = 2048,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    tissue_method: str = "either",
    trust_declared_size: bool = False,
) -> dict[str, Any]:
    """Write a balanced tissue / background patch set into ``out``; returns patchset.json's content.
    ``trust_declared_size``: read TIFFs whose declared size passes the memory caps
    (:mod:`clotclf_core.slides.guard`)."""
    from clotclf_core.progress import bar
    from clotclf_core.slides.open import open_slide
    from clotclf_core.slides.tissue import tissue_mask

    if tissue_method not in ("saturation", "od", "either", "both"):
        raise PatchSetError(f"--tissue-method must be saturation, od, either or both (got {tissue_method!r})")
    if per_slide < 1:
        raise PatchSetError(f"--per-slide must be at least 1 (got {per_slide})")
    if not 16 <= size <= 4096:
        raise PatchSetError(f"--size must be between 16 and 4096 pixels (got {size})")
    if tile_size < 8:
        raise PatchSetError(f"--tile-size must be at least 8 pixels (got {tile_size})")
    if not (downsample >= 1 and math.isfinite(downsample)):
        raise PatchSetError(f"--downsample must be a number >= 1 (got {downsample})")
    if thumbnail_size < 64:
        raise PatchSetError(f"--thumbnail-size must be at least 64 pixels (got {thumbnail_size})")
    if not 0 < min_tissue <= 1:
        raise PatchSetError(f"--min-tissue must be in (0, 1] (got {min_tissue})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PatchSetError(f"--out '{out}' is a file; give a folder")
    used = [out / n for n in (*LABELS, "patches.csv", "patchset.json") if (out / n).exists()]
    if used and not overwrite:
        raise PatchSetError(f"--out '{out}' already holds a patch set ({used[0].name}); choose another folder or pass --overwrite")
    todo = slides_to_export(slides, manifest)
    side = max(1, round(tile_size * downsample))  # level-0 pixels per patch, as in `clotclf tile`
    rng = np.random.default_rng(seed)

    # pass 1: thumbnails and masks only; choose at most per_slide cells of each class per slide
    chosen: dict[str, list[tuple[str, int, int, float]]] = {k: [] for k in LABELS}
    paths: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for image_id, path in bar(todo, desc="finding tissue", unit="slide", disable=not progress):
        try:
            slide = open_slide(path, trust_declared_size=trust_declared_size)
        except ClotclfError as exc:
            skipped[image_id] = str(exc)
            continue
        try:
            if slide.dimensions[0] < side or slide.dimensions[1] < side:
                skipped[image_id] = f"smaller than one patch ({slide.dimensions[0]}x{slide.dimensions[1]} < {side} px)"
                continue
            thumb = np.asarray(slide.thumbnail(thumbnail_size))[..., :3].astype(np.uint8, copy=False)
            cands = labelled_cells(tissue_mask(thumb, method=tissue_method), tuple(slide.dimensions), side, min_tissue)
        finally:
            slide.close()
        paths[image_id] = path
        for label in LABELS:
            xy, frac = cands[label]
            pick = rng.permutation(len(xy))[:per_slide]
            chosen[label] += [(image_id, int(xy[i, 0]), int(xy[i, 1]), float(frac[i])) for i in sorted(pick)]
    if not paths:
        first = next(iter(skipped.items()))
        raise PatchSetError(f"no slide could be read (e.g. '{first[0]}': {first[1]})")
    n = min(len(chosen["tissue"]), len(chosen["background"]))
    if n == 0:
        empty = "tissue" if not chosen["tissue"] else "background"
        raise PatchSetError(
            f"the slides gave no {empty} patches of {side} level-0 px: use a smaller --tile-size or --downsample"
            + (", or a lower --min-tissue" if empty == "tissue" else ", or add slides with visible glass")
        )
    for label in LABELS:  # balance 50/50, keeping reading order (slide, y, x)
        keep = np.sort(rng.permutation(len(chosen[label]))[:n])
        chosen[label] = [chosen[label][i] for i in keep]

    # pass 2: read the chosen cells, slide by slide, into a temporary folder moved into place at the end
    settings = {"per_slide": per_slide, "size": size, "tile_size": tile_size, "downsample": downsample,
                "tile_size_level0": side, "min_tissue": min_tissue, "seed": seed,
                "thumbnail_size": thumbnail_size, "tissue_method": tissue_method}
    created = not out.exists()
    try:
        return _write(out, paths, chosen, n, side, size, downsample, settings, skipped, overwrite, progress,
                      trust_declared_size)
    except BaseException as exc:
        if created:  # leave no empty folder behind either
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _write_error(exc, out, 2 * n * size * size * 3) from None
        raise


def _write_error(exc: OSError, out: Path, needed: int) -> ClotclfError:
    from clotclf_core.plugin.errors import os_error_message

    return PatchSetError(os_error_message(exc, "the patch set", out, needed) or f"cannot write the patch set in '{out}': {exc}")


def _write(out: Path, paths: dict[str, Path], chosen: dict[str, list[tuple[str, int, int, float]]], n: int, side: int,
           size: int, downsample: float, settings: dict[str, Any], skipped: dict[str, str], overwrite: bool,
           progress: bool, trust_declared_size: bool = False) -> dict[str, Any]:
    import tempfile

    from clotclf_core.progress import bar as progress_bar
    from clotclf_core.slides.open import open_slide

    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".patchset-", suffix=".tmp", dir=out))
    try:
        for name in LABELS:
            (stage / name).mkdir()
        by_slide: dict[str, list[tuple[str, int, int, float]]] = {}
        for label in LABELS:
            for image_id, x, y, frac in chosen[label]:
                by_slide.setdefault(image_id, []).append((label, x, y, frac))
        rows = []
        counts = {image_id: dict.fromkeys(LABELS, 0) for image_id in paths}
        bar = progress_bar(total=2 * n, desc="cutting patches", unit="patch", disable=not progress)
        try:
            for image_id, wanted in by_slide.items():
                slide = open_slide(paths[image_id], trust_declared_size=trust_declared_size)
                try:
                    for label, x, y, frac in sorted(wanted, key=lambda r: (r[2], r[1])):
                        pixels = np.asarray(slide.read_region(x, y, side, side, side / size), dtype=np.uint8)[..., :3]
                        if pixels.shape[:2] != (size, size):  # rounding of a fractional downsample
                            from PIL import Image

                            pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
                        name = f"{label}/{image_id}_x{x}_y{y}.png"
                        _save_png(stage / name, pixels)
                        rows.append({"file": name, "label": label, "image_id": image_id, "x": x, "y": y, "size": side,
                                     "downsample": downsample, "tissue_fraction": round(frac, 4)})
                        counts[image_id][label] += 1
                        bar.update(1)
                finally:
                    slide.close()
        finally:
            bar.close()
        write_text(stage / "patches.csv", _csv(rows))
        summary = {
            "format": "clotclf-patchset",
            "clotclf_version": __version__,
            "settings": settings,
            "n_tissue": n,
            "n_background": n,
            "slides_used": len(paths),
            "slides_skipped": skipped,
            "per_slide_counts": counts,
        }
        write_json(stage / "patchset.json", summary)
        # move into place: an earlier patch set goes only once the new one is complete
        for name in (*LABELS, "patches.csv", "patchset.json"):
            old = out / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        for name in (*LABELS, "patches.csv", "patchset.json"):
            os.replace(stage / name, out / name)
        return summary
    finally:
        shutil.rmtree(stage, ignore_errors=True)
