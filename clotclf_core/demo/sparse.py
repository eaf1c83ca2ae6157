"""``clotclf demo-data OUT --signal sparse``: a synthetic cohort whose class shows in a few tiles only.

The standard demo cohort (:mod:`clotclf_core.demo.cohort`) puts the label in the texture of the whole
clot: CE slides are mostly fibrin, LAA slides mostly red cells, so every tile carries some of the
signal and averaging tile predictions works. Here that is switched off and the label is moved
into a few small spots, the setting where multiple-instance learning with attention should beat
averaging:

- The red-cell share of every slide is drawn from the same range (15-85 %) whatever its label:
  the bulk of the tissue says nothing about the class.
- LAA slides get 1-2 small spots of *cholesterol clefts* (needle-shaped empty slits in a pale,
  foamy matrix, as atheromatous material shows in H&E), each 80 um across. At the demo's
  tiling (448 level-0 px tiles, stride 224: tiles overlap by half) a spot's centre lies in 4
  tiles, and 4-15 of an LAA slide's 40-90 tiles touch a spot at all (seed 0, 10 patients).
  CE slides get none.
- ``OUT/markers.csv`` lists every spot (``image_id, x, y, radius`` in level-0 pixels): the ground
  truth an attention heatmap can be checked against.

Everything else (layouts, stains, patients, the manifest) is the standard cohort's, from the same
seed. The slides are synthetic: nothing learnt from them says anything about real clots.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

SIGNALS = ("texture", "sparse")
RED_RANGE = (0.15, 0.85)  # red-cell share of every slide, whatever its label
SPOTS_PER_LAA = (1, 2)
SPOT_RADIUS = 80  # level-0 pixels (40 um at the demo's 0.5 um/pixel)
MARKERS_NAME = "markers.csv"
MARKER_COLUMNS = ("image_id", "x", "y", "radius", "kind")

_MATRIX = np.array([0.90, 0.80, 0.84], np.float32)  # pale foamy matrix around the clefts
_CLEFT = np.array([0.965, 0.955, 0.965], np.float32)  # empty slit: about the colour of glass
_RIM = np.array([0.62, 0.42, 0.55], np.float32)  # thin compressed rim of each cleft


def plan(slides: list[Any], seed: int) -> list[Any]:
    """The standard plan with the red-cell share drawn independently of the label."""
    rng = np.random.default_rng([seed, 77])
    return [replace(s, red_fraction=float(rng.uniform(*RED_RANGE))) for s in slides]


def _tissue_lowres(pixels: np.ndarray, step: int) -> np.ndarray:
    """Tissue (saturated pixels, not near-white glass) on a grid of ``step`` x ``step`` blocks."""
    h, w = (pixels.shape[0] // step) * step, (pixels.shape[1] // step) * step
    blocks = pixels[:h, :w].reshape(h // step, step, w // step, step, 3).mean(axis=(1, 3))
    return (blocks.max(axis=2) - blocks.min(axis=2)) > 25


def _place(pixels: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``n`` spot centres (level-0 x, y) whose whole disk is tissue, 3 radii apart."""
    step = 16
    tissue = _tissue_lowres(pixels, step)
    r = math.ceil(SPOT_RADIUS / step) + 1
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = yy * yy + xx * xx <= r * r
    centres: list[tuple[int, int]] = []
    ys, xs = np.nonzero(tissue[r:-r, r:-r]) if tissue.shape[0] > 2 * r and tissue.shape[1] > 2 * r else ((), ())
    order = rng.permutation(len(ys)) if len(ys) else []
    for i in order[:2000]:
        cy, cx = int(ys[i]) + r, int(xs[i]) + r
        if not tissue[cy - r:cy + r + 1, cx - r:cx + r + 1][disk].all():
            continue
        x, y = cx * step + step // 2, cy * step + step // 2
        if all((x - a) ** 2 + (y - b) ** 2 >= (3 * SPOT_RADIUS) ** 2 for a, b in centres):
            centres.append((x, y))
            if len(centres) == n:
                break
    return centres


def _draw_clefts(pixels: np.ndarray, x: int, y: int, rng: np.random.Generator) -> None:
    """Cholesterol clefts in a disk of radius SPOT_RADIUS around (x, y), in place (uint8 HWC)."""
    R = SPOT_RADIUS
    y0, y1, x0, x1 = max(0, y - R), min(pixels.shape[0], y + R + 1), max(0, x - R), min(pixels.shape[1], x + R + 1)
    patch = pixels[y0:y1, x0:x1].astype(np.float32) / 255.0
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d = np.sqrt((yy - y) ** 2 + (xx - x) ** 2) / R
    spot = np.clip((1.0 - d) * 6.0, 0.0, 1.0)[..., None]  # soft edge
    tint = patch.mean(axis=(0, 1)) / np.maximum(patch.mean(), 1e-3)  # keep the slide's stain cast
    matrix = np.clip(_MATRIX * (0.85 + 0.15 * tint), 0, 1)
    out = patch + (matrix - patch) * spot * 0.9
    cleft = np.zeros(d.shape, np.float32)
    rim = np.zeros(d.shape, np.float32)
    for _ in range(int(rng.integers(7, 13))):
        theta = rng.uniform(0, math.pi)
        length, width = rng.uniform(30, 70), rng.uniform(3.0, 6.0)
        cx, cy = x + rng.uniform(-0.6, 0.6) * R, y + rng.uniform(-0.6, 0.6) * R
        u = ((xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)) / length
        v = ((yy - cy) * math.cos(theta) - (xx - cx) * math.sin(theta)) / width
        e = u * u + v * v  # < 1 inside the needle-shaped ellipse
        cleft = np.maximum(cleft, np.clip((1.0 - e) * 4.0, 0, 1))
        rim = np.maximum(rim, np.clip(1.0 - np.abs(e - 1.15) * 5.0, 0, 1))
    inside = (spot[..., 0] > 0.5).astype(np.float32)
    out += (_RIM - out) * (rim * inside * 0.6)[..., None]
    out += (_CLEFT - out) * (cleft * inside)[..., None]
    pixels[y0:y1, x0:x1] = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def add_markers(pixels: np.ndarray, slide: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``pixels`` (level 0, uint8 HWC) with the slide's spots drawn, and the spots drawn.
    Deterministic from the slide's own seed, so the order slides are drawn in does not matter."""
    if slide.label != "LAA":
        return pixels, []
    rng = np.random.default_rng([slide.seed, 99])
    n = int(rng.integers(SPOTS_PER_LAA[0], SPOTS_PER_LAA[1] + 1))
    pixels = np.array(pixels)  # writable copy
    spots = []
    for x, y in _place(pixels, n, rng):
        _draw_clefts(pixels, x, y, rng)
        spots.append({"image_id": slide.image_id, "x": x, "y": y, "radius": SPOT_RADIUS, "kind": "cholesterol_clefts"})
    return pixels, spots


def markers_csv(spots: list[dict[str, Any]]) -> str:
    from clotclf_core.plugin.io import csv_rows_text

    return csv_rows_text([{c: s[c] for c in MARKER_COLUMNS} for s in spots], list(MARKER_COLUMNS))


def readme(base: str, spots: list[dict[str, Any]]) -> str:
    """The standard README with its description of where the label is replaced by this one."""
    n_laa = len({s["image_id"] for s in spots})
    text = (f"**Signal: sparse** (`--signal sparse`). The red-cell share of every slide is drawn from "
            f"{RED_RANGE[0]:.0%}-{RED_RANGE[1]:.0%} whatever its label, so the bulk of the tissue says nothing "
            f"about the class. The label shows only in small spots of cholesterol clefts (needle-shaped empty slits "
            f"in a pale, foamy matrix, about {SPOT_RADIUS * 2 * 0.5:.0f} um across): {SPOTS_PER_LAA[0]}-{SPOTS_PER_LAA[1]} "
            f"in each LAA slide ({len(spots)} spots in {n_laa} slides), none in CE slides, so a few tiles of a "
            f"slide decide its class. `{MARKERS_NAME}` lists every spot (image_id, x, y, radius in level-0 pixels).")
    new, hits = re.subn(r"CE slides are mostly fibrin.*?resemble the other\.", lambda _: text, base, flags=re.S)
    if not hits:
        new = base.rstrip() + "\n\n" + text + "\n"
    return re.sub(r"(--patients \d+)`", r"\1 --signal sparse`", new, count=1)


def write_markers(out: Path, spots: list[dict[str, Any]]) -> Path:
    from clotclf_core.plugin.io import write_text

    path = Path(out) / MARKERS_NAME
    write_text(path, markers_csv(spots))
    return path
