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


def _existing_parent(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def os_error_message(exc: OSError) -> str | None:
    """One line for an OS error a user can fix (full disk, read-only or forbidden folder, a file
    where a folder should be...), naming the path and the fix; ``None`` for anything else."""
    name = exc.filename if exc.filename is not None else exc.filename2
    where = Path(os.fsdecode(name)) if name is not None else None
    shown = f"'{where}'" if where is not None else "the output folder"
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        free = ""
        if where is not None:
            try:
                free = f" ({shutil.disk_usage(_existing_parent(where)).free / 2**20:.0f} MiB free there)"
            except OSError:
                pass
        return f"out of disk space while writing {shown}{free}. Nothing was left half-written; free some space and run the command again"
    if code == errno.EROFS:
        return f"cannot write {shown}: the file system is read-only. Choose an output folder on a writable disk"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied for {shown}. Choose a folder you can write to, or fix its permissions"
    if code == errno.EEXIST:
        return f"{shown} already exists and is in the way. Remove it or choose another path"
    if code == errno.ENOTDIR:
        return f"{shown}: a part of this path is a file, not a folder. Choose another path"
    if code == errno.EISDIR:
        return f"{shown} is a folder where a file was expected. Choose a file path"
    if code == errno.ELOOP:
        return f"{shown}: too many levels of symbolic links (a symlink loop). Fix the link"
    if code == errno.ENAMETOOLONG:
        return f"{shown}: the file name is too long. Choose a shorter path"
    return None


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


def disk_error(exc: BaseException, what: str, folder: Path, needed: int | None = None,
               after: str = "run the command again") -> ClotclfError | None:
    """The one-line error for ``exc`` raised while writing ``what`` into ``folder``; None if it is
    not a disk problem a user can fix (then the caller re-raises)."""
    folder = Path(folder)
    if _is_full(exc):
        try:
            free = f"{_mib(shutil.disk_usage(_existing(folder)).free)} free"
        except OSError:
            free = "free space unknown"
        need = f", about {_mib(needed)} needed" if needed else ""
        return ClotclfError(
            f"out of disk space while writing {what} in '{folder}' ({free}{need}). Nothing was left half-written: "
            f"free some space (or choose another --out), then {after}")
    code = getattr(exc, "errno", None)
    if code == errno.EROFS:
        return ClotclfError(
            f"cannot write {what} in '{folder}': the file system is read-only. Nothing was written; choose an output "
            "folder on a writable disk (--out)")
    if code in (errno.EACCES, errno.EPERM):
        return ClotclfError(
            f"permission denied writing {what} in '{folder}'. Nothing was written; choose a folder you can write "
            "to (--out), or fix its permissions")
    return None
