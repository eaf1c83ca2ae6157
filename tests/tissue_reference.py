"""The tissue mask written plainly (numpy and scikit-image on every pixel): what
:mod:`clotclf_core.slides.tissue` computes faster (tables, histograms of codes, OpenCV) must equal
this bit for bit (tests/test_tissue.py). It is the module as it was before that work."""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_otsu
from skimage.measure import label
from skimage.morphology import remove_small_objects

from clotclf_core.slides.tissue import DEFAULT_BACKGROUND, GLASS_MAX_SATURATION, OD_BOUNDS, SATURATION_BOUNDS

_OD = (-np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0)).astype(np.float32)


def saturation(rgb):
    mx, mn = rgb.max(axis=-1).astype(np.float32), rgb.min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0).astype(np.float32)


def clipped_otsu(values, bounds):
    v = values.ravel()
    if v.size == 0 or float(v.max()) == float(v.min()):
        return bounds[0]
    return float(np.clip(threshold_otsu(v), *bounds))


def estimate_background(rgb, valid=None, black_level=25):
    ok = rgb.max(axis=-1) >= black_level
    if valid is not None:
        ok &= valid
    grey = rgb.astype(np.float32).mean(axis=-1)
    glassy = ok & (saturation(rgb) < GLASS_MAX_SATURATION) & (grey >= 120)
    if ok.sum() == 0 or glassy.sum() < max(1, 0.01 * ok.sum()):
        return np.array(DEFAULT_BACKGROUND, np.uint8)
    hist = np.bincount(np.rint(grey[glassy]).astype(np.int64), minlength=256)[:256]
    mode = int(np.argmax(np.convolve(hist, np.ones(5), mode="same")))
    near = glassy & (np.abs(grey - mode) <= 4)
    return np.clip(np.rint(np.median(rgb[near], axis=0)), 0, 255).astype(np.uint8)


def tissue_mask(rgb, method="either", min_object_fraction=0.0005, max_hole_fraction=0.002, black_level=25,
                background=None, valid=None):
    """``(mask, background, thresholds)``."""
    bg = estimate_background(rgb, valid, black_level) if background is None else np.asarray(background, np.uint8)
    ok = rgb.max(axis=-1) >= black_level
    if valid is not None:
        ok &= valid
    masks, thresholds = [], {}
    if method in ("saturation", "either", "both"):
        sat = saturation(rgb) - float(saturation(bg.reshape(1, 1, 3))[0, 0])
        thresholds["saturation"] = clipped_otsu(sat[ok], SATURATION_BOUNDS)
        masks.append(sat > thresholds["saturation"])
    if method in ("od", "either", "both"):
        od = (_OD[rgb] - _OD[bg]).max(axis=-1)
        thresholds["od"] = clipped_otsu(od[ok], OD_BOUNDS)
        masks.append(od > thresholds["od"])
    mask = masks[0]
    for m in masks[1:]:
        mask = (mask & m) if method == "both" else (mask | m)
    return clean_mask(mask & ok, min_object_fraction, max_hole_fraction), bg, thresholds


def clean_mask(mask, min_object_fraction=0.0005, max_hole_fraction=0.002):
    area = mask.size
    min_size, max_hole = int(round(min_object_fraction * area)), int(round(max_hole_fraction * area))
    mask = remove_small_objects(mask, max_size=max(min_size - 1, 0), connectivity=2)
    if max_hole <= 0 or mask.all():
        return mask
    background = label(~mask, connectivity=1)
    fill = np.bincount(background.ravel()) <= max_hole
    fill[0] = False
    fill[np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))] = False
    return mask | fill[background]
