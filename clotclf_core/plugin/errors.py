"""User-facing errors and exit codes.

A :class:`ClotclfError` is a mistake the user can fix (bad path, unknown plugin, bad option,
incompatible weights...). The CLI prints its message on one line and exits non-zero; it never
shows a traceback for it. Its message names the thing that is wrong and how to fix it.

Exit codes (documented in docs/cli.md):

==== ===========================================================================================
0    everything asked for was done
1    a bug (an unexpected exception; ``CLOTCLF_DEBUG=1`` shows the traceback)
2    a user error: nothing was done, or nothing was left half-written (:class:`ClotclfError`)
3    a batch finished in part: some slides / rows failed and are listed (:data:`EXIT_PARTIAL`)
130  interrupted (Ctrl-C): what was kept and how to resume is printed (:class:`Interrupted`)
==== ===========================================================================================
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import unicodedata
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


class ClotclfError(Exception):
    """An error caused by user input, with a message that says how to fix it."""

    exit_code = EXIT_USER_ERROR


class PluginError(ClotclfError):
    """Unknown, broken, disabled or conflicting plugin component."""


class ConfigError(ClotclfError):
    """Invalid settings: bad option name or value, unknown YAML field."""


class ModelLoadError(ClotclfError):
    """A run directory or weights file that cannot be loaded."""


class Interrupted(ClotclfError):
    """Ctrl-C: the message says what was kept and how to go on (e.g. the same command + --resume)."""

    exit_code = EXIT_INTERRUPTED


class PartialFailure(ClotclfError):
    """A batch command finished, but some of its items failed. Raised *after* every result that
    could be written was written; the message lists the failures (also under ``--quiet``)."""

    exit_code = EXIT_PARTIAL


class SlideReadError(ClotclfError):
    """A slide file that is missing, not an image, damaged, or that no installed source can read."""


class SlideUnusable(SlideReadError):
    """A slide file that no reader can use rightly, whichever reads it: cut short
    (:class:`SlideDamaged`), or a stack of planes (Z, channels as pages) rather than one slide. A
    source raising this from ``priority`` stops the automatic choice, so that another reader does
    not hang, fail later with a vaguer message, or silently read the first plane of a stack."""


class SlideDamaged(SlideUnusable):
    """A slide file that is certainly broken whatever reads it (e.g. cut short: its header says its
    data runs past the end of the file)."""


def printable(text: Any, limit: int = 200) -> str:
    """``text`` safe to print on a terminal: control and format characters (escape sequences,
    bidi overrides, newlines) shown as ``\\x1b`` / ``\\u202e``, and cut to ``limit`` characters."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    shown = "".join(out)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def warn(message: str) -> None:
    """One ``warning:`` line on stderr (the run goes on)."""
    print(f"warning: {message}", file=sys.stderr)


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MiB"


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    text = str(exc)  # safetensors reports IO errors as its own exception type
    if isinstance(exc, OSError) and exc.errno is None and "requested and" in text and "written" in text:
        return True  # numpy's ndarray.tofile on a full disk: a short write, without an errno
    return isinstance(exc, Exception) and ("No space left" in text or "StorageFull" in text or "os error 28" in text)


def os_error_message(exc: BaseException, what: str | None = None, where: str | os.PathLike | None = None,
                     needed: int | str | None = None, then: str = "run the command again") -> str | None:
    """The one line for an OS error a user can fix, naming the path and the fix; ``None`` for any
    other error (the caller re-raises it). The only place clotclf turns an OS error into words.

    - ``what``: what was being written (``"the last checkpoint"``, ``"the TileSet"``); without it
      the message names the path alone.
    - ``where``: the folder written into (default: the file the error names).
    - ``needed``: the bytes it needs (shown beside the free space), or a sentence saying so.
    - ``then``: what to do once the cause is fixed (``"run the same command to resume"``).

    Cases: a full disk (also when a library reports it without an ``errno``: safetensors, numpy's
    short writes) with the free space, a read-only file system, permission denied, something in
    the way, a file where a folder should be (and the other way round), a symlink loop, a name too long.
    """
    name = getattr(exc, "filename", None)
    name = name if name is not None else getattr(exc, "filename2", None)
    place = Path(os.fsdecode(where)) if where is not None else Path(os.fsdecode(name)) if name is not None else None
    shown = f"'{place}'" if place is not None else "the output folder"
    target = f"{what} in {shown}" if what else shown
    if _is_full(exc):
        try:
            free = f"{_mib(shutil.disk_usage(_existing(place or Path('.'))).free)} free"
        except OSError:
            free = "free space unknown"
        need = f"; {needed}" if isinstance(needed, str) else f", about {_mib(needed)} needed" if needed else ""
        return (f"out of disk space while writing {target} ({free}{need}). Nothing was left half-written: free some "
                f"space or choose another folder (--out), then {then}")
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code == errno.EROFS:
        return (f"cannot write {target}: the file system is read-only. Nothing was written; choose an output folder "
                "on a writable disk (--out)")
    if code in (errno.EACCES, errno.EPERM):
        if not what:  # reading or writing: the error does not say which
            return f"permission denied for {shown}: fix its permissions, or choose a path you can use"
        return (f"permission denied writing {target}. Nothing was written; choose a folder you can write to (--out), "
                "or fix its permissions")
    path = f"'{os.fsdecode(name)}'" if name is not None else shown
    why = {
        errno.EEXIST: f"{path} already exists and is in the way. Remove it or choose another path",
        errno.ENOTDIR: f"{path}: a part of this path is a file, not a folder. Choose another path",
        errno.EISDIR: f"{path} is a folder where a file was expected. Choose a file path",
        errno.ELOOP: f"{path}: too many levels of symbolic links (a symlink loop). Fix the link",
        errno.ENAMETOOLONG: f"{path}: the file name is too long. Choose a shorter path",
    }.get(code) if code is not None else None
    if why is None:
        return None
    return f"cannot write {target}: {why}" if what else why
