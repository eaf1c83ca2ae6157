"""Progress bars that stay readable in a log file.

On a terminal these are ordinary tqdm bars. Without one (a log file, CI, ``make demo > log``)
tqdm would write every refresh as a new line, so there the *outer* bars (one step per slide or
epoch) refresh at most every :data:`LOG_INTERVAL` seconds and *inner* bars (tiles, batches) are
off. ``CLOTCLF_PROGRESS=tty|log|off`` forces one behaviour.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: seconds between two progress lines when stderr is not a terminal
LOG_INTERVAL = 30.0


def mode() -> str:
    """``tty``, ``log`` or ``off``: how progress is shown in this process."""
    forced = os.environ.get("CLOTCLF_PROGRESS", "").strip().lower()
    if forced in ("tty", "log", "off"):
        return forced
    try:
        return "tty" if sys.stderr.isatty() else "log"
    except (AttributeError, ValueError):
        return "log"


def bar(iterable: Any = None, *, inner: bool = False, disable: bool = False, **kwargs: Any):
    """A tqdm bar; ``inner`` for bars inside another (per tile, per batch)."""
    from tqdm.auto import tqdm

    how = mode()
    if how == "off" or (how == "log" and inner):
        disable = True
    elif how == "log":
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("maxinterval", LOG_INTERVAL * 4)
        kwargs.setdefault("ascii", True)
    return tqdm(iterable, disable=disable, **kwargs)


def write(message: str, file: Any = None) -> None:
    """Print a line (stdout unless ``file``) without breaking a bar that is drawing."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=file)
