"""What the composition encoder measures on one tile (numpy + scikit-image), each value named.

Units, chosen so every feature is of order 1 before any standardisation:

- stain densities: scikit-image's HED values (``rgb2hed``'s maths, without its clamp of negative
  values) times 10, so haematoxylin of a nucleus is about 1, eosin of pale fibrin about 0.15;
- RGB and HSV on 0-1; Lab divided by 100; hue as the saturation-weighted mean of cos / sin;
- area fractions of the tissue pixels, and the tissue share of the tile, on 0-1;
- GLCM contrast as log(1 + contrast); the other GLCM properties are on 0-1 (correlation -1..1);
- the uniform LBP (P=8, R=1) histogram of the tissue pixels, 10 bins summing to 1.

Statistics are over the tissue pixels (summed RGB optical density above ``tissue_od``), or over
the whole tile when it holds fewer than ``min_tissue_pixels`` (a blank tile's defined result).

Pixel classes (on the tissue pixels, in this order; each pixel in at most one):

- ``nucleated``: haematoxylin > ``nucleus_h``;
- ``red_cell``: residual (DAB) > ``red_cell_residual`` — packed red cells absorb green and blue far
  more than eosin explains, which Ruifrok's matrix puts in its third channel;
- ``fibrin_platelet``: eosin > ``fibrin_eosin``;
- ``other``: the rest (pale, unstained matter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LOG_FLOOR = float(np.log(1e-6))  # skimage's separate_stains scale
STAINS = ("haematoxylin", "eosin", "residual")
_STAIN_STATS = ("mean", "std", "p10", "p50", "p90")
_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
_GLCM_DISTANCES = (1, 3)
_LBP_BINS = 10  # uniform LBP with P = 8: codes 0..9

FEATURE_NAMES: tuple[str, ...] = (
    "tissue_fraction",
    *(f"{s}_{stat}" for s in STAINS for stat in _STAIN_STATS),
    *(f"rgb_{c}_{stat}" for stat in ("mean", "p10", "p90") for c in "rgb"),
    "hsv_hue_cos", "hsv_hue_sin", "hsv_saturation_mean", "hsv_saturation_p90", "hsv_value_mean", "hsv_value_p10",
    "lab_l_mean", "lab_l_p10", "lab_l_p90", "lab_a_mean", "lab_a_p90", "lab_b_mean", "lab_b_p90",
    "red_cell_fraction", "fibrin_platelet_fraction", "nucleated_fraction", "other_tissue_fraction",
    *(f"glcm_{p}_d{d}" for d in _GLCM_DISTANCES for p in _GLCM_PROPS),
    *(f"lbp_uniform_{i}" for i in range(_LBP_BINS)),
)


@dataclass(frozen=True)
class Thresholds:
    tissue_od: float
    min_tissue_pixels: int
    nucleus_h: float
    red_cell_residual: float
    fibrin_eosin: float
    glcm_levels: int


def _pct(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    return np.percentile(values, qs, axis=0)


def tile_features(rgb: np.ndarray, hed_from_rgb: np.ndarray, t: Thresholds) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (len(FEATURE_NAMES),)."""
    from skimage.color import rgb2hsv, rgb2lab
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    x = rgb.astype(np.float32) / 255.0
    flat = x.reshape(-1, 3)
    od = -np.log((rgb.reshape(-1, 3).astype(np.float32) + 1.0) / 256.0)
    tissue = od.sum(axis=1) > t.tissue_od
    n_tissue = int(tissue.sum())
    use = tissue if n_tissue >= t.min_tissue_pixels else np.ones_like(tissue)
    stains = (np.log(np.maximum(flat[use], 1e-6)) / _LOG_FLOOR) @ hed_from_rgb.astype(np.float32) * 10.0
    out: list[float] = [n_tissue / len(tissue)]
    p10, p50, p90 = _pct(stains, (10, 50, 90))
    for i in range(3):
        out += [float(stains[:, i].mean()), float(stains[:, i].std()), float(p10[i]), float(p50[i]), float(p90[i])]
    pix = flat[use]
    q10, q90 = _pct(pix, (10, 90))
    out += [*pix.mean(axis=0).tolist(), *q10.tolist(), *q90.tolist()]
    hsv = rgb2hsv(pix.reshape(-1, 1, 3)).reshape(-1, 3)
    angle = hsv[:, 0] * 2 * np.pi
    weight = hsv[:, 1] / max(float(hsv[:, 1].sum()), 1e-6)
    out += [float((np.cos(angle) * weight).sum()), float((np.sin(angle) * weight).sum()), float(hsv[:, 1].mean()),
            float(np.percentile(hsv[:, 1], 90)), float(hsv[:, 2].mean()), float(np.percentile(hsv[:, 2], 10))]
    lab = rgb2lab(pix.reshape(-1, 1, 3)).reshape(-1, 3) / 100.0
    l10, l90 = np.percentile(lab[:, 0], (10, 90))
    out += [float(lab[:, 0].mean()), float(l10), float(l90), float(lab[:, 1].mean()), float(np.percentile(lab[:, 1], 90)),
            float(lab[:, 2].mean()), float(np.percentile(lab[:, 2], 90))]
    if n_tissue >= t.min_tissue_pixels:
        nucleus = stains[:, 0] > t.nucleus_h
        red = ~nucleus & (stains[:, 2] > t.red_cell_residual)
        fibrin = ~nucleus & ~red & (stains[:, 1] > t.fibrin_eosin)
        n = len(stains)
        red_f, fib_f, nuc_f = red.sum() / n, fibrin.sum() / n, nucleus.sum() / n
        out += [float(red_f), float(fib_f), float(nuc_f), max(0.0, float(1.0 - red_f - fib_f - nuc_f))]
    else:
        out += [0.0, 0.0, 0.0, 0.0]
    grey = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])
    levels = int(t.glcm_levels)
    quant = np.minimum((grey * levels).astype(np.uint8), levels - 1)
    glcm = graycomatrix(quant, distances=list(_GLCM_DISTANCES), angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                        levels=levels, symmetric=True, normed=True)
    for di in range(len(_GLCM_DISTANCES)):
        for prop in _GLCM_PROPS:
            value = float(graycoprops(glcm[:, :, di:di + 1], prop).mean())
            if prop == "contrast":
                value = float(np.log1p(value))
            out.append(0.0 if not np.isfinite(value) else value)  # correlation of a flat tile is undefined: 0
    lbp = local_binary_pattern((grey * 255).astype(np.uint8), P=8, R=1, method="uniform").reshape(-1)[use]
    hist = np.bincount(lbp.astype(np.int64), minlength=_LBP_BINS)[:_LBP_BINS] / max(len(lbp), 1)
    out += hist.tolist()
    return np.asarray(out, dtype=np.float32)
