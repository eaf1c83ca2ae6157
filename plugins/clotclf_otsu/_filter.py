"""The ``otsu`` filter, batched in numpy: one histogram per tile, Otsu's threshold for all tiles at once.

Score of a tile = share of its pixels on the tissue side of its own Otsu threshold that are
also not glass-bright (grey > ``background_level``, or saturation < ``min_saturation``). Otsu
always splits a tile in two, even a blank one; two guards keep blank tiles at ~0:

- glass-bright pixels never count as tissue, whatever the threshold says;
- when the two class means are closer than ``min_contrast`` the tile is uniform and Otsu's split
  is noise; and when even the lighter class is darker than glass, Otsu split tissue from tissue
  (nuclei from stroma) in a tile without glass. In both cases the score is simply the share of
  pixels that are not glass-bright (≈1 for a tile full of tissue, ≈0 for blank glass).
"""

from __future__ import annotations

import numpy as np


def batch_otsu(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Otsu on each row of ``values`` (uint8, (N, P)).

    Returns ``(threshold, low_mean, high_mean)``, each (N,): the threshold t (class "low" is
    values <= t) and the mean value of each class. A row with a single value has both means equal.
    """
    n, p = values.shape
    offsets = (np.arange(n, dtype=np.int64) * 256)[:, None]
    hist = np.bincount((values.astype(np.int64) + offsets).ravel(), minlength=n * 256).reshape(n, 256)
    prob = hist / float(p)
    omega = np.cumsum(prob, axis=1)  # weight of the low class for each threshold
    mu = np.cumsum(prob * np.arange(256), axis=1)
    mu_t = mu[:, -1:]
    denom = omega * (1.0 - omega)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(denom > 1e-12, (mu_t * omega - mu) ** 2 / denom, -1.0)
    t = between.argmax(axis=1)
    rows = np.arange(n)
    w0 = omega[rows, t]
    valid = between[rows, t] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        m0 = mu[rows, t] / w0
        m1 = (mu_t[:, 0] - mu[rows, t]) / (1.0 - w0)
    flat = mu_t[:, 0]
    return t, np.where(valid, m0, flat), np.where(valid, m1, flat)


class OtsuFilter:
    """PatchFilter: ``score(tiles)`` = tissue fraction per tile; kept when >= ``threshold``."""

    def __init__(self, opts):
        self.opts = opts
        self.threshold = float(opts.threshold)

    def _tissue_low_values(self, tiles: np.ndarray) -> tuple[np.ndarray, float]:
        """Per-pixel values where tissue is LOW, (N, P) uint8, and the glass level in those units."""
        n = tiles.shape[0]
        rgb = tiles[..., :3]
        if self.opts.channel == "grey":
            # ITU-R 601 luma, integer arithmetic (fast, exact enough for a histogram)
            r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
            grey = (r * 299 + g * 587 + b * 114 + 500) // 1000
            return grey.astype(np.uint8).reshape(n, -1), float(self.opts.background_level)
        mx = rgb.max(axis=-1).astype(np.float32)
        mn = rgb.min(axis=-1).astype(np.float32)
        sat = np.where(mx > 0, (mx - mn) * 255.0 / np.maximum(mx, 1.0), 0.0)
        # flip so that tissue (saturated) is low, like dark pixels in grey
        low = np.rint(255.0 - sat).astype(np.uint8).reshape(n, -1)
        return low, 255.0 - float(self.opts.min_saturation)

    def score(self, tiles: np.ndarray) -> np.ndarray:
        tiles = np.asarray(tiles)
        if tiles.ndim != 4 or tiles.shape[-1] < 3 or tiles.dtype != np.uint8:
            raise ValueError(f"otsu filter needs uint8 (N, H, W, 3) tiles, got {tiles.dtype} {tiles.shape}")
        if len(tiles) == 0:
            return np.zeros(0, dtype=np.float32)
        values, glass = self._tissue_low_values(tiles)
        t, low_mean, high_mean = batch_otsu(values)
        not_glass = values < glass
        # uniform tile, or a tile whose lighter class is still tissue (no glass in it at all)
        all_one_class = ((high_mean - low_mean) < self.opts.min_contrast) | (high_mean < glass)
        tissue_side = values <= t[:, None]
        tissue = np.where(all_one_class[:, None], not_glass, tissue_side & not_glass)
        return tissue.mean(axis=1).astype(np.float32)
