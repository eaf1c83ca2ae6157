"""The working raster of one slide: a (height, width, 3) uint8 image at the working resolution,
written by :func:`clotclf_core.tiling.reading.scan_slide` and cut into tiles by
:func:`clotclf_core.tiling.reading.windows`.

It is held in memory up to :data:`RASTER_IN_MEMORY_BYTES`, else in an anonymous temporary file
(``TMPDIR`` or the run's scratch folder, deleted even on a crash) read and written by rows, so
memory stays bounded whatever the slide's size.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

#: rasters up to this size stay in memory; larger ones go to an anonymous temporary file
RASTER_IN_MEMORY_BYTES = 768 * 2**20


def glass(shape: tuple[int, ...], colour) -> np.ndarray:
    """A new ``(..., 3)`` uint8 array filled with the RGB ``colour`` (glass). One row is filled, then
    copied: numpy's 3-value broadcast over a whole tile costs ~50x more (~0.4 ms a 224-px tile)."""
    c = np.asarray(colour, np.uint8).reshape(3)
    if c[0] == c[1] == c[2]:
        return np.full(shape, c[0], np.uint8)  # white (or any grey): a plain fill
    out = np.empty(shape, np.uint8)
    rows = out.reshape(-1, shape[-2] * 3) if len(shape) > 1 else out.reshape(1, -1)
    if rows.size:
        rows[0].reshape(-1, 3)[:] = c
        rows[1:] = rows[0]
    return out


class Raster:
    """A (height, width, 3) uint8 image in memory, or in an anonymous temporary file (rows contiguous)."""

    def __init__(self, height: int, width: int, scratch_dir: str | None = None, in_memory: bool | None = None):
        self.height, self.width = int(height), int(width)
        self.row_bytes = self.width * 3
        self.nbytes = self.height * self.row_bytes
        if in_memory is None:
            in_memory = self.nbytes <= RASTER_IN_MEMORY_BYTES
        self._array: np.ndarray | None = None
        self._file = None
        self._buffer: bytearray | None = None
        self.scratch_dir = scratch_dir
        if in_memory:
            self._array = np.zeros((self.height, self.width, 3), np.uint8)
        else:
            try:
                self._file = tempfile.TemporaryFile(dir=scratch_dir, prefix="clotclf-raster-")
                os.ftruncate(self._file.fileno(), self.nbytes)  # sparse: unwritten rows read as zeros
            except OSError as exc:
                raise self._scratch_error(exc) from None

    def _scratch_error(self, exc: OSError) -> OSError:
        """The OS error, naming the scratch folder (so that it is not taken for the TileSet's)."""
        return OSError(exc.errno, exc.strerror, self.scratch_dir or tempfile.gettempdir())

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def write(self, y: int, x: int, block: np.ndarray) -> None:
        h, w = block.shape[:2]
        if self._array is not None:
            self._array[y : y + h, x : x + w] = block
            return
        fd = self._file.fileno()
        block = np.ascontiguousarray(block)
        try:
            if x == 0 and w == self.width:
                os.pwrite(fd, block, y * self.row_bytes)
                return
            for i in range(h):
                os.pwrite(fd, block[i], (y + i) * self.row_bytes + x * 3)
        except OSError as exc:
            raise self._scratch_error(exc) from None

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` (clipped to the raster), a read-only view or a fresh array."""
        y0, y1 = max(0, y0), min(self.height, y1)
        if y1 <= y0:
            return np.zeros((0, self.width, 3), np.uint8)
        if self._array is not None:
            return self._array[y0:y1]
        n = (y1 - y0) * self.row_bytes
        if self._buffer is None or len(self._buffer) < n:  # one buffer, reused: no fresh pages per band
            self._buffer = bytearray(n)
        view = memoryview(self._buffer)[:n]
        got = os.preadv(self._file.fileno(), [view], y0 * self.row_bytes)
        if got != n:
            raise OSError(f"short read from the working raster ({got} of {n} bytes)")
        return np.frombuffer(view, np.uint8).reshape(y1 - y0, self.width, 3)

    def close(self) -> None:
        self._array = None
        if self._file is not None:
            self._file.close()
            self._file = None
