"""Append-only journals of per-slide records: what keeps a run's bookkeeping linear.

A folder whose description (``tileset.json``, ``features.json``) lists every slide is not rewritten
after each slide — that made a run quadratic in the number of slides (a TileSet of 3,000 slides:
118 s of bookkeeping). Each slide's record is one line appended to a journal beside it instead;
the writer folds the journal into the description when the run starts and ends (then deletes the
journal), and readers apply its lines on top of the description. A killed run loses at most the
line it was writing, which readers ignore, so a resumed run redoes exactly the slides that have no
line. Used by :mod:`clotclf_core.tiling.writer` and :mod:`clotclf_core.features.writer`.

A line is ``{"id": ..., "slide": {...}}`` (the slide's whole record: it replaces the one before) or
``{"id": ..., "forget": true}`` (the slide has no record any more). Applying a line twice gives the
same result, so a run killed after rewriting the description but before deleting the journal is
read correctly.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class Journal:
    """Appends lines to one journal file (one ``write`` each: a killed process leaves at most a
    torn last line, never half a line taken for a record)."""

    #: seconds between two fsyncs (a kill loses nothing: lines are written at once; a power cut
    #: loses at most these seconds of slides, which the next run does again)
    SYNC_EVERY = 2.0

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._last_sync = 0.0
        self._checked_end = False

    def append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if not self._checked_end:  # a torn last line of a killed run: end it, so that this line stays whole
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                self._checked_end = True
            os.write(fd, line)
            now = time.monotonic()
            if now - self._last_sync >= self.SYNC_EVERY:
                os.fsync(fd)
                self._last_sync = now
        finally:
            os.close(fd)

    def record(self, image_id: str, slide: dict[str, Any]) -> None:
        """The slide's whole record (it replaces any earlier one)."""
        self.append({"id": image_id, "slide": slide})

    def forget(self, image_id: str) -> None:
        """The slide has no record any more."""
        self.append({"id": image_id, "forget": True})

    def remove(self) -> None:
        """Once the description holds every line (killed before this: the lines are applied again,
        to the same effect)."""
        self.path.unlink(missing_ok=True)
        self._checked_end = False

    def exists(self) -> bool:
        return self.path.exists()


def apply_journal_file(path: str | os.PathLike, slides: dict[str, Any]) -> int:
    """Apply the journal ``path``'s lines, in order, to ``slides`` (image_id -> record); returns how
    many were applied (0 without a journal). A line that is not a complete record (the last one of a
    run killed while writing it; a disk that lost data) is skipped: its slide is not done, so the
    next run does it again. An unreadable journal raises the ``OSError`` (the caller names the fix)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return 0
    applied = 0
    for line in data.split(b"\n"):
        try:
            entry = json.loads(line)
            image_id = entry["id"]
            if not isinstance(image_id, str):
                continue
            if entry.get("forget") is True:
                slides.pop(image_id, None)
            else:
                slides[image_id] = dict(entry["slide"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        applied += 1
    return applied
