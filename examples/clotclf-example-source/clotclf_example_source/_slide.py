"""The ``pil`` source and its slide: a picture decoded once with Pillow, answered by RegionSlide.

A PNG or JPEG is not stored in tiles that can be decoded one at a time, so the first read decodes
the whole picture (Pillow refuses pictures above its decompression-bomb limit, about 179 million
pixels: a clear error, not a crash). Everything else, ``read_region``, ``thumbnail``,
``level_layout``, ``close`` and ``with``, comes from :class:`clotclf_core.plugin.regions.RegionSlide`
through :meth:`PilSlide._blocks`.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from clotclf_core.plugin import SlideReadError
from clotclf_core.plugin.regions import BlockReader, RegionSlide, checked_mpp, grid_blocks, to_rgb

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


class PilSource:
    """The ``pil`` PatchSource: ``can_open`` looks at the first bytes, ``open`` reads the header."""

    def __init__(self, mpp: float | None = None):
        self.mpp = mpp

    def can_open(self, path: str) -> bool:
        try:
            with open(path, "rb") as fh:
                head = fh.read(8)
        except OSError:
            return False
        return any(head.startswith(m) for m in _MAGIC)

    def priority(self, path: str) -> float:
        """1: no built-in source reads PNG or JPEG, so any positive rank wins for them."""
        return 1.0

    def open(self, path: str) -> "PilSlide":
        return PilSlide(path, self.mpp)


class PilSlide(RegionSlide):
    """A PNG or JPEG picture as a one-level :class:`clotclf_core.plugin.protocols.Slide`."""

    source_name = "pil"

    def __init__(self, path: str | os.PathLike, mpp: float | None = None):
        self.path = str(path)
        try:
            self._image = Image.open(self.path)  # reads the header only
        except FileNotFoundError:
            raise SlideReadError(f"slide file '{self.path}' does not exist: check the path") from None
        except (OSError, Image.DecompressionBombError) as exc:  # not a picture, cut short, too large
            raise SlideReadError(f"'{self.path}' is not a picture Pillow can read ({exc}); check the file") from None
        self.dimensions = (int(self._image.width), int(self._image.height))
        self.level_dimensions, self.level_downsamples = [self.dimensions], [1.0]
        if mpp is None:  # the file's dots per inch, when it has them (72 dpi is a screen default: ignored)
            dpi = self._image.info.get("dpi") or (0, 0)
            mpp = 25400.0 / float(dpi[0]) if dpi[0] else None
        self.mpp, self.mpp_note = checked_mpp(mpp, self.path)
        self._pixels: np.ndarray | None = None

    def _decode(self) -> np.ndarray:
        if self._pixels is None:
            try:
                picture = self._image.convert("RGBA")  # palette, grey, alpha, CMYK JPEG... -> RGBA
            except (OSError, Image.DecompressionBombError, ValueError) as exc:
                raise SlideReadError(f"slide '{self.path}' could not be decoded ({type(exc).__name__}: {exc}); "
                                     "the file is damaged or too large for Pillow") from None
            self._pixels = to_rgb(np.asarray(picture))  # transparent parts become white
        return self._pixels

    def _blocks(self, level: int) -> BlockReader:
        pixels = self._decode()
        return grid_blocks(lambda x, y, w, h: pixels[y : y + h, x : x + w])

    def _close(self) -> None:
        self._image.close()
        self._pixels = None
