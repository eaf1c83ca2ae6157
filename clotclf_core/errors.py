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
from pathlib import Path

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
