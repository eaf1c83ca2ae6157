"""How one synthetic demo slide is drawn: :class:`DemoSlide` (everything a drawing needs) and
:func:`render_slide` (its level-0 RGB pixels); :mod:`clotclf_core.demo.cohort` plans the cohort and writes
the files.

What a slide looks like, and why:

- Tissue blobs with irregular edges on near-white, slightly noisy glass with a few debris
  specks: tissue detection and the background filters have something real to do.
- Two clot components, both present in every slide in different proportions (a smooth random
  map decides where each one is): *fibrin/platelet-rich* (pale pink, streaky laminar bands,
  scattered nuclei) and *red-cell-rich* (packed small red discs with pale centres). CE slides
  are mostly fibrin, LAA slides mostly red cells, like the cardioembolic vs atherosclerotic
  tendency in real clots. So the class is learnable from a 224-pixel tile's texture, but
  not from one colour, and some tiles of each class look like the other class.

Content is drawn at 1 um/pixel (level 0 / 2, the demo's tiling resolution) and upsampled 2x.
The red cells and nuclei are cut from two periodic textures drawn once per cohort (at a random
offset, flip and quarter turn per slide): drawing them per slide would triple the run time.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

SIDE_RANGE = (2000, 3000)  # level-0 pixels per side


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


def draw_textures(seed: int) -> None:
    """Draw the cohort's shared red-cell and nucleus textures now (cached): before threads render slides."""
    _red_cell_texture(seed), _nuclei_texture(seed)


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
