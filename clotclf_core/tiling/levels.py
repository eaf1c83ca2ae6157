"""Which levels of a slide tiling reads: the working level, the level (or stored thumbnail) the tissue
mask comes from, and whether a pyramid's levels can be trusted.

Everything here goes through the public :class:`clotclf_core.plugin.protocols.Slide` members
(``level_dimensions``, ``level_downsamples``, ``level_layout``, ``stored_thumbnail``), so a
third-party source gets the same plan as the built-in ones.

- :func:`choose_level`: the working resolution 1/``factor`` is read from the most reduced level
  that reduces to it *exactly* (an integer ``ratio``: pyramids store 4.0003 for 4).
- :func:`mask_level`: a pyramid's low level the tissue mask can come from (then only the tiles
  under tissue are decoded at the working level: :mod:`clotclf_core.tiling.sparse`).
- :func:`level_problems`: levels whose size or aspect disagree with level 0 (a level padded to whole
  tiles, cropped, or of another image). Tiling never reads such a level: it reads level 0 and says so.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable

import numpy as np

from clotclf_core.plugin.regions import GENERIC_BLOCK, LevelLayout


def choose_level(level_downsamples: Iterable[float], factor: int) -> tuple[int, int]:
    """``(level, ratio)``: the most reduced level from which a view at 1/``factor`` of level 0 is an
    exact integer reduction by ``ratio`` (within 1 %: pyramids store 4.0003 for 4)."""
    best = (0, int(factor))
    for i, ds in enumerate(level_downsamples):
        ratio = factor / float(ds)
        whole = round(ratio)
        if whole >= 1 and abs(ratio - whole) <= 0.01 * ratio and whole < best[1]:
            best = (i, int(whole))
    return best


def pyramid(slide: Any) -> tuple[list[tuple[int, int]], list[float]]:
    """The slide's levels as ``(level_dimensions, level_downsamples)`` (one level when it has none)."""
    dims = [tuple(int(v) for v in d) for d in getattr(slide, "level_dimensions", None) or [tuple(slide.dimensions)]]
    downsamples = [float(v) for v in getattr(slide, "level_downsamples", None) or [1.0]]
    return dims, downsamples  # type: ignore[return-value]


def level_problems(slide: Any) -> dict[int, str]:
    """Levels (> 0) whose size or aspect disagree with level 0, with what is wrong.

    Level ``i`` of downsample ``d`` must be level 0's size divided by ``d`` along both axes, within
    1.5 of its own pixels or 0.2 % of the side (the rounding of a level's size, and of the
    downsample a source reports): a level padded to whole tiles, cropped, or of a different aspect
    fails this."""
    dims, downsamples = pyramid(slide)
    if len(dims) != len(downsamples):
        return {i: f"the slide lists {len(dims)} level sizes but {len(downsamples)} downsamples" for i in range(1, max(len(dims), len(downsamples)))}
    w0, h0 = dims[0]
    bad = {}
    for i in range(1, len(dims)):
        w, h = dims[i]
        ds = downsamples[i]
        if not (np.isfinite(ds) and ds >= 1 and w > 0 and h > 0):
            bad[i] = f"level {i} is {w} x {h} px at downsample {ds}"
            continue
        off = [abs(n * ds - n0) > max(1.5 * ds, 0.002 * n0) for n, n0 in ((w, w0), (h, h0))]
        if any(off):
            bad[i] = (f"level {i} is {w:,} x {h:,} px at downsample {ds:g}, where level 0 ({w0:,} x {h0:,}) "
                      f"makes {w0 / ds:,.0f} x {h0 / ds:,.0f} (aspect {w / h:.3f} against {w0 / h0:.3f})")
    return bad


def working_level(slide: Any, factor: int) -> tuple[int, int]:
    """(level, ratio): where to read a view at 1/``factor`` of level 0 (an integer reduction), among
    the levels that agree with level 0 (:func:`level_problems`)."""
    dims, downsamples = pyramid(slide)
    bad = level_problems(slide)
    usable = [ds if i not in bad else float("inf") for i, ds in enumerate(downsamples)]
    usable[0] = downsamples[0] if downsamples else 1.0
    return choose_level(usable, factor)


def raster_shape(slide: Any, factor: int) -> tuple[int, int]:
    """(height, width) of the working raster at 1/``factor``, without reading anything."""
    level, ratio = working_level(slide, factor)
    w, h = pyramid(slide)[0][level]
    return h // ratio, w // ratio


def mask_level(slide: Any, working: int, view_size: int) -> int | None:
    """The level the tissue mask comes from when tiling reads only where tissue is, or None.

    Among the levels more reduced than the ``working`` one that agree with level 0: the most reduced
    one whose longer side is still at least ``view_size / 2`` (a mean STRIP AI slide's 1/64 level is
    587 px long; the mask's view is that level, reduced to ``view_size`` when longer). None: no such
    level (a single-level slide, a pyramid with no level below the working one, or a working level
    hardly larger than the view: its longer side under ``2 * view_size``, where reading it whole
    costs little more), and tiling scans the working level whole."""
    dims, downsamples = pyramid(slide)
    if max(dims[working]) < 2 * view_size:
        return None
    bad = level_problems(slide)
    below = [i for i in range(len(dims)) if i not in bad and downsamples[i] > downsamples[working] * 1.5
             and max(dims[i]) >= view_size / 2]
    return max(below, key=lambda i: downsamples[i]) if below else None


def level_layout(slide: Any, level: int = 0, own: bool = True, block: int | None = None) -> LevelLayout:
    """The :class:`LevelLayout` of ``level``: the Slide's own when it offers ``level_layout`` (and
    ``own``; asked for blocks of about ``block`` px when its ``level_layout`` takes a ``block``
    keyword), else aligned :data:`GENERIC_BLOCK`-pixel blocks read through ``read_region``."""
    layout = getattr(slide, "level_layout", None)
    if own and callable(layout):
        if block is not None and "block" in inspect.signature(layout).parameters:
            return layout(level, block=block)
        return layout(level)
    dims, downsamples = pyramid(slide)
    ds = float(downsamples[level])
    width, height = dims[level]
    block = GENERIC_BLOCK

    def read(row: int, col: int) -> np.ndarray:
        x, y = col * block, row * block
        w, h = min(block, width - x), min(block, height - y)
        return np.asarray(slide.read_region(x * ds, y * ds, w * ds, h * ds, ds))[:h, :w, :3]

    return LevelLayout(level, width, height, ds, block, block, read)


def stored_thumbnail(slide: Any) -> np.ndarray:
    """The thumbnail the slide's file stores (RGB uint8), checked against level 0's aspect; one
    :class:`clotclf_core.tiling.settings.SlideSkip` naming the problem when it is absent, unreadable
    or not a picture of the whole slide."""
    from clotclf_core.plugin.errors import SlideReadError
    from clotclf_core.tiling.settings import SlideSkip

    fix = "use --mask-from auto (a pyramid level, else the slide itself)"
    get = getattr(slide, "stored_thumbnail", None)
    try:
        thumb = get() if callable(get) else None
    except SlideReadError as exc:
        raise SlideSkip("failed", f"--mask-from thumbnail: the slide's stored thumbnail is damaged ({exc}); {fix}") from None
    except Exception as exc:  # a reader's own error on a corrupt picture
        raise SlideSkip("failed", f"--mask-from thumbnail: the slide's stored thumbnail could not be read "
                                  f"({type(exc).__name__}: {str(exc)[:160]}); {fix}") from None
    if thumb is None:
        source = getattr(slide, "source_name", "its source")
        raise SlideSkip("failed", f"--mask-from thumbnail: the slide stores no thumbnail (or {source} does not read it); {fix}")
    thumb = np.asarray(thumb)
    if thumb.dtype != np.uint8 or thumb.ndim != 3 or thumb.shape[2] != 3 or min(thumb.shape[:2]) < 8:
        raise SlideSkip("failed", f"--mask-from thumbnail: the slide's stored thumbnail is not an RGB picture "
                                  f"({thumb.dtype} {thumb.shape}); {fix}")
    w0, h0 = (int(v) for v in slide.dimensions)
    th, tw = thumb.shape[:2]
    if abs((tw / th) / (w0 / h0) - 1) > max(0.02, 2.0 / min(th, tw)):
        raise SlideSkip("failed", f"--mask-from thumbnail: the slide's stored thumbnail ({tw} x {th} px, aspect {tw / th:.3f}) "
                                  f"is not a picture of the whole slide ({w0:,} x {h0:,}, aspect {w0 / h0:.3f}); {fix}")
    return thumb
