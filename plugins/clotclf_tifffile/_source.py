"""The ``tifffile`` PatchSource: which TIFFs it reads, how highly it ranks them, and opening them
(:class:`._slide.TifffileSlide` reads them)."""

from __future__ import annotations

import os
import threading

from clotclf_core.plugin import SlideReadError, SlideUnusable

from ._slide import _TIFF_MAGIC, _VENDOR_FLAGS, TifffileSlide


def _identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class TifffileSource:
    """The ``tifffile`` PatchSource.

    :meth:`priority` parses the file's header (levels, vendor, a stack or a cut-short copy refused);
    when it ranks the file high enough to be read here, it keeps that parse for :meth:`open` of the
    same, unchanged file, which then only decodes one segment (one header parse per slide, not two).
    """

    def __init__(self) -> None:
        self._probe: tuple[str, tuple[int, int, int, int] | None, TifffileSlide] | None = None
        self._probe_lock = threading.Lock()

    def _swap_probe(self, new: tuple[str, tuple[int, int, int, int] | None, TifffileSlide] | None = None):
        """Keep ``new`` (or nothing); returns the parse kept before."""
        with self._probe_lock:
            old, self._probe = self._probe, new
        return old

    def _close_probe(self, new: tuple[str, tuple[int, int, int, int] | None, TifffileSlide] | None = None) -> None:
        old = self._swap_probe(new)
        if old is not None:
            old[2].close()

    def __del__(self) -> None:
        self._close_probe()

    def can_open(self, path: str) -> bool:
        try:
            with open(path, "rb") as fh:
                return fh.read(4) in _TIFF_MAGIC
        except OSError:
            return False

    def priority(self, path: str) -> float:
        """6 for single-level TIFFs (the reason this source exists); 11 for generic pyramidal TIFFs,
        above OpenSlide's 10: imagecodecs decodes their tiles straight to RGB where OpenSlide paints
        each region as premultiplied ARGB and converts it (tiling a synthetic pyramid's tiles under
        tissue: 0.22 against 0.79 CPU-s, the same pixels; benchmarks/peers.py); 5 for Aperio SVS
        pyramids and 1 for the vendor formats whose quirks OpenSlide knows; 0 when the file cannot be
        read here."""
        self._close_probe()
        try:
            slide = TifffileSlide(path, probe=True)
        except SlideUnusable:
            raise  # cut short, or a stack: no other reader should be tried (OpenSlide would fail later,
            # hang, or read a stack's first plane as if it were the slide)
        except SlideReadError:
            return 0.0
        rank = 1.0 if slide.vendor in _VENDOR_FLAGS else 6.0 if slide.level_count == 1 else 11.0 if not slide.vendor else 5.0
        if rank >= 6.0:
            self._close_probe((str(path), _identity(str(path)), slide))
        else:
            slide.close()
        return rank

    def open(self, path: str) -> "TifffileSlide":
        probe = self._swap_probe()
        if probe is not None:
            if probe[0] == str(path) and probe[1] is not None and probe[1] == _identity(str(path)):
                return probe[2].finish_opening()
            probe[2].close()
        return TifffileSlide(path)
