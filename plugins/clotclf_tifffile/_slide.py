"""TIFF slides decoded one tile (or strip) at a time with tifffile.

Nothing here ever decodes a whole level: :class:`TifffileSlide` is a
:class:`clotclf_core.plugin.regions.RegionSlide` whose ``_blocks`` yields only the segments (tiles or
strips) that intersect a request, each read from its file offset and decoded with ``page.decode``;
the base answers ``read_region`` and ``thumbnail`` from them. Large reductions (thumbnails of
single-level slides) are averaged segment by segment into a small image, so the peak memory is one
segment plus the small output. ``level_layout`` (what tiling reads) is this module's own: the
file's segments with their compressed sizes.

Why segment I/O and not tifffile's zarr view (``aszarr``) for ``read_region`` and ``thumbnail``:
measured with ``benchmarks/regions.py`` on a synthetic 23,000 x 37,600 single-level deflate TIFF
(docs/performance.md), reading the blocks through ``zarr.open(tif.aszarr(level))`` cost 1.22x the
CPU for ``thumbnail(1024)`` (5.47 vs 4.49 s, peak RSS 370 vs 79 MB), 1.90x for a 4,096-px region at
downsample 1 (0.10 vs 0.05 s), 1.56x at downsample 4, 1.43x at 3.3, and 1.48x for 50 tiles of
896 px (0.50 vs 0.33 s); it would also add zarr and its codecs as dependencies.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import tifffile

from clotclf_core.plugin import SlideDamaged, SlideReadError, SlideUnusable
from clotclf_core.plugin.regions import LevelLayout, RegionSlide, checked_mpp, to_rgb

# tifffile logs what it finds wrong in a damaged file ("invalid page offset", "generic series raised
# TiffFileError(...)") as errors and warnings, which Python prints on stderr when no logging is set up: lines
# around clotclf's one Error line, which names the damage itself (truncated, not a TIFF...).
# CLOTCLF_DEBUG=1 keeps them.
if not os.environ.get("CLOTCLF_DEBUG"):
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: vendor formats tifffile can parse but whose quirks (overlapping tiles, several images, sparse
#: tiles) a dedicated reader such as OpenSlide handles: rank them low so that reader wins
_VENDOR_FLAGS = ("ndpi", "scn", "philips", "bif", "qpi")
_AXIS_NAMES = {"C": "channels (C)", "Z": "depth (Z)", "T": "time (T)", "I": "images (I)", "Q": "pages (Q)"}
_PHOTOMETRIC_NAMES = {0: "MINISWHITE", 3: "PALETTE", 4: "MASK", 5: "SEPARATED (CMYK)", 8: "CIELAB"}


@dataclass(frozen=True)
class TileByteCounts:
    """Compressed bytes of each tile of one level: a decode-free tissue pre-screen.

    ``counts[r, c]`` is the size in the file of the tile covering level pixels
    ``(c * tile_width, r * tile_height)`` onward, i.e. level-0 pixels scaled by ``downsample``.
    Blank glass compresses far better than tissue, so high counts suggest tissue (verify
    with the pixels: noisy glass or debris compress badly too). For a stripped TIFF each row is
    one strip (``tile_width`` = image width).
    """

    counts: np.ndarray
    tile_width: int
    tile_height: int
    downsample: float


class TifffileSlide(RegionSlide):
    """A :class:`clotclf_core.plugin.protocols.Slide` backed by ``tifffile.TiffFile``."""

    source_name = "tifffile"

    def __init__(self, path: str | os.PathLike, probe: bool = False):
        """``probe``: only what :meth:`._source.TifffileSource.priority` asks (levels, vendor, a stack or a
        cut-short copy refused); no segment is decoded (``open`` decodes one)."""
        self.path = str(path)
        self.mpp_note = ""
        try:
            self._tif = tifffile.TiffFile(self.path)
        except FileNotFoundError:
            raise SlideReadError(f"slide file '{self.path}' does not exist: check the path") from None
        except Exception as exc:  # TiffFileError, struct errors on a cut header, ...
            raise SlideReadError(
                f"slide '{self.path}' is not a readable TIFF ({type(exc).__name__}: {exc}); "
                "check that it is a complete TIFF file (re-copy it if the copy was interrupted)"
            ) from None
        self._lock = threading.Lock()
        try:
            self._setup(probe)
        except BaseException:
            self._tif.close()
            raise

    # ------------------------------------------------------------------ opening
    def _series(self):
        """The first image series. A vips-written pyramid copies tifffile's shaped JSON description
        into every page, which tifffile's shaped parser refuses ("incompatible keyframe"): such a
        file is opened again with that parser off (``is_shaped=False``)."""
        tif = self._tif
        copied = (getattr(tif, "is_shaped", False) and len(tif.pages) > 1
                  and getattr(tif.pages[1], "description", "") == tif.pages[0].description)
        if not copied:
            try:
                return tif.series[0] if tif.series else None
            except Exception as exc:
                first: Exception | str = exc
        else:
            first = "every page carries the first page's shaped description"
        self._tif.close()
        try:
            self._tif = tifffile.TiffFile(self.path, is_shaped=False)
            return self._tif.series[0] if self._tif.series else None
        except Exception:
            raise SlideReadError(f"slide '{self.path}': its TIFF structure is damaged ({first})") from None

    def _setup(self, probe: bool = False) -> None:
        series = self._series()
        tif = self._tif
        if series is None:
            raise SlideReadError(f"slide '{self.path}' holds no image")
        extra = {a: n for a, n in zip(series.axes, series.shape) if a not in "YXS" and n > 1}
        if extra:
            what = ", ".join(f"{n} along {_AXIS_NAMES.get(a, a)}" for a, n in extra.items())
            # a generic TIFF stack is no slide for any reader (OpenSlide would read its first plane);
            # a vendor format's extra planes (NDPI focal planes...) are its reader's business
            vendor = any(getattr(tif, f"is_{flag}", False) for flag in _VENDOR_FLAGS)
            raise (SlideReadError if vendor else SlideUnusable)(
                f"slide '{self.path}' is a stack of images (axes {series.axes}, shape {tuple(series.shape)}: {what}), "
                "not one RGB or grey slide; save the RGB image alone (e.g. a colour composite) as a TIFF"
            )
        pages = sorted((lvl.keyframe for lvl in series.levels), key=lambda p: -p.imagewidth)
        for page in pages:
            self._check_page(page)
        self._pages = pages
        w0, h0 = pages[0].imagewidth, pages[0].imagelength
        self.dimensions = (int(w0), int(h0))
        self.level_dimensions = [(int(p.imagewidth), int(p.imagelength)) for p in pages]
        self.level_downsamples = [(w0 / w + h0 / h) / 2 for w, h in self.level_dimensions]
        self.vendor = next((flag for flag in _VENDOR_FLAGS + ("svs",) if getattr(tif, f"is_{flag}", False)), "")
        self.mpp, self.mpp_note = checked_mpp(_mpp(tif, pages[0]), self.path)
        self._check_complete()
        self._shift = 0
        if not probe:
            self._decode_one()
            self._shift = self._sample_shift()

    def finish_opening(self) -> "TifffileSlide":
        """What opening does after a probe's header checks: one segment decoded (an unsupported codec
        fails now), 16-bit samples' shift found."""
        try:
            self._decode_one()
            self._shift = self._sample_shift()
        except BaseException:
            self.close()
            raise
        return self
    def _check_page(self, page) -> None:
        why = ""
        photometric = int(page.photometric)
        samples = page.samplesperpixel
        if page.imagedepth > 1:
            why = "a volumetric (3-D) image"
        elif page.dtype is None or page.dtype.char not in "BH":
            why = f"{page.bitspersample}-bit samples of format {page.sampleformat} (8- or 16-bit unsigned are supported)"
        elif samples > 1 and page.planarconfig == 2:
            why = "colour planes stored separately (PlanarConfiguration=2)"
        elif photometric == 6 and page.compression not in (6, 7):
            why = "YCbCr pixels without JPEG compression"
        elif photometric not in (1, 2, 6):
            why = f"photometric interpretation {_PHOTOMETRIC_NAMES.get(photometric, photometric)}"
        elif (photometric == 1 and samples > 2) or (photometric in (2, 6) and samples not in (3, 4)):
            why = f"{samples} samples per pixel with photometric {photometric}"
        elif len(page.dataoffsets) != self._segment_count(page):
            why = f"{len(page.dataoffsets)} tiles or strips where its size needs {self._segment_count(page)}"
        if why:
            raise SlideReadError(
                f"slide '{self.path}' has {why}, which the tifffile source does not read; try "
                "`--source openslide`, or convert it to an RGB tiled TIFF"
            )

    def _check_complete(self) -> None:
        """A copy cut short keeps its header: compare where the pixel data ends with the file size."""
        size = os.path.getsize(self.path)
        for page in self._pages:
            offsets, counts = np.asarray(page.dataoffsets, np.uint64), np.asarray(page.databytecounts, np.uint64)
            end = int((offsets + counts)[counts > 0].max()) if len(counts) and counts.any() else 0
            if end > size:
                w, h = self.dimensions
                raise SlideDamaged(
                    f"slide '{self.path}' ({w:,} x {h:,} px) is truncated: its image data runs to byte {end:,} but the file "
                    f"has {size:,} bytes; re-copy or re-download it"
                )

    def _sample_shift(self) -> int:
        """16-bit samples: how far to shift them right to get 8 bits. From ``MaxSampleValue`` when
        the file has it; else from the largest value in up to 16 decoded segments of the smallest
        level (12-bit cameras store 0..4095 in 16-bit samples: ``>> 8`` would make them black)."""
        page = self._pages[-1]
        if self._pages[0].dtype is None or self._pages[0].dtype.char != "H":
            return 0
        tag = self._pages[0].tags.get("MaxSampleValue")
        if tag is not None:
            top = int(np.max(np.atleast_1d(tag.value)))
        else:
            top, seen = 0, 0
            for index, count in enumerate(page.databytecounts):
                if count and seen < 16:
                    top = max(top, int(self._raw(len(self._pages) - 1, index)[2].max()))
                    seen += 1
        self.sample_bits = max(8, int(top).bit_length())
        return self.sample_bits - 8

    def _decode_one(self) -> None:
        """Decode one segment now, so an unsupported codec fails at open, not mid-tiling."""
        page = self._pages[-1]
        for index, count in enumerate(page.databytecounts):
            if count:
                self._decode(len(self._pages) - 1, index)
                return

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def _rows_per_strip(page) -> int:
        rps = int(page.rowsperstrip or 0)
        return rps if 0 < rps < page.imagelength else int(page.imagelength)

    @staticmethod
    def _segments_across(page) -> int:
        return math.ceil(page.imagewidth / page.tilewidth) if page.is_tiled else 1

    def _segment_count(self, page) -> int:
        if page.is_tiled:
            return self._segments_across(page) * math.ceil(page.imagelength / page.tilelength)
        return math.ceil(page.imagelength / self._rows_per_strip(page))

    def _segment_indices(self, page, x0: int, y0: int, x1: int, y1: int) -> list[int]:
        if page.is_tiled:
            tw, th, across = page.tilewidth, page.tilelength, self._segments_across(page)
            return [
                ty * across + tx
                for ty in range(y0 // th, (y1 - 1) // th + 1)
                for tx in range(x0 // tw, (x1 - 1) // tw + 1)
            ]
        rps = self._rows_per_strip(page)
        return list(range(y0 // rps, (y1 - 1) // rps + 1))

    # ------------------------------------------------------------------ pixels
    def _raw(self, level: int, index: int) -> tuple[int, int, np.ndarray]:
        """Segment ``index`` of ``level`` as stored: (x, y, (rows, columns, samples) array)."""
        page = self._pages[level]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        with self._lock:  # one file handle: seek + read must not interleave between threads
            fh = self._tif.filehandle
            fh.seek(offset)
            data = fh.read(count)
        what = "tile" if page.is_tiled else "strip"
        if len(data) < count:
            raise SlideReadError(f"slide '{self.path}' is truncated: {what} {index} of level {level} is cut short; re-copy it")
        try:
            pixels, position, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:
            raise SlideReadError(
                f"slide '{self.path}': {what} {index} of level {level} could not be decoded "
                f"({type(exc).__name__}: {exc}); the file is damaged or uses a codec imagecodecs lacks"
            ) from None
        return position[3], position[2], pixels[0]  # (depth=1, rows, columns, samples) -> (rows, columns, samples)

    def _decode(self, level: int, index: int) -> tuple[int, int, np.ndarray] | None:
        page = self._pages[level]
        if not page.databytecounts[index]:
            return None  # a sparse (empty) tile: white
        x, y, pixels = self._raw(level, index)
        if pixels.dtype == np.uint16 and self._shift != 8:
            pixels = np.minimum(pixels >> self._shift, 255).astype(np.uint8)
        if pixels.shape[-1] in (2, 4):
            extra = int(page.extrasamples[0]) if page.extrasamples else 0
            if extra == 1:  # associated (premultiplied) alpha: add the white the colour lacks
                colour, alpha = to_rgb(pixels[..., :-1]).astype(np.int16), to_rgb(pixels[..., -1:]).astype(np.int16)
                return x, y, np.clip(colour + 255 - alpha, 0, 255).astype(np.uint8)
            if extra != 2:  # an extra sample that is not alpha
                pixels = pixels[..., :-1]
        return x, y, to_rgb(pixels)

    def _blocks(self, level: int):
        page = self._pages[level]

        def blocks(x0: int, y0: int, x1: int, y1: int) -> Iterator[tuple[int, int, np.ndarray]]:
            for index in self._segment_indices(page, x0, y0, x1, y1):
                block = self._decode(level, index)
                if block is not None:
                    yield block

        return blocks

    def level_layout(self, level: int = 0) -> LevelLayout:
        """The level's TIFF tiles (or strips) as a :class:`clotclf_core.plugin.regions.LevelLayout`."""
        self._check_level(level)
        page = self._pages[level]
        width, height = self.level_dimensions[level]
        counts = self.tile_byte_counts(level)
        tiled = bool(page.is_tiled)
        across = self._segments_across(page)
        seg_w, seg_h = (int(page.tilewidth), int(page.tilelength)) if tiled else (width, self._rows_per_strip(page))

        def read(row: int, col: int) -> np.ndarray | None:
            got = self._decode(level, row * across + col)
            if got is None:
                return None
            x, y, pixels = got
            return pixels[: max(0, min(seg_h, height - y)), : max(0, min(seg_w, width - x))]

        return LevelLayout(level, width, height, self.level_downsamples[level], seg_w, seg_h, read,
                           counts.counts if tiled else None)

    def stored_thumbnail(self) -> np.ndarray | None:
        """The thumbnail the file stores (the series tifffile names ``Thumbnail``: an Aperio SVS's
        second page), RGB; None when it has none. :class:`SlideReadError` when it cannot be decoded."""
        try:
            series = next((s for s in self._tif.series if str(getattr(s, "name", "")).lower() == "thumbnail"), None)
            if series is None:
                return None
            with self._lock:
                return to_rgb(np.asarray(series.asarray()))
        except SlideReadError:
            raise
        except Exception as exc:  # a damaged page: tifffile's / the codec's own errors
            raise SlideReadError(
                f"the stored thumbnail of slide '{self.path}' could not be decoded ({type(exc).__name__}: {exc})") from None

    def tile_byte_counts(self, level: int = 0) -> TileByteCounts:
        """Compressed size of every tile (or strip) of ``level``, read from the header only."""
        self._check_level(level)
        page, downsample = self._pages[level], self.level_downsamples[level]
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        if page.is_tiled:
            grid = counts.reshape(-1, self._segments_across(page))
            return TileByteCounts(grid, int(page.tilewidth), int(page.tilelength), downsample)
        return TileByteCounts(counts.reshape(-1, 1), int(page.imagewidth), self._rows_per_strip(page), downsample)

    # ------------------------------------------------------------------ lifetime
    def _close(self) -> None:
        self._tif.close()


_OME_UNITS = {"pm": 1e-6, "nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _ome_mpp(tif) -> float | None:
    """``PhysicalSizeX`` of the first OME ``Pixels`` element, in microns (unit default: µm)."""
    text = getattr(tif, "ome_metadata", None) or ""
    match = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", text)
    if not match:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', match.group(0)))
    try:
        size = float(attrs["PhysicalSizeX"])
    except (KeyError, ValueError):
        return None
    return size * _OME_UNITS.get(attrs.get("PhysicalSizeXUnit", "µm"), float("nan"))


def _mpp(tif, page) -> float | None:
    """Microns per pixel: OME-XML ``PhysicalSizeX``; else the resolution tags (unit inch or cm);
    else Aperio's ``MPP = x``. The caller drops implausible values (:func:`checked_mpp`)."""
    if getattr(tif, "is_ome", False):
        ome = _ome_mpp(tif)
        if ome is not None:
            return ome
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if res is not None and unit is not None and int(unit.value) in (2, 3):
        num, den = res.value
        if num > 0 and den > 0:
            mpp = (25400.0 if int(unit.value) == 2 else 10000.0) / (num / den)
            if checked_mpp(mpp)[0] is not None or not tif.is_svs:
                return mpp
    if tif.is_svs:
        # full float syntax: "MPP = 2.5e-01" is 0.25, not 2.5 (10x wrong tiles); "1e308" is refused by checked_mpp
        match = re.search(r"MPP\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", page.description or "")
        if match:
            return float(match.group(1))
    return None
