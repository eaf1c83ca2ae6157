"""Writing results: a full, read-only or forbidden disk as one clear error with context, and a
folder of results that appears whole or not at all.

Single files are already atomic (:mod:`clotclf_core.io`). A command that writes several files
(``clotclf evaluate``: metrics, predictions, pictures) uses :func:`staged_dir`, so a failure half-way
leaves neither a half-written file nor a folder with some of the results. :func:`write_guard`
turns the OS error into one line naming what was being written, the folder, the space there and
how to go on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ClotclfError

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


@contextlib.contextmanager
def write_guard(what: str, folder: str | os.PathLike, needed: int | None = None,
                after: str = "run the command again") -> Iterator[None]:
    """Turn a full / read-only / forbidden disk inside the block into :func:`disk_error`'s line."""
    try:
        yield
    except ClotclfError:
        raise
    except Exception as exc:
        err = disk_error(exc, what, Path(folder), needed, after)
        if err is None:
            raise
        raise err from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; when the block succeeds it replaces
    ``target`` (a previous one is moved aside first and deleted after), when it fails it is
    deleted. So ``target`` holds a complete set of results, or the previous one, never a mix."""
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.rmdir(old)
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)
            raise
        if old is not None:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
