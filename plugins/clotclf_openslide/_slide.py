"""Slides read with OpenSlide, answered through :class:`clotclf_core.plugin.regions.RegionSlide`.

OpenSlide picks the level (``get_best_level_for_downsample``); the base reads it in blocks of at
most 2048 x 2048 pixels and area-averages them to the requested size, so a thumbnail of a large
single-level slide never holds the whole level in memory (OpenSlide still decodes all of it).
Tiling reads a level in blocks aligned with OpenSlide's own tiles (:meth:`OpenSlideSlide._layout_block`).
"""

from __future__ import annotations

import os

import numpy as np
import openslide

from clotclf_core.plugin import SlideReadError
from clotclf_core.plugin.regions import GENERIC_BLOCK, BlockReader, RegionSlide, checked_mpp, grid_blocks, to_rgb

_BLOCK = 2048


class OpenSlideSource:
    """The ``openslide`` PatchSource."""

    def __init__(self, cache_mb: int | None = None):
        self.cache_mb = cache_mb

    def can_open(self, path: str) -> bool:
        try:
            return openslide.OpenSlide.detect_format(path) is not None
        except Exception:  # unreadable path, a folder, ...
            return False

    def priority(self, path: str) -> float:
        """10 for pyramids (OpenSlide's strength), 3 for single-level files (a thumbnail decodes the
        whole level), 0 when OpenSlide cannot open the file."""
        try:
            with OpenSlideSlide(path) as slide:
                return 10.0 if slide.level_count > 1 else 3.0
        except SlideReadError:
            return 0.0

    def open(self, path: str) -> "OpenSlideSlide":
        return OpenSlideSlide(path, self.cache_mb)


class OpenSlideSlide(RegionSlide):
    """A :class:`clotclf_core.plugin.protocols.Slide` backed by ``openslide.OpenSlide``."""

    source_name = "openslide"

    def __init__(self, path: str | os.PathLike, cache_mb: int | None = None):
        self.path = str(path)
        if not os.path.exists(self.path):
            raise SlideReadError(f"slide file '{self.path}' does not exist: check the path")
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideReadError(
                f"OpenSlide does not recognise '{self.path}' as a slide (not an image, a stripped TIFF, or an "
                "unsupported format); try `--source tifffile` for TIFFs"
            ) from None
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideReadError(
                f"OpenSlide could not open slide '{self.path}' ({exc}); the file may be truncated or damaged: re-copy it"
            ) from None
        if cache_mb is not None:
            self._osr.set_cache(openslide.OpenSlideCache(cache_mb * 1024 * 1024))
        self.dimensions = tuple(int(v) for v in self._osr.dimensions)
        self.level_dimensions = [tuple(int(v) for v in d) for d in self._osr.level_dimensions]
        self.level_downsamples = [float(d) for d in self._osr.level_downsamples]
        self.vendor = self._osr.properties.get(openslide.PROPERTY_NAME_VENDOR, "")
        self.mpp, self.mpp_note = checked_mpp(self._osr.properties.get(openslide.PROPERTY_NAME_MPP_X), self.path)

    def _blocks(self, level: int) -> BlockReader:
        downsample = self.level_downsamples[level]

        def read(x: int, y: int, w: int, h: int) -> np.ndarray:
            location = (round(x * downsample), round(y * downsample))  # OpenSlide wants level-0 coordinates
            try:
                image = self._osr.read_region(location, level, (w, h))
            except openslide.OpenSlideError as exc:
                raise SlideReadError(
                    f"OpenSlide could not read slide '{self.path}' at level {level}, ({x}, {y}) ({exc}); "
                    "the file may be truncated or damaged: re-copy it"
                ) from None
            return to_rgb(np.asarray(image))  # RGBA, transparent outside the slide -> white

        return grid_blocks(read, _BLOCK)

    def best_level(self, downsample: float) -> int:
        return int(self._osr.get_best_level_for_downsample(downsample))

    def stored_thumbnail(self) -> np.ndarray | None:
        """The thumbnail the file stores (OpenSlide's ``thumbnail`` associated image), RGB; None when it
        has none. :class:`SlideReadError` when it is there but cannot be decoded."""
        try:
            if "thumbnail" not in self._osr.associated_images:
                return None
            return to_rgb(np.asarray(self._osr.associated_images["thumbnail"]))
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise SlideReadError(f"OpenSlide could not read the stored thumbnail of slide '{self.path}' ({exc})") from None

    def _layout_block(self, level: int, near: int = GENERIC_BLOCK) -> int:
        """A multiple of OpenSlide's own tile side (about ``near`` pixels, at least one tile), so that
        tiling decodes each stored tile once."""
        try:
            tile = int(self._osr.properties.get(f"openslide.level[{level}].tile-width", 0)) or GENERIC_BLOCK
        except ValueError:
            tile = GENERIC_BLOCK
        return max(1, near // tile) * tile if tile % 16 == 0 else GENERIC_BLOCK

    def _close(self) -> None:
        self._osr.close()
