"""A small synthetic cohort shaped like Mayo Clinic STRIP AI, for demos and end-to-end tests.

``write_demo_cohort(out)`` writes ``out/train.csv`` (the Kaggle columns ``image_id, center_id,
patient_id, image_num, label``, then ``synthetic`` = ``true``: the mark ``clotclf tile`` carries
into the TileSet and training into the model card), ``out/slides/<image_id>.tif``,
``out/README.md`` and, first of all, the marker ``out/.clotclf-demo-cohort.json``: ``--overwrite``
replaces only a folder that holds a demo cohort and nothing foreign (:func:`overwrite_problem`).
Everything is drawn from one seed, so a seed always gives the same pixels.

What the slides look like, and why:

- Tissue blobs with irregular edges on near-white, slightly noisy glass with a few debris
  specks: tissue detection and the background filters have something real to do.
- Two clot components, both present in every slide in different proportions (a smooth random
  map decides where each one is): *fibrin/platelet-rich* (pale pink, streaky laminar bands,
  scattered nuclei) and *red-cell-rich* (packed small red discs with pale centres). CE slides
  are mostly fibrin, LAA slides mostly red cells, like the cardioembolic vs atherosclerotic
  tendency in real clots. So the class is learnable from a 224-pixel tile's texture, but
  not from one colour, and some tiles of each class look like the other class.
- 4 centres, each with its own stain tint (H&E optical densities scaled per channel), assigned
  independently of the label (balanced per class), so a model cannot use the tint as a shortcut.
- Patients with 1-3 slides; about 65% CE, like STRIP AI's 72%.
- Files as in real cohorts: mostly single-level tiled deflate TIFFs (like STRIP AI), some
  pyramidal JPEG TIFFs (reduced pages, as OpenSlide reads them), some pyramids in SubIFDs, and
  one stripped TIFF (which OpenSlide refuses), 2000-3000 pixels a side at 0.5 um/pixel.

Content is drawn at 1 um/pixel (level 0 / 2, the demo's tiling resolution) and upsampled 2x.
The red cells and nuclei are cut from two periodic textures drawn once per cohort (at a random
offset, flip and quarter turn per slide): drawing them per slide would triple the run time.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clotclf_core import __version__
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import atomic_path, write_text

#: Tiling settings for the demo cohort (``TileSettings`` fields): 224-pixel tiles at 1 um/pixel,
#: overlapping by half, so that each slide gives about 35-100 tissue tiles while staying small.
DEMO_TILING: dict[str, Any] = {"downsample": 2.0, "tile_size": 224, "stride": 112}
KAGGLE_COLUMNS = ("image_id", "center_id", "patient_id", "image_num", "label")
#: the Kaggle columns, then the synthetic mark
MANIFEST_COLUMNS = (*KAGGLE_COLUMNS, "synthetic")
#: written first into a cohort folder: what ``--overwrite`` recognises as a demo cohort
MARKER = ".clotclf-demo-cohort.json"
README_TITLE = "# clotclf demo cohort (synthetic)"
DEFAULT_PATIENTS = 22
MPP = 0.5  # microns per level-0 pixel, written in the TIFF resolution tags
SIDE_RANGE = (2000, 3000)  # level-0 pixels per side
LAYOUTS = ("tiled", "pyramid", "subifd", "stripped")

#: Per-centre stain: optical density multipliers for R, G, B (>1 absorbs more of that channel).
CENTRE_STAINS = (
    (1.00, 1.00, 1.00),  # reference H&E
    (1.30, 1.15, 0.85),  # haematoxylin-heavy: purple
    (0.80, 1.20, 1.05),  # eosin-heavy: magenta-pink
    (0.85, 0.95, 1.35),  # aged / yellowed
)

#: ``--stain-shift S``: centre k's optical density gains are multiplied by ``exp(S * CENTRE_SHIFTS[k])``
#: on top of its tint, so at S = 1 each centre's stain is 15-40 % stronger or weaker per channel than
#: the reference's (a lab whose stain drifts, the confounder stain normalisation is meant to remove).
CENTRE_SHIFTS = (
    (0.35, 0.25, -0.15),  # darker, bluer
    (-0.35, 0.15, 0.30),  # less red absorbed, more blue: towards purple-grey
    (0.20, -0.35, 0.10),  # magenta
    (-0.20, -0.20, -0.30),  # pale, washed out
)
MAX_STAIN_SHIFT = 2.0


@dataclass(frozen=True)
class DemoSlide:
    """Everything needed to render one slide; drawn up front so rendering order does not matter."""

    image_id: str
    center_id: int
    patient_id: str
    image_num: int
    label: str
    width: int
    height: int
    layout: str
    red_fraction: float  # share of the tissue that is red-cell-rich
    stain: tuple[float, float, float]
    seed: int  # this slide's drawing
    texture_seed: int  # the cohort's shared red-cell and nucleus textures


# ----------------------------------------------------------------------------- the cohort plan


def plan_cohort(seed: int = 0, n_patients: int = DEFAULT_PATIENTS) -> list[DemoSlide]:
    """Patients, labels, centres, slide sizes and file layouts, deterministic from ``seed``."""
    if seed < 0:
        raise ClotclfError(f"the demo seed must be 0 or more, got --seed {seed}")
    if n_patients < 4:
        raise ClotclfError(f"the demo cohort needs at least 4 patients (2 per class), got --patients {n_patients}")
    rng = np.random.default_rng(seed)
    n_laa = max(2, round(0.35 * n_patients))
    labels = ["CE"] * (n_patients - n_laa) + ["LAA"] * n_laa
    labels = [labels[i] for i in rng.permutation(n_patients)]
    centre_ids = sorted(int(c) for c in rng.choice(np.arange(1, 12), size=len(CENTRE_STAINS), replace=False))
    centres: list[int] = [0] * n_patients
    for label in ("CE", "LAA"):  # deal centres round-robin within each class: tint independent of label
        offset = int(rng.integers(len(centre_ids)))
        members = [i for i, lab in enumerate(labels) if lab == label]
        for j, i in enumerate(members):
            centres[i] = (offset + j) % len(centre_ids)
    patient_ids = [f"{int(v):06x}" for v in rng.choice(16**6, size=n_patients, replace=False)]
    n_slides = rng.choice([1, 2, 3], size=n_patients, p=[0.6, 0.28, 0.12])
    if n_slides.max() == 1:
        n_slides[0] = 2  # always some patients with several slides
    slides = []
    for p in range(n_patients):
        for num in range(int(n_slides[p])):
            if labels[p] == "CE":
                red = float(rng.uniform(0.12, 0.42))
            else:
                red = float(rng.uniform(0.58, 0.88))
            slides.append(
                DemoSlide(
                    image_id=f"{patient_ids[p]}_{num}",
                    center_id=centre_ids[centres[p]],
                    patient_id=patient_ids[p],
                    image_num=num,
                    label=labels[p],
                    width=int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1)),
                    height=int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1)),
                    layout="tiled",
                    red_fraction=red,
                    stain=CENTRE_STAINS[centres[p]],
                    seed=int(rng.integers(2**63)),
                    texture_seed=seed,
                )
            )
    # file layouts independent of the label: one stripped, ~1/4 JPEG pyramids, ~1/6 SubIFD pyramids
    order = rng.permutation(len(slides))
    n_pyr, n_sub = round(len(slides) / 4), round(len(slides) / 6)
    layout_of = {int(order[0]): "stripped"}
    layout_of.update({int(i): "pyramid" for i in order[1 : 1 + n_pyr]})
    layout_of.update({int(i): "subifd" for i in order[1 + n_pyr : 1 + n_pyr + n_sub]})
    slides = [DemoSlide(**{**asdict(s), "layout": layout_of.get(i, "tiled")}) for i, s in enumerate(slides)]
    return sorted(slides, key=lambda s: s.image_id)


def shift_stains(slides: list[DemoSlide], shift: float) -> list[DemoSlide]:
    """``slides`` with each centre's stain pushed ``shift`` along its own direction (:data:`CENTRE_SHIFTS`;
    centres in id order). The shift is the same for both labels, so it is a confounder of the centre only."""
    if not (0.0 <= shift <= MAX_STAIN_SHIFT) or not math.isfinite(shift):
        raise ClotclfError(f"--stain-shift must be between 0 and {MAX_STAIN_SHIFT:g} (1: strong), got {shift}")
    if shift == 0:
        return slides
    ids = sorted({s.center_id for s in slides})
    out = []
    for s in slides:
        direction = CENTRE_SHIFTS[ids.index(s.center_id) % len(CENTRE_SHIFTS)]
        stain = tuple(float(g * math.exp(shift * d)) for g, d in zip(s.stain, direction))
        out.append(DemoSlide(**{**asdict(s), "stain": stain}))
    return out


# ----------------------------------------------------------------------------- textures
# Pictures are drawn channel-first, (3, h, w) float32 in 0..1, so that per-pixel weights of
# shape (h, w) broadcast over long rows (numpy is slow when the last axis is only 3 long).


def _rgb(r: float, g: float, b: float) -> np.ndarray:
    return np.array([r, g, b], np.float32)[:, None, None]


_GLASS = _rgb(0.955, 0.950, 0.958)
_FIBRIN_PALE = _rgb(0.93, 0.71, 0.82)
_FIBRIN_DENSE = _rgb(0.84, 0.45, 0.66)
_RBC = _rgb(0.80, 0.20, 0.28)
_RBC_PALLOR = _rgb(0.88, 0.42, 0.47)
_PLASMA = _rgb(0.93, 0.68, 0.78)
_NUCLEUS = _rgb(0.33, 0.20, 0.52)
_DEBRIS = _rgb(0.42, 0.38, 0.33)
#: side of the periodic textures; a multiple of the red-cell and nucleus grids, so they wrap seamlessly
_TEXTURE = 1024
_PAD = SIDE_RANGE[1] // 2 + 1  # the largest slide drawn, in drawing pixels


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-variance noise varying smoothly over about ``cell`` pixels, float32 (h, w)."""
    from PIL import Image

    small = rng.standard_normal((max(2, math.ceil(h / cell) + 1), max(2, math.ceil(w / cell) + 1))).astype(np.float32)
    big = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BICUBIC))
    return (big - big.mean()) / (big.std() + 1e-6)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _tissue_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """1-3 irregular blobs covering about half the slide, soft-edged, float32 (h, w) in 0..1."""
    yy, xx = np.ogrid[0:h, 0:w]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    n_blobs = int(rng.integers(1, 4))
    shares = rng.dirichlet(np.full(n_blobs, 3.0)) * rng.uniform(0.45, 0.6) * h * w
    field = np.full((h, w), -1.0, np.float32)
    for area in shares:
        aspect = rng.uniform(0.55, 1.8)
        a = min(math.sqrt(area / math.pi * aspect), 0.46 * w)
        b = min(area / (math.pi * a), 0.46 * h)
        theta = rng.uniform(0, math.pi)
        reach_x = abs(a * math.cos(theta)) + abs(b * math.sin(theta))
        reach_y = abs(a * math.sin(theta)) + abs(b * math.cos(theta))
        cx = rng.uniform(min(reach_x, w / 2), max(w - reach_x, w / 2))
        cy = rng.uniform(min(reach_y, h / 2), max(h - reach_y, h / 2))
        c, s = math.cos(theta), math.sin(theta)
        u = ((xx - cx) * c + (yy - cy) * s) / a
        v = ((yy - cy) * c - (xx - cx) * s) / b
        blob = 1.0 - (u * u + v * v) + 0.22 * _smooth_noise(rng, h, w, 90) + 0.06 * _smooth_noise(rng, h, w, 18)
        np.maximum(field, blob, out=field)
    return _smoothstep(field * 60.0 + 0.5)


def _fibrin(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Pale pink fibrin/platelet texture (3, h, w): wavy laminar streaks and a fibrillar grain."""
    yy, xx = np.ogrid[0:h, 0:w]
    theta, period = rng.uniform(0, math.pi), rng.uniform(10, 20)
    phase = _smooth_noise(rng, h, w, 70) * (period * 1.6)  # warps the bands
    phase += (xx * math.cos(theta)).astype(np.float32)
    phase += (yy * math.sin(theta)).astype(np.float32)
    streak = (0.5 + 0.5 * np.sin(phase * np.float32(2 * math.pi / period))) ** 3
    density = np.clip(rng.uniform(0.25, 0.45) + 0.55 * streak + 0.16 * _smooth_noise(rng, h, w, 2.5), 0, 1)
    return _FIBRIN_PALE + (_FIBRIN_DENSE - _FIBRIN_PALE) * density


@functools.lru_cache(maxsize=4)
def _red_cell_texture(seed: int) -> np.ndarray:
    """Periodic (3, 1022, 1024) texture of packed red discs ~7 um wide with pale centres.

    Drawn once per cohort (the costly part) on a hexagonal jittered grid; each slide cuts its
    own piece at a random offset and orientation (:func:`_periodic_crop`).
    """
    rng = np.random.default_rng([seed, 1])
    cell, row_h = 8, 7
    n_rows, n_cols = 146, _TEXTURE // cell  # 146 * 7 = 1022 rows: an even number of grid rows
    yy, xx = np.mgrid[0 : n_rows * row_h, 0:_TEXTURE].astype(np.float32)
    rows = (yy // row_h).astype(np.int32)
    shift = (rows % 2) * 0.5
    cols = np.floor(xx / cell - shift).astype(np.int32)  # -1 on odd rows wraps to the last column
    wrapped = cols % n_cols
    jitter = rng.uniform(-0.9, 0.9, size=(2, n_rows, n_cols)).astype(np.float32)
    radius = rng.uniform(2.8, 3.5, size=(n_rows, n_cols)).astype(np.float32)
    present = rng.random((n_rows, n_cols)) > 0.12
    shade = rng.uniform(-0.06, 0.06, size=(n_rows, n_cols)).astype(np.float32)
    cy = (rows + 0.5) * row_h + jitter[0, rows, wrapped]
    cx = (cols + 0.5 + shift) * cell + jitter[1, rows, wrapped]
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / radius[rows, wrapped]
    disc = _smoothstep((1.0 - d) * 4.0) * present[rows, wrapped]
    pallor = _smoothstep((0.45 - d) * 5.0)
    cell_rgb = _RBC + (_RBC_PALLOR - _RBC) * pallor + shade[rows, wrapped]
    return _wrap_pad((_PLASMA + (cell_rgb - _PLASMA) * disc).astype(np.float32))


@functools.lru_cache(maxsize=4)
def _nuclei_texture(seed: int) -> np.ndarray:
    """Periodic (1024, 1024) weight of scattered dark nuclei (white cells), 4-7 um wide."""
    rng = np.random.default_rng([seed, 2])
    spacing, n = 32, _TEXTURE // 32
    yy, xx = np.mgrid[0:_TEXTURE, 0:_TEXTURE].astype(np.float32)
    rows, cols = (yy // spacing).astype(np.int32), (xx // spacing).astype(np.int32)
    centre = rng.uniform(0.25, 0.75, size=(2, n, n)).astype(np.float32) * spacing
    radius = rng.uniform(2.0, 3.5, size=(n, n)).astype(np.float32)
    present = rng.random((n, n)) < 0.4
    dy = yy - (rows * spacing + centre[0, rows, cols])
    dx = xx - (cols * spacing + centre[1, rows, cols])
    d = np.sqrt(dy * dy + 1.3 * dx * dx) / radius[rows, cols]
    return _wrap_pad((_smoothstep((1.0 - d) * 3.0) * present[rows, cols]).astype(np.float32))


def _wrap_pad(texture: np.ndarray) -> np.ndarray:
    """Repeat a periodic texture by ``_PAD`` pixels down and right: any window up to ``_PAD``
    pixels a side starting within the first period is then a plain slice (no copy)."""
    return np.pad(texture, [(0, 0)] * (texture.ndim - 2) + [(0, _PAD), (0, _PAD)], mode="wrap")


def _periodic_crop(rng: np.random.Generator, texture: np.ndarray, h: int, w: int) -> np.ndarray:
    """A view of an (..., h, w) piece of a wrap-padded texture at a random offset, flip and quarter turn."""
    t = np.rot90(texture, int(rng.integers(4)), axes=(-2, -1))
    if rng.random() < 0.5:
        t = t[..., ::-1]
    y = int(rng.integers(t.shape[-2] - _PAD))
    x = int(rng.integers(t.shape[-1] - _PAD))
    return t[..., y : y + h, x : x + w]


def _stain(clot: np.ndarray, stain: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Tint tissue like a lab's staining: scale each channel's optical density ``-log(I)``
    (a per-channel power law, applied through a 256-entry table), with slide-to-slide jitter.
    Returns (3, h, w) float32 in 0..255."""
    gain = np.asarray(stain) * rng.uniform(0.92, 1.08, size=3)
    levels = np.arange(256) / 255.0
    quantised = np.clip(clot * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.stack([(255.0 * levels ** gain[c]).astype(np.float32)[quantised[c]] for c in range(3)])


def _glass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Near-white glass, (3, h, w) in 0..255: a faint tint, a slow illumination gradient, sensor noise."""
    tint = 255 * (_GLASS + rng.uniform(-0.01, 0.01, size=(3, 1, 1)).astype(np.float32))
    light = 3.0 * _smooth_noise(rng, h, w, max(h, w) / 2)
    light += rng.standard_normal((h, w), dtype=np.float32) * 1.5
    return tint + light


def _debris(rng: np.random.Generator, img: np.ndarray, tissue: np.ndarray) -> None:
    """A few dark specks (dust, stain precipitate) on the glass of ``img`` (3, h, w; 0..255), in place."""
    h, w = tissue.shape
    for _ in range(int(rng.integers(3, 9))):
        y, x = int(rng.integers(8, h - 8)), int(rng.integers(8, w - 8))
        if tissue[y, x] > 0.05:
            continue
        r = rng.uniform(1.5, 5.0)
        y0, y1, x0, x1 = y - 8, y + 9, x - 8, x + 9
        yy, xx = np.mgrid[y0:y1, x0:x1]
        speck = _smoothstep((r - np.sqrt((yy - y) ** 2 + (xx - x) ** 2)) * 1.5)
        colour = 255 * _DEBRIS * rng.uniform(0.7, 1.2)
        img[:, y0:y1, x0:x1] += (colour - img[:, y0:y1, x0:x1]) * speck


def render_slide(slide: DemoSlide) -> np.ndarray:
    """Level-0 RGB uint8 pixels (height, width, 3) of one demo slide."""
    from PIL import Image

    rng = np.random.default_rng(slide.seed)
    h, w = math.ceil(slide.height / 2), math.ceil(slide.width / 2)  # drawn at 1 um/pixel
    tissue = _tissue_mask(rng, h, w)
    # where the red-cell-rich component is: a smooth random map cut at the slide's red fraction
    mixing = _smooth_noise(rng, h, w, rng.uniform(60, 140))
    cut = float(np.quantile(mixing[::7, ::7], slide.red_fraction))
    red = _smoothstep((cut - mixing) / 0.3 + 0.5)
    clot = _fibrin(rng, h, w)
    clot += (_periodic_crop(rng, _red_cell_texture(slide.texture_seed), h, w) - clot) * red
    nuclei = _periodic_crop(rng, _nuclei_texture(slide.texture_seed), h, w) * (1 - 0.7 * red)
    clot += (_NUCLEUS - clot) * nuclei
    img = _glass(rng, h, w)
    img += (_stain(clot, slide.stain, rng) - img) * tissue
    _debris(rng, img, tissue)
    pixels = np.clip(img + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    small = Image.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(small.resize((slide.width, slide.height), Image.Resampling.BILINEAR))


# ----------------------------------------------------------------------------- files


def _write_tiff(path: Path, pixels: np.ndarray, layout: str) -> None:
    """Write ``pixels`` as a TIFF of the given layout, atomically, with 0.5 um/pixel resolution tags."""
    import tifffile
    from PIL import Image

    common = {
        "photometric": "rgb",
        "resolution": (1e4 / MPP, 1e4 / MPP),
        "resolutionunit": "CENTIMETER",
        "software": f"clotclf {__version__} demo-data",
        "metadata": None,
    }
    deflate = {"compression": "zlib", "compressionargs": {"level": 1}}
    with atomic_path(path, suffix=".tif") as tmp:
        if layout == "tiled":
            tifffile.imwrite(tmp, pixels, tile=(256, 256), description="clotclf synthetic demo slide", **deflate, **common)
        elif layout == "stripped":
            tifffile.imwrite(tmp, pixels, rowsperstrip=32, description="clotclf synthetic demo slide", **deflate, **common)
        else:
            levels = [pixels]
            while max(levels[-1].shape[:2]) > 700:
                levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
            codec = {"compression": "jpeg", "compressionargs": {"level": 90}} if layout == "pyramid" else deflate
            with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
                sub = {"subifds": len(levels) - 1} if layout == "subifd" else {}
                tw.write(levels[0], tile=(256, 256), description="clotclf synthetic demo slide", **sub, **codec, **common)
                for level in levels[1:]:
                    tw.write(level, tile=(256, 256), subfiletype=1, photometric="rgb", metadata=None, **codec)


def _demo_slide_name(name: str) -> bool:
    """A file a demo cohort's slides/ may hold: ``<6 hex>_<n>.tif`` or an atomic write's temporary."""
    import re

    return bool(re.fullmatch(r"[0-9a-f]{6}_\d+\.tif", name) or (name.startswith(".") and name.endswith(".tmp")))


def overwrite_problem(out: Path) -> str | None:
    """Why ``--overwrite`` must not replace ``out`` (None: it holds a demo cohort and nothing of the user's
    that would be deleted). Only ``slides/``, ``train.csv`` and ``README.md`` are ever replaced."""
    readme = out / "README.md"
    is_demo = (out / MARKER).is_file()
    if not is_demo and readme.is_file():  # a cohort written before the marker existed
        try:
            is_demo = readme.read_text(encoding="utf-8", errors="replace").startswith(README_TITLE)
        except OSError:
            is_demo = False
    if not is_demo:
        return (f"'{out}' does not hold a clotclf demo cohort (no {MARKER}, and no demo README.md), so --overwrite "
                "would delete your own files: choose an empty or new folder for the demo")
    slides = out / "slides"
    if slides.exists() and not slides.is_dir():
        return f"'{slides}' is a file, not the demo's slide folder: move it, or choose another folder"
    foreign = sorted(p.name for p in slides.iterdir() if not _demo_slide_name(p.name)) if slides.is_dir() else []
    if foreign:
        return (f"'{slides}' holds {len(foreign)} file(s) that are not demo slides (e.g. '{foreign[0]}'), which "
                "--overwrite would delete: move them out, or choose another folder for the demo")
    manifest = out / "train.csv"
    if manifest.is_file():
        try:
            header = manifest.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        except OSError:
            header = []
        if not header or not header[0].startswith(",".join(KAGGLE_COLUMNS)):
            return (f"'{manifest}' is not the demo's manifest (its header is {header[0][:60]!r} if any), and "
                    "--overwrite would replace it: move it, or choose another folder for the demo" if header else
                    f"'{manifest}' is not the demo's manifest: move it, or choose another folder for the demo")
    return None


def _clear_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ClotclfError(f"demo output '{out}' is a file, not a folder: choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ClotclfError(
                f"demo output folder '{out}' is not empty: choose an empty or new folder, or pass --overwrite "
                "to replace the demo cohort in it"
            )
        problem = overwrite_problem(out)
        if problem:
            raise ClotclfError(f"demo-data --overwrite refused: {problem}")
        slides = out / "slides"
        if slides.is_dir():
            shutil.rmtree(slides)
        for name in ("train.csv", "README.md", "markers.csv"):
            (out / name).unlink(missing_ok=True)


def _write_marker(out: Path, seed: int, n_patients: int, stain_shift: float = 0.0) -> None:
    import json

    write_text(out / MARKER, json.dumps({"clotclf_demo_cohort": True, "synthetic": True, "seed": seed,
                                         "patients": n_patients, "stain_shift": stain_shift,
                                         "clotclf_version": __version__}) + "\n")


def _estimated_bytes(slides: list[DemoSlide]) -> int:
    """About what the cohort takes on disk (deflate / JPEG TIFFs of these drawings: ~0.45 byte per pixel)."""
    return int(sum(s.width * s.height for s in slides) * 0.45)


def _readme(slides: list[DemoSlide], seed: int, n_patients: int) -> str:
    layouts = {k: sum(s.layout == k for s in slides) for k in LAYOUTS}
    n_ce = sum(s.label == "CE" for s in slides)
    n_centres = len({s.center_id for s in slides})
    return f"""# clotclf demo cohort (synthetic)

**These slides are synthetic.** They are not tissue and not real clots; they only mimic the
layout of the Mayo Clinic STRIP AI data so that clotclf can be demonstrated and tested on a
laptop. Nothing learnt from them says anything about real stroke clots.

Generated by clotclf {__version__}: `clotclf demo-data OUT --seed {seed} --patients {n_patients}`
(`clotclf_core.demo.cohort.write_demo_cohort`); the same seed gives the same pixels.

- `train.csv`: Kaggle STRIP AI columns `image_id, center_id, patient_id, image_num, label`;
  {n_patients} patients, {len(slides)} slides ({n_ce} CE, {len(slides) - n_ce} LAA), {n_centres} centres.
- `slides/<image_id>.tif`: RGB TIFFs, {SIDE_RANGE[0]}-{SIDE_RANGE[1]} px a side, {MPP} um/pixel in the
  resolution tags. Layouts: {layouts['tiled']} single-level tiled deflate (like STRIP AI),
  {layouts['pyramid']} pyramidal JPEG (reduced pages), {layouts['subifd']} pyramidal deflate (SubIFDs),
  {layouts['stripped']} single-level stripped deflate (OpenSlide cannot read it; the tifffile source can).

How a slide is drawn: 1-3 irregular tissue blobs on noisy near-white glass with a few debris
specks. Inside the tissue a smooth random map mixes two components: fibrin/platelet-rich
(pale pink laminar streaks, scattered nuclei) and red-cell-rich (packed red discs with pale
centres). CE slides are mostly fibrin (12-42% red cells), LAA slides mostly red cells
(58-88%), so the label is in the texture, and some tiles of each class resemble the other.
Each centre has its own stain tint, dealt to patients independently of their label.

Suggested tiling (`clotclf_core.demo.cohort.DEMO_TILING`): the slide viewed at 1/{DEMO_TILING['downsample']:g}
(1 um/pixel), tiles of {DEMO_TILING['tile_size']} pixels overlapping by half (stride {DEMO_TILING['stride']}):
about 35-100 tissue tiles per slide (seed 0, otsu filter).

    clotclf tile slides --manifest train.csv --out tiles \\
        --downsample {DEMO_TILING['downsample']:g} --tile-size {DEMO_TILING['tile_size']} --stride {DEMO_TILING['stride']}
"""


def write_demo_cohort(
    out: str | os.PathLike,
    seed: int = 0,
    n_patients: int = DEFAULT_PATIENTS,
    overwrite: bool = False,
    progress: bool = False,
    workers: int | None = None,
    signal: str = "texture",
    stain_shift: float = 0.0,
) -> Path:
    """Write the synthetic cohort into ``out``; return the manifest path ``out/train.csv``.

    Refuses a non-empty ``out`` unless ``overwrite`` (which replaces ``slides/``, ``train.csv``
    and ``README.md`` of a demo cohort and leaves other files alone; a folder that does not hold
    a demo cohort is refused, see :func:`overwrite_problem`). Every file is written atomically and the
    manifest last, so a manifest always describes complete slides. ``progress`` shows a tqdm
    bar; ``workers`` threads draw slides at once (default: the CPU count, at most 4).
    ``signal="sparse"``: the label shows in a few tiles only (:mod:`clotclf_core.demo.sparse`).
    ``stain_shift``: each centre's stain pushed further from the reference (:func:`shift_stains`).
    """
    from clotclf_core.demo import sparse as demo_sparse
    from clotclf_core.plugin.io import write_guard

    if signal not in demo_sparse.SIGNALS:
        raise ClotclfError(f"unknown --signal '{signal}': choose {' or '.join(demo_sparse.SIGNALS)}")
    out = Path(out)
    slides = plan_cohort(seed, n_patients)  # validates n_patients before touching the disk
    if signal == "sparse":
        slides = demo_sparse.plan(slides, seed)
    slides = shift_stains(slides, stain_shift)
    with write_guard("the synthetic demo cohort", out, needed=_estimated_bytes(slides),
                     after="run the same command again with --overwrite"):
        _clear_output(out, overwrite)
        (out / "slides").mkdir(parents=True, exist_ok=True)
        _write_marker(out, seed, n_patients, stain_shift)
        return _write_cohort(out, slides, seed, n_patients, progress, workers, signal, stain_shift)


def _write_cohort(out: Path, slides: list[DemoSlide], seed: int, n_patients: int, progress: bool,
                  workers: int | None, signal: str = "texture", stain_shift: float = 0.0) -> Path:
    """The slides (threads), the README, and the manifest last: a manifest always describes complete slides."""
    from clotclf_core.demo import sparse as demo_sparse
    from clotclf_core.progress import bar

    def make(slide: DemoSlide) -> list[dict[str, Any]]:
        pixels, spots = render_slide(slide), []
        if signal == "sparse":
            pixels, spots = demo_sparse.add_markers(pixels, slide)
        _write_tiff(out / "slides" / f"{slide.image_id}.tif", pixels, slide.layout)
        return spots

    _red_cell_texture(seed), _nuclei_texture(seed)  # draw the shared textures once, before the threads
    workers = workers or min(4, os.cpu_count() or 1)
    spots: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # numpy, PIL and zlib release the GIL
        for made in bar(pool.map(make, slides), total=len(slides), desc="demo slides", unit="slide", disable=not progress):
            spots += made
    rows = [",".join([*(str(getattr(s, c)) for c in KAGGLE_COLUMNS), "true"]) for s in slides]
    readme = _readme(slides, seed, n_patients)
    if signal == "sparse":
        demo_sparse.write_markers(out, spots)
        readme = demo_sparse.readme(readme, spots)
    if stain_shift:
        readme += (f"\n**Stain shift** (`--stain-shift {stain_shift:g}`): each centre's stain is pushed further from the "
                   "reference, along its own direction (`clotclf_core.demo.cohort.CENTRE_SHIFTS`), the same for both "
                   "labels: a centre confounder for leave-centre-out tests of stain normalisation.\n")
    write_text(out / "README.md", readme)
    manifest = out / "train.csv"
    write_text(manifest, "\n".join([",".join(MANIFEST_COLUMNS), *rows]) + "\n")
    return manifest


def cohort_summary(manifest: str | os.PathLike, seconds: float | None = None) -> dict[str, Any]:
    """Counts for the CLI: patients, slides and labels, centres, size on disk, the demo's tiling."""
    import pandas as pd

    manifest = Path(manifest)
    df = pd.read_csv(manifest, dtype=str)
    slide_dir = manifest.parent / "slides"
    files = [slide_dir / f"{i}.tif" for i in df["image_id"]]
    per_patient = df.groupby("patient_id").size()
    summary = {
        "manifest": str(manifest),
        "slides_dir": str(slide_dir),
        "patients": int(df["patient_id"].nunique()),
        "slides": int(len(df)),
        "slides_per_label": {k: int(v) for k, v in df["label"].value_counts().sort_index().items()},
        "patients_per_label": {k: int(v) for k, v in df.groupby("label")["patient_id"].nunique().items()},
        "patients_with_several_slides": int((per_patient > 1).sum()),
        "centres": sorted(int(c) for c in df["center_id"].unique()),
        "megabytes": round(sum(f.stat().st_size for f in files) / 1e6, 1),
        "tiling": DEMO_TILING,
    }
    if seconds is not None:
        summary["seconds"] = round(seconds, 1)
    return summary


def timed_write(out: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """:func:`write_demo_cohort` plus its :func:`cohort_summary` (with the time taken)."""
    t0 = time.perf_counter()
    manifest = write_demo_cohort(out, **kwargs)
    return cohort_summary(manifest, time.perf_counter() - t0)
