"""Paths a user gives (``--tiles``, ``--manifest``, SLIDES, ``--model``): what exactly is wrong
with one that cannot be used, in one line.

"does not exist" is only said of a path that does not exist: a symlink loop, a dangling
symlink, a folder one may not read, a file where a folder is expected and a run directory given
as a TileSet each get their own message naming the fix.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from clotclf_core.plugin.errors import ClotclfError

if TYPE_CHECKING:  # pragma: no cover
    pass


def why_unusable(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be opened at all (None when it can be stat'ed)."""
    p = Path(path)
    try:
        p.stat()
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop (a link that points, directly or not, to itself); fix or remove the link"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "cannot be read (permission denied); fix its permissions"
        if exc.errno == errno.ENOTDIR:
            return "has a file where a folder should be in its path; check the path"
        if exc.errno == errno.ENAMETOOLONG:
            return "is too long a path"
        if p.is_symlink():
            return f"is a symbolic link to '{os.readlink(p)}', which does not exist; fix the link"
        return "does not exist"


def check_folder(path: str | os.PathLike, what: str, hint: str = "check the path",
                 error: type[ClotclfError] = ClotclfError) -> Path:
    """``path`` as a folder, or one ``error`` saying what it is instead."""
    p = Path(path)
    problem = why_unusable(p)
    if problem:
        raise error(f"{what} '{p}' {problem}" + ("" if problem != "does not exist" else f": {hint}"))
    if not p.is_dir():
        raise error(f"{what} '{p}' is a file, not a folder: {hint}")
    return p


