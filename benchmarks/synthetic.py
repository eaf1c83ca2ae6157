"""Synthetic STRIP-AI-shaped slides for the benchmarks, with the generator's own tissue map.

Everything here is **synthetic**: smooth pink / purple "tissue" blobs (some pale, fibrin-like) over
~30 % of the area on glass with sparse specks (on grey glass the tissue colours are scaled by the
glass's: what is transmitted is the glass's light times the tissue's transmittance). Slides are generated tile by tile (never a whole
slide in memory) as single-level, tiled (512 px), deflate-compressed RGB TIFFs at 0.25 um/px, the
shape of the Mayo Clinic STRIP AI slides. Beside each slide ``<name>.tissue.npy`` holds the map the
generator drew the tissue from: one bool per 16 x 16 level-0 pixels (the tissue is painted exactly
on those cells), so what a tiler keeps can be scored against the truth (:func:`coverage`).

:func:`make_pyramid` writes a pyramidal copy of a slide (the same level-0 tiles, then levels reduced
by 4, 16, 64 ... as reduced pages, what OpenSlide reads as a generic tiled TIFF and an Aperio
scanner writes), streamed from the single-level file: level 0 is copied tile by tile, level 1 made
from bands of 4 tile rows, the smaller levels from level 1 in memory (162 MB for the mean slide).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

TIFF_TILE = 512
#: one cell of the tissue map is this many level-0 pixels a side
CELL = 16
MPP = 0.25
WHITE_GLASS = (242, 242, 242)
#: grey-green glass, as some centres' slides have it (RGB about 195-210)
GREY_GLASS = (203, 207, 198)


def _textures(rng, n, base, noise, smooth, tile=TIFF_TILE):
    out = []
    for _ in range(n):
        low = np.repeat(np.repeat(rng.normal(0, 1, (tile // 32, tile // 32, 3)), 32, 0), 32, 1)
        if noise >= 1:  # tissue: smooth variation + pixel noise
            t = np.asarray(base, float) + smooth * low + rng.normal(0, noise, (tile, tile, 3))
        else:  # glass: smooth, with sparse specks (compresses ~16x, like scanned glass)
            specks = (rng.random((tile, tile, 1)) < noise) * rng.normal(0, 3, (tile, tile, 3))
            t = np.asarray(base, float) + np.rint(smooth * low) + specks
        out.append(np.clip(np.rint(t), 0, 255).astype(np.uint8))
    return out


def tissue_path(path: Path) -> Path:
    return Path(path).with_suffix(".tissue.npy")


def make_slide(path: Path, width: int, height: int, seed: int = 0, coverage: float = 0.3,
               glass: tuple[int, int, int] = WHITE_GLASS) -> float:
    """Write a width x height single-level tiled deflate TIFF, tile by tile, and its tissue map
    (:func:`tissue_path`); returns the tissue share."""
    import tifffile
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    mh, mw = -(-height // CELL), -(-width // CELL)  # the blob map is drawn at 1/16 (from a 1/256 field, upsampled)
    ch, cw = -(-mh // 16), -(-mw // 16)
    yy, xx = np.mgrid[0:ch, 0:cw]
    field = np.zeros((ch, cw))
    for _ in range(14):
        cy, cx, s = rng.uniform(0, ch), rng.uniform(0, cw), rng.uniform(0.04, 0.12) * max(ch, cw)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    field = zoom(field, 16, order=1)[:mh, :mw]
    blobs = field > np.quantile(field, 1 - coverage)
    # the light through tissue is the glass's light times the tissue's transmittance: on other glass
    # than the white one, tissue colours scale with the glass colour (dim or tinted scans)
    light = np.asarray(glass, float) / np.asarray(WHITE_GLASS, float)
    tissue = _textures(rng, 4, (190, 90, 140) * light, 5, 14) + _textures(rng, 2, (222, 190, 212) * light, 3, 5)  # dark + pale
    glass_tiles = _textures(rng, 4, glass, 0.02, 1.0)
    k = TIFF_TILE // CELL

    def tiles():
        for ty in range(0, height, TIFF_TILE):
            for tx in range(0, width, TIFF_TILE):
                m = blobs[ty // CELL : ty // CELL + k, tx // CELL : tx // CELL + k]
                g = glass_tiles[(tx // TIFF_TILE + 3 * (ty // TIFF_TILE)) % 4]
                if not m.any():
                    yield g
                    continue
                full = np.zeros((k, k), bool)
                full[: m.shape[0], : m.shape[1]] = m
                inside = np.repeat(np.repeat(full, CELL, 0), CELL, 1)[..., None]
                yield np.where(inside, tissue[(tx // TIFF_TILE + ty // TIFF_TILE) % len(tissue)], g)

    tmp = path.with_suffix(".part")
    tifffile.imwrite(
        tmp, tiles(), shape=(height, width, 3), dtype=np.uint8, tile=(TIFF_TILE, TIFF_TILE), photometric="rgb",
        compression="deflate", compressionargs={"level": 1}, maxworkers=2, bigtiff=width * height * 3 > 2**31,
        resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER",
    )
    np.save(tissue_path(path), blobs)
    os.replace(tmp, path)
    return float(blobs.mean())


def ensure_slide(path: Path, width: int, height: int, seed: int = 0, glass: tuple[int, int, int] = WHITE_GLASS) -> Path:
    if not path.exists() or not tissue_path(path).exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        share = make_slide(path, width, height, seed, glass=glass)
        print(f"generated {path.name}: {width:,} x {height:,}, {share:.0%} tissue, {path.stat().st_size / 1e6:.0f} MB "
              f"in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def _reduce(band: np.ndarray, k: int) -> np.ndarray:
    import cv2

    h, w = band.shape[0] // k * k, band.shape[1] // k * k
    return cv2.resize(np.ascontiguousarray(band[:h, :w]), (w // k, h // k), interpolation=cv2.INTER_AREA)


def make_pyramid(src: Path, dst: Path, step: int = 4, min_side: int = 512) -> Path:
    """A pyramidal copy of the single-level tiled TIFF ``src``: level 0 copied tile by tile, then
    levels reduced by ``step``, ``step**2``... (area means) down to ``min_side`` px, as reduced pages
    of one TIFF (512-px tiles, deflate), with the same resolution tags and tissue map."""
    import shutil

    import tifffile

    if dst.exists() and tissue_path(dst).exists():
        return dst
    t0 = time.perf_counter()
    with tifffile.TiffFile(src) as tif:
        page, fh = tif.pages[0], tif.filehandle
        width, height = page.imagewidth, page.imagelength
        across = -(-width // TIFF_TILE)
        rows = -(-height // TIFF_TILE)

        def tile(i: int) -> np.ndarray:
            fh.seek(page.dataoffsets[i])
            return page.decode(fh.read(page.databytecounts[i]), i)[0][0]

        def level0():
            for i in range(len(page.dataoffsets)):
                yield tile(i)

        # level 1 from bands of `step` tile rows (whole TIFF tiles at the right / bottom edge are padded copies)
        l1 = np.zeros((height // step, width // step, 3), np.uint8)
        for r in range(0, rows, step):
            band = np.concatenate([np.concatenate([tile(rr * across + c) for c in range(across)], axis=1)
                                   for rr in range(r, min(rows, r + step))], axis=0)[: height - r * TIFF_TILE, :width]
            small = _reduce(band, step)
            y = r * TIFF_TILE // step
            l1[y : y + len(small)] = small[: len(l1) - y]
        levels = [l1]
        while min(levels[-1].shape[:2]) // step >= min_side // 2 and max(levels[-1].shape[:2]) // step >= min_side:
            levels.append(_reduce(levels[-1], step))
        tmp = dst.with_suffix(".part")
        opts = {"tile": (TIFF_TILE, TIFF_TILE), "photometric": "rgb", "compression": "deflate", "compressionargs": {"level": 1},
                "resolution": (1e4 / MPP, 1e4 / MPP), "resolutionunit": "CENTIMETER", "metadata": None}
        with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**31) as tw:
            tw.write(level0(), shape=(height, width, 3), dtype=np.uint8, **opts)
            for i, level in enumerate(levels, 1):
                res = 1e4 / (MPP * step**i)
                tw.write(level, subfiletype=1, **{**opts, "resolution": (res, res)})
    shutil.copyfile(tissue_path(src), tissue_path(dst))
    os.replace(tmp, dst)
    print(f"pyramid {dst.name}: {len(levels) + 1} levels (by {step}), {dst.stat().st_size / 1e6:.0f} MB in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return dst


def coverage(truth: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> dict[str, float]:
    """Score kept tiles against the tissue map ``truth`` (one bool per :data:`CELL` level-0 px).

    ``boxes``: (n, 4) ``x, y, width, height`` of the kept tiles in level-0 px; ``size``: the slide's
    (width, height). Returns ``coverage`` (share of the true tissue inside some kept tile) and
    ``glass`` (share of the kept area inside the slide that is not tissue; padding past the slide's
    edge is not counted), both from the union of the tiles drawn on the map's grid (a cell counts
    when its centre is inside a tile).
    """
    mh, mw = truth.shape
    diff = np.zeros((mh + 1, mw + 1), np.int32)
    for x, y, w, h in np.asarray(boxes, np.float64).reshape(-1, 4):
        # cells whose centre (c + 0.5) * CELL lies in [x, x + w)
        c0, c1 = int(np.clip(np.ceil(x / CELL - 0.5), 0, mw)), int(np.clip(np.ceil((x + w) / CELL - 0.5), 0, mw))
        r0, r1 = int(np.clip(np.ceil(y / CELL - 0.5), 0, mh)), int(np.clip(np.ceil((y + h) / CELL - 0.5), 0, mh))
        if c1 > c0 and r1 > r0:
            diff[r0, c0] += 1
            diff[r0, c1] -= 1
            diff[r1, c0] -= 1
            diff[r1, c1] += 1
    kept = diff.cumsum(0).cumsum(1)[:mh, :mw] > 0
    tissue = int(truth.sum())
    area = int(kept.sum())
    return {"coverage": float((kept & truth).sum() / max(tissue, 1)),
            "glass": float((kept & ~truth).sum() / area) if area else float("nan"),
            "kept_area_mpx": area * CELL * CELL / 1e6}
