"""Memory maps of ``.npy`` files (a TileSet's pixels, a feature store's matrices), a bounded
number open at once.

Each memory map holds a file descriptor (Python's ``mmap`` keeps a duplicate of it), so keeping
one per slide made ``embed``, ``train``, ``predict`` and ``evaluate`` hold one descriptor per slide
of the cohort: 1,100 slides took 487 and failed under ``ulimit -n 256``. :class:`MappedArrays`
keeps the :data:`MAX_OPEN` most recently used maps; an older one is dropped (its descriptor is
closed once no array still points into it) and mapped again when asked for.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

#: memory maps kept open per reader (per loader worker): a batch rarely spans more slides
MAX_OPEN = 32


class MappedArrays:
    """``get(key, path)``: ``path`` memory-mapped read-only, the ``limit`` most recent kept."""

    def __init__(self, limit: int = MAX_OPEN):
        self.limit = max(1, int(limit))
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str, path: Path) -> np.ndarray:
        arr = self._maps.get(key)
        if arr is not None:
            self._maps.move_to_end(key)
            return arr
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        self._maps[key] = arr
        while len(self._maps) > self.limit:
            self._maps.popitem(last=False)
        return arr

    def __len__(self) -> int:
        return len(self._maps)

    def clear(self) -> None:
        self._maps.clear()
