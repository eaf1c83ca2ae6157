"""What a slide file must be before any reader touches it.

Readers trust a file's header: OpenSlide and tifffile allocate what a TIFF declares and block in
``open()`` on whatever the path names. So before a source sees a file, :func:`check_slide_file`
refuses, in one line each:

- **anything but a regular file** (a FIFO named by a manifest would block ``open()`` forever, a
  device would be read without end, a folder named ``x.tif``, a symlink loop): decided by
  ``stat``, which never blocks, and :func:`open_regular` opens with ``O_NONBLOCK`` and checks
  the opened file itself where clotclf reads a user's file directly;
- **a TIFF whose header its bytes cannot hold** (:func:`tiff_problem`, whichever source would read
  it): a tile or strip table shorter than the image needs (OpenSlide would tile the missing 95 % as
  transparent glass and call the slide done; it spends minutes on a 366-byte file declaring
  200,000 x 200,000 px), or image data running past the end of the file (a copy cut short);
- **a TIFF whose declared size would take the memory of the machine** unless told otherwise
  (``--trust-declared-size``): one tile or strip that decodes past :data:`MAX_SEGMENT_BYTES` (a
  32,768 x 32,768 deflate tile in a 3 MB file takes 3.5 GB to decode, and under a memory-capped
  job OpenSlide aborts the whole process), or more decoded pixels than :data:`MAX_EXPANSION` times
  the bytes that hold them (tiles sharing their data, a forged header: a 2.5 MB file is not a
  30 GB slide).

NDPI files keep a whole level in one JPEG strip that OpenSlide reads by its restart markers, so
the per-strip cap is not applied to them.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import stat
from typing import IO, Any

import numpy as np

from clotclf_core.inputs import why_unusable
from clotclf_core.plugin.errors import SlideDamaged, SlideReadError, SlideUnusable

#: one decoded tile or strip may not take more memory than this (each decoding thread holds one)
MAX_SEGMENT_BYTES = 512 * 2**20
#: decoded bytes per stored byte above which a TIFF's declared size is not believed: deflate cannot
#: pass 1,032 to 1 and a real scan, even one with pure-white glass around a small biopsy, stays
#: below about 250 to 1
MAX_EXPANSION = 500
#: the expansion check applies from this many declared decoded bytes on (small slides are cheap)
EXPANSION_FLOOR = 2**30
#: the option that lifts the two memory caps
TRUST_FLAG = "--trust-declared-size"
#: pages (and SubIFDs of each) looked at: the levels of a slide come first in a TIFF
_MAX_PAGES = 64

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class SlideTooLarge(SlideUnusable):
    """A slide whose declared size would take more memory than the caps allow (``--trust-declared-size`` lifts them)."""


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a regular file one can read (``None`` when it is), without opening it."""
    problem = why_unusable(path)
    if problem:
        return problem
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    return f"is {file_kind(mode)}, not a file"


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """Open ``path`` for reading, refusing anything but a regular file without ever blocking: the
    open uses ``O_NONBLOCK`` (a FIFO without a writer would block a plain ``open()``) and the opened
    file itself is checked (no race with a file swapped after a ``stat``). Raises ``OSError``
    (``EINVAL`` with the kind of file in its message) for a non-regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"is {file_kind(mode)}, not a file", os.fspath(path))
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_slide_file(path: str | os.PathLike, trust_declared_size: bool = False) -> None:
    """Refuse ``path`` before any reader opens it (see the module docstring); a TIFF's header is
    checked whichever source will read it."""
    problem = regular_file_problem(path)
    if problem == "does not exist":
        raise SlideReadError(f"slide file '{path}' does not exist: check the path (and the manifest's image_id)")
    if problem:
        fix = "" if ";" in problem else ": give the slide file itself"
        raise SlideReadError(f"slide '{path}' {problem}{fix}")
    with open_regular(path) as fh:
        magic = fh.read(4)
    if magic in _TIFF_MAGIC:
        error = tiff_problem(path, trust_declared_size)
        if error is not None:
            raise error


# ----------------------------------------------------------------------------- TIFF declarations


def _mib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n):,} bytes"


def _pages(tif: Any) -> list[Any]:
    """The first pages of the file and their SubIFDs (where OME and vips pyramids keep levels)."""
    import itertools

    import tifffile

    pages = []
    for page in itertools.islice(tif.pages, _MAX_PAGES):
        if not isinstance(page, tifffile.TiffPage):
            continue
        pages.append(page)
        for j, offset in enumerate((page.subifds or ())[:_MAX_PAGES]):
            try:
                tif.filehandle.seek(offset)
                pages.append(tifffile.TiffPage(tif, index=(page.index, j)))
            except Exception:  # a damaged SubIFD: the source that reads it says so
                break
    return pages


def _segments(page: Any) -> tuple[int, int, int, int]:
    """(segment width, height, decoded bytes of one segment, segments the image needs)."""
    spp = int(page.samplesperpixel or 1)
    bps = page.bitspersample if isinstance(page.bitspersample, int) else max(page.bitspersample)
    nbytes = max(1, math.ceil(int(bps or 8) / 8))
    planes = spp if page.planarconfig == 2 else 1
    per_pixel = nbytes * (1 if planes > 1 else spp)
    width, height, depth = int(page.imagewidth), int(page.imagelength), max(1, int(page.imagedepth or 1))
    if page.is_tiled:
        tw, th, td = int(page.tilewidth), int(page.tilelength), max(1, int(page.tiledepth or 1))
        needed = math.ceil(width / tw) * math.ceil(height / th) * math.ceil(depth / td) * planes
        return tw, th, tw * th * td * per_pixel, needed
    rps = int(page.rowsperstrip or 0)
    rps = rps if 0 < rps < height else height
    return width, rps, width * rps * depth * per_pixel, math.ceil(height / max(rps, 1)) * planes


def tiff_problem(path: str | os.PathLike, trust_declared_size: bool = False) -> SlideUnusable | None:
    """The error a TIFF's header earns before any reader decodes it (``None``: nothing wrong).

    Damage (a short tile table, data past the end of the file) is refused whatever the flag;
    :class:`SlideTooLarge` (one segment past :data:`MAX_SEGMENT_BYTES`, or more than
    :data:`MAX_EXPANSION` decoded bytes per stored byte) unless ``trust_declared_size``. A file
    tifffile cannot parse is left to the sources (they say why in their own words)."""
    import logging

    import tifffile

    if not os.environ.get("CLOTCLF_DEBUG"):  # (its warnings on a damaged file would surround the one Error line)
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    size = os.path.getsize(path)
    try:
        with tifffile.TiffFile(path) as tif:
            ndpi = bool(getattr(tif, "is_ndpi", False))
            pages = _pages(tif)
            return _check_pages(str(path), pages, size, ndpi, trust_declared_size)
    except (SlideUnusable, KeyboardInterrupt, MemoryError):
        raise
    except Exception:  # not parseable: the sources refuse it with their own message
        return None


def _distinct_bytes(offsets: np.ndarray, counts: np.ndarray) -> tuple[int, int]:
    """(bytes, number) of the distinct (offset, count) segments: segments sharing their data (a
    header pointing every tile at one blob) count once."""
    if len(offsets) == 0:
        return 0, 0
    if len(offsets) == 1 or bool((np.diff(offsets.astype(np.int64)) > 0).all()):  # (the usual file: every offset new)
        return int(counts.sum()), len(offsets)
    order = np.lexsort((counts, offsets))
    o, c = offsets[order], counts[order]
    first = np.ones(len(o), bool)
    first[1:] = (o[1:] != o[:-1]) | (c[1:] != c[:-1])
    return int(c[first].sum()), int(first.sum())


def _check_pages(path: str, pages: list[Any], size: int, ndpi: bool, trust: bool) -> SlideUnusable | None:
    too_large: SlideUnusable | None = None
    for page in pages:
        width, height = int(page.imagewidth), int(page.imagelength)
        if width <= 0 or height <= 0:
            continue
        seg_w, seg_h, seg_bytes, needed = _segments(page)
        offsets, counts = page.dataoffsets, page.databytecounts
        what = "tiles" if page.is_tiled else "strips"
        where = f"slide '{path}' ({width:,} x {height:,} px" + (f", page {page.index}" if page.index else "") + ")"
        if len(offsets) < needed or len(counts) < needed:
            return SlideDamaged(
                f"{where} is damaged: its {what[:-1]} table lists {min(len(offsets), len(counts)):,} {what} where its size "
                f"needs {needed:,} ({seg_w:,} x {seg_h:,} px each); the rest of the image is missing, whichever reader "
                "opened it. Re-copy or re-export the slide")
        # (numpy on the segment tables: a mean STRIP AI slide's level 0 has ~13,000 tiles)
        offs, cnts = np.asarray(offsets[:needed], dtype=np.uint64), np.asarray(counts[:needed], dtype=np.uint64)
        stored_at = cnts > 0
        end = int((offs + cnts)[stored_at].max()) if stored_at.any() else 0
        if end > size:
            return SlideDamaged(
                f"{where} is truncated: its image data runs to byte {end:,} but the file has {size:,} bytes; "
                "re-copy or re-download it")
        if trust or too_large is not None:
            continue
        if seg_bytes > MAX_SEGMENT_BYTES and not ndpi:
            too_large = SlideTooLarge(
                f"{where} stores its image in {what} of {seg_w:,} x {seg_h:,} px: decoding one takes {_mib(seg_bytes)} of "
                f"memory (more than the {_mib(MAX_SEGMENT_BYTES)} allowed per {what[:-1]}). Re-save it as a tiled TIFF "
                f"(e.g. `vips tiffsave in out.tif --tile --pyramid`), or pass {TRUST_FLAG} on a machine with the memory")
            continue
        n_stored = int(stored_at.sum())
        stored, n_used = _distinct_bytes(offs[stored_at], cnts[stored_at])
        decoded = n_stored * seg_bytes
        if decoded >= EXPANSION_FLOOR and decoded > MAX_EXPANSION * max(stored, 1):
            shared = n_stored - n_used
            how = f"; {shared:,} of its {what} share their data with another" if shared > 0 else ""
            too_large = SlideTooLarge(
                f"{where} declares {_size(decoded)} of pixels held in {_size(stored)} of image data "
                f"({decoded / max(stored, 1):,.0f} to 1{how}): no scan compresses past about {MAX_EXPANSION} to 1, so the "
                f"header is not believed. Re-export the slide, or pass {TRUST_FLAG} if it is genuine")
    return too_large
