"""Coordinates-only tiling's windows (``clotclf tile --coords-only``): each candidate tile cut from
the slide's low-resolution view instead of the working level, so no pixel of the working level is
decoded; the filters score these small windows (a filter declares with ``low_resolution`` that its
score means the same there).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from clotclf_core.tiling.raster import glass


def view_window_batches(scan: Any, corners: Any, tile: int, side: int, background: np.ndarray,
                        batch: int) -> Iterator[tuple[int, np.ndarray]]:
    """Coordinates-only tiling: each ``tile``-pixel square of the working raster at ``corners``
    (top-left, raster px; (n, 2)) cut from the low-resolution view instead (the view pixels whose
    centres lie in it, the glass colour past the slide's edge), resized to ``side`` px. Yields
    ``(start, windows)``: the windows of corners ``start`` to ``start + len(windows)``, (m, side,
    side, 3) uint8, ``batch`` at a time.

    Windows already ``side`` view pixels a side (most of them: a view is about a whole fraction of
    the raster) need no resize (OpenCV's would copy them): they are picked from a sliding-window view
    of the view padded with glass (one copy of each, 30x a fancy index of every pixel), the others
    cropped and resized one by one."""
    sx, sy = scan.view_scales()
    view = scan.view
    xy = np.asarray(corners, dtype=np.int64).reshape(-1, 2)  # (n, 2): x, y
    i0, i1 = np.ceil(xy[:, 0] / sx - 0.5).astype(np.int64), np.ceil((xy[:, 0] + tile) / sx - 0.5).astype(np.int64)
    j0, j1 = np.ceil(xy[:, 1] / sy - 0.5).astype(np.int64), np.ceil((xy[:, 1] + tile) / sy - 0.5).astype(np.int64)
    whole = (i1 - i0 == side) & (j1 - j0 == side)
    windows, dx, dy = _windows(view, i0[whole], j0[whole], side, background)
    for a in range(0, len(xy), batch):
        b = min(len(xy), a + batch)
        if whole[a:b].all():
            yield a, np.ascontiguousarray(windows[j0[a:b] + dy, i0[a:b] + dx].transpose(0, 2, 3, 1))
            continue
        out = np.empty((b - a, side, side, 3), np.uint8)
        some = np.flatnonzero(whole[a:b])
        if len(some):
            out[some] = windows[j0[a:b][some] + dy, i0[a:b][some] + dx].transpose(0, 2, 3, 1)
        for k in np.flatnonzero(~whole[a:b]).tolist():
            out[k] = _cut(view, int(i0[a + k]), int(i1[a + k]), int(j0[a + k]), int(j1[a + k]), side, background)
        yield a, out


def _windows(view: np.ndarray, i0: np.ndarray, j0: np.ndarray, side: int, background: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Every ``side``-pixel window of ``view`` padded with the glass colour as far as the windows at
    columns ``i0`` and rows ``j0`` reach past its edge: ``(windows, dx, dy)``, the window at (i, j)
    being ``windows[j + dy, i + dx]`` ((3, side, side): a view, no copy)."""
    import cv2

    vh, vw = view.shape[:2]
    if len(i0) == 0:
        return np.zeros((0, 0, 3, side, side), np.uint8), 0, 0
    left, top = max(0, -int(i0.min())), max(0, -int(j0.min()))
    right, bottom = max(0, int(i0.max()) + side - vw), max(0, int(j0.max()) + side - vh)
    if left or top or right or bottom:
        view = cv2.copyMakeBorder(np.ascontiguousarray(view), top, bottom, left, right, cv2.BORDER_CONSTANT,
                                  value=[int(v) for v in background])
    return np.lib.stride_tricks.sliding_window_view(view, (side, side), axis=(0, 1)), left, top


def _cut(view: np.ndarray, i0: int, i1: int, j0: int, j1: int, side: int, background: np.ndarray) -> np.ndarray:
    """One window of ``view`` (columns ``i0:i1``, rows ``j0:j1``; glass past the edge) resized to ``side`` px."""
    import cv2

    vh, vw = view.shape[:2]
    crop = glass((max(1, j1 - j0), max(1, i1 - i0), 3), background)
    a0, a1, b0, b1 = max(0, i0), min(vw, i1), max(0, j0), min(vh, j1)
    if a1 > a0 and b1 > b0:
        crop[b0 - j0 : b1 - j0, a0 - i0 : a1 - i0] = view[b0:b1, a0:a1]
    how = cv2.INTER_AREA if crop.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(crop, (side, side), interpolation=how)
