"""Where tissue is, guessed from the compressed size of each TIFF tile, without decoding: tiling's
reader (:mod:`clotclf_core.tiling.reading`) skips decoding glass far from any busy tile.
"""

from __future__ import annotations

import numpy as np

from clotclf_core.slides.tissue import otsu_of_values


def byte_count_prescreen(
    counts: np.ndarray, coverage: np.ndarray | None = None, min_ratio: float = 1.5, min_separation: float = 0.8
) -> np.ndarray | None:
    """Likely-tissue cells of a tiled image from the compressed size of each tile (no decoding).

    Blank glass compresses better than tissue, so Otsu's threshold on log(bytes) splits the tiles
    into "busy" and "quiet". Returns the boolean busy map, or ``None`` when the sizes do not fall
    into two clear groups: the classes' typical sizes differ by less than ``min_ratio`` x, or
    Otsu's separability (between-class / total variance) is below ``min_separation`` (a single
    bell-shaped group scores ~0.64). A caller must still verify quiet cells by sampling pixels:
    pale tissue can compress as well as noisy glass.

    ``coverage``: the share of each tile inside the image. Edge tiles are partly padding, whose
    content depends on the writer, so only whole tiles set the threshold; an edge tile is busy
    when its size passes the threshold scaled by its coverage (blank padding makes it smaller,
    copied content does not: either way tissue is not missed).
    """
    logc = np.log(np.maximum(np.asarray(counts, dtype=np.float64), 1.0))
    cov = np.ones_like(logc) if coverage is None else np.clip(np.asarray(coverage, dtype=np.float64), 1e-3, 1.0)
    whole = logc[cov >= 0.999]
    if whole.size < 4 or float(whole.max()) == float(whole.min()):
        return None
    threshold = otsu_of_values(whole)
    hi, lo = whole[whole > threshold], whole[whole <= threshold]
    if hi.size == 0 or lo.size == 0:
        return None
    share = hi.size / whole.size
    between = share * (1 - share) * (hi.mean() - lo.mean()) ** 2
    if np.exp(np.median(hi) - np.median(lo)) < min_ratio or between / whole.var() < min_separation:
        return None
    # Otsu's threshold sits at the edge of the lower group's histogram bin; the middle of the gap
    # between the two groups (geometric mean of their typical sizes) is the robust cut
    threshold = (np.median(hi) + np.median(lo)) / 2
    return logc > threshold + np.log(cov)
