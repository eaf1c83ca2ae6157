"""The QC picture of one slide: the low-resolution view with the tissue mask, the tiles, and what
was never decoded.

Blue outline: the tissue mask. Green boxes: kept tiles; red, orange, magenta, brown: tiles the
first, second... filter rejected; grey: tiles dropped by ``max_tiles``. Hatched in grey-blue: areas
never decoded (glass by the byte-count prescreen) — shown as such, not as white glass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: longer side of the QC pictures, in pixels (kept small: one per slide)
QC_MAX_SIDE = 1024
_PALETTE = [(230, 30, 30), (255, 150, 0), (200, 0, 200), (120, 60, 0)]
_COLOUR_NAMES = ["red", "orange", "magenta", "brown"]
_DROPPED = (150, 150, 150)


def qc_image(view: np.ndarray, decoded: np.ndarray | None, mask: np.ndarray | None, boxes: Sequence[tuple[int, int, int, int]],
             dimensions: tuple[int, int], filter_names: Sequence[str], title: str) -> Any:
    """The QC picture as a PIL image (see the module docstring). ``boxes``: (x, y, side, by) in
    level-0 pixels, ``by`` -1 for kept, a filter index, or ``len(filter_names)`` for max_tiles."""
    from PIL import Image, ImageDraw

    arr = np.array(view[..., :3], dtype=np.uint8)
    if decoded is not None and (decoded < 0.5).any():
        yy, xx = np.mgrid[0 : arr.shape[0], 0 : arr.shape[1]]
        stripes = ((yy + xx) // 3) % 4 == 0
        never = decoded < 0.5
        arr[never] = (205, 212, 228)
        arr[never & stripes] = (150, 160, 190)
    img = Image.fromarray(arr)
    scale = min(1.0, QC_MAX_SIDE / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    if mask is not None and mask.any():
        from skimage.segmentation import find_boundaries

        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(img.size, Image.NEAREST)) > 0
        a = np.array(img)
        a[find_boundaries(m, mode="inner")] = (40, 90, 255)
        img = Image.fromarray(a)
    draw = ImageDraw.Draw(img)
    f = img.width / max(1, dimensions[0])
    counts = {}
    for x, y, side, by in boxes:
        colour = (0, 190, 0) if by < 0 else _DROPPED if by >= len(filter_names) else _PALETTE[by % len(_PALETTE)]
        counts[by] = counts.get(by, 0) + 1
        draw.rectangle([x * f, y * f, (x + side) * f - 1, (y + side) * f - 1], outline=colour, width=2 if by < 0 else 1)
    legend = f"{title}: kept {counts.get(-1, 0)} (green)"
    for fi, name in enumerate(filter_names):
        legend += f", {name} rejected {counts.get(fi, 0)} ({_COLOUR_NAMES[fi % len(_PALETTE)]})"
    if counts.get(len(filter_names)):
        legend += f", max_tiles dropped {counts[len(filter_names)]} (grey)"
    if decoded is not None and (decoded < 0.5).any():
        legend += "; hatched: never decoded"
    framed = Image.new("RGB", (img.width, img.height + 16), (255, 255, 255))
    framed.paste(img, (0, 16))
    ImageDraw.Draw(framed).text((2, 2), legend, fill=(0, 0, 0))
    return framed


def write_qc(path: Path, result: Any, filter_names: Sequence[str], title: str) -> None:
    """Write the QC picture of a :class:`clotclf_core.tiling.pipeline.SlideResult` atomically."""
    from clotclf_core.plugin.io import atomic_path

    if result.view is None:
        return
    img = qc_image(result.view, result.view_decoded, result.mask, result.boxes,
                   (result.info.get("width") or 1, result.info.get("height") or 1), filter_names, title)
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG", compress_level=1)  # a by-product: zlib level 1 (~5x faster than the default 6 here)
