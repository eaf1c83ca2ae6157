"""Slides read with OpenSlide, answered through the shared region engine of clotclf_core.slides.open.

OpenSlide picks the level; :func:`clotclf_core.plugin.regions.render_region` reads it in blocks of at
most 2048 x 2048 pixels and area-averages them to the requested size, so a thumbnail of a large
single-level slide never holds the whole level in memory (OpenSlide still decodes all of it).
"""

from __future__ import annotations

import os

import numpy as np
import openslide

from clotclf_core.plugin import SlideReadError
from clotclf_core.plugin.regions import (
    GENERIC_BLOCK,
    LevelLayout,
    check_region,
    checked_mpp,
    grid_blocks,
    render_region,
    thumbnail_downsample,
    to_rgb,
)

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


class OpenSlideSlide:
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
        self.level_count = int(self._osr.level_count)
        self.level_dimensions = [tuple(int(v) for v in d) for d in self._osr.level_dimensions]
        self.level_downsamples = [float(d) for d in self._osr.level_downsamples]
        self.vendor = self._osr.properties.get(openslide.PROPERTY_NAME_VENDOR, "")
        self.mpp, self.mpp_note = checked_mpp(self._osr.properties.get(openslide.PROPERTY_NAME_MPP_X), self.path)

    def _reader(self, level: int):
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

    def level_layout(self, level: int = 0) -> LevelLayout:
        """Blocks of the level aligned with OpenSlide's own tiles (a multiple of them, about
        :data:`GENERIC_BLOCK` pixels), so that each stored tile is decoded once."""
        if not 0 <= level < self.level_count:
            raise SlideReadError(f"slide '{self.path}' has levels 0..{self.level_count - 1}, not {level}")
        props = self._osr.properties
        try:
            tile = int(props.get(f"openslide.level[{level}].tile-width", 0)) or GENERIC_BLOCK
        except ValueError:
            tile = GENERIC_BLOCK
        block = max(1, GENERIC_BLOCK // tile) * tile if tile % 16 == 0 else GENERIC_BLOCK
        width, height = self.level_dimensions[level]
        read_level = self._reader(level)

        def read(row: int, col: int) -> np.ndarray:
            x, y = col * block, row * block
            (_, _, pixels), = read_level(x, y, min(x + block, width), min(y + block, height))
            return pixels

        return LevelLayout(level, width, height, self.level_downsamples[level], block, block, read)

    def read_region(self, x: int, y: int, width: int, height: int, downsample: float = 1.0) -> np.ndarray:
        check_region(x, y, width, height, downsample, self.path)
        level = self._osr.get_best_level_for_downsample(downsample)
        return render_region(
            self._reader(level),
            self.level_dimensions[level],
            self.level_downsamples[level],
            x,
            y,
            width,
            height,
            downsample,
        )

    def thumbnail(self, max_size: int) -> np.ndarray:
        ds = thumbnail_downsample(self.dimensions, max_size)
        return self.read_region(0, 0, self.dimensions[0], self.dimensions[1], ds)

    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> "OpenSlideSlide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"OpenSlideSlide('{self.path}', {w}x{h}, levels={self.level_count}, mpp={self.mpp})"
