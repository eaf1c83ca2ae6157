"""One writer per output folder: an advisory lock every command that writes a folder takes first.

    from clotclf_core.plugin.lock import output_lock

    with output_lock(out):          # refused at once if another clotclf process writes `out`
        ...write into out...

The lock is a file beside the folder, ``<parent>/.<name>.clotclf-lock`` (beside, not inside: a
command may replace the folder whole, as ``pull --out`` does), holding the holder's pid, host,
command line and start time as JSON, and locked with ``flock`` — so the kernel releases it when
the holder exits, however it exits: a lock left by a dead process is simply taken over. A second
writer is refused with one :class:`OutputLocked` line naming the holder's pid and command.

Only the process that runs the command takes the lock: worker processes (local or Dask, forked or
spawned) and DDP ranks other than the main one do not, and are never refused. Where ``flock`` is
not supported (some network file systems), the file itself is the lock: it is taken over when the
pid it names no longer runs on this host (or after :data:`STALE_AFTER` for another host).

Importing this module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from clotclf_core.plugin.errors import ClotclfError, os_error_message, printable

#: without flock: a lock file of another host this old is taken over (seconds)
STALE_AFTER = 24 * 3600


class OutputLocked(ClotclfError):
    """Another clotclf process is writing the same output folder."""


def lock_path(folder: str | os.PathLike) -> Path:
    """Where the lock of ``folder`` lives: ``<parent>/.<name>.clotclf-lock``."""
    folder = Path(folder).expanduser().absolute()
    return folder.parent / f".{folder.name}.clotclf-lock"


def _holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _refusal(folder: Path, what: str, holder: dict[str, Any]) -> OutputLocked:
    pid = holder.get("pid", "?")
    command = printable(holder.get("command") or "a clotclf command", 160)
    host = holder.get("host")
    where = f" on {printable(host, 60)}" if host and host != socket.gethostname() else ""
    since = holder.get("started")
    when = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(since, (int, float)) else ""
    return OutputLocked(
        f"{what} '{folder}' is being written by another clotclf process (pid {pid}{where}: `{command}`{when}); two "
        "writers would mix their results. Wait for it to finish, or choose another folder (a lock left by a process "
        "that died is taken over by itself)"
    )


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record(command: str | None) -> bytes:
    line = command or " ".join(["clotclf", *sys.argv[1:]])
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": line[:500],
                       "started": round(time.time(), 3)}).encode()


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, what: str = "--out", command: str | None = None) -> Iterator[Path]:
    """Hold the lock of ``folder`` for the duration of the block (``what`` names it in the refusal:
    ``"--out"``, ``"the run folder"``; ``command``: what the lock records, default this process's
    command line). Raises :class:`OutputLocked` at once when another process holds it. The folder's
    parent is created if needed (and removed again if the block leaves it empty). Yields the lock file."""
    folder = Path(folder).expanduser().absolute()
    path = lock_path(folder)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, folder, what, command)
    except OSError as exc:  # a read-only or full disk, a file in the way: one line, as for any other write
        for parent in made:
            with contextlib.suppress(OSError):
                parent.rmdir()
        message = os_error_message(exc, f"the lock file of {what} '{folder}'", path.parent)
        if message is None:
            raise
        raise ClotclfError(message) from None
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before closing: a process waiting on this inode re-checks and takes a fresh file
        os.close(fd)
        for parent in made:
            with contextlib.suppress(OSError):
                parent.rmdir()


def _acquire(path: Path, folder: Path, what: str, command: str | None) -> int:
    for _ in range(20):  # the file can be replaced between open and lock: try again on a fresh one
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _flock(fd, path, folder, what):
                return _by_pid(fd, path, folder, what, command)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # unlinked by a holder that just finished: lock the new file instead
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, _record(command))
            return fd
        except BaseException:
            os.close(fd)
            raise
    raise OutputLocked(f"cannot lock {what} '{folder}': its lock file {path} keeps being replaced; try again")


def _flock(fd: int, path: Path, folder: Path, what: str) -> bool:
    """Lock ``fd``; True when locked, False when this file system has no flock. Raises when held."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        raise _refusal(folder, what, _holder(path)) from None
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return False
        raise


def _by_pid(fd: int, path: Path, folder: Path, what: str, command: str | None) -> int:
    """No flock here: the lock file names its holder; a holder that no longer runs is taken over."""
    holder = _holder(path)
    mine = holder.get("host") == socket.gethostname()
    started = holder.get("started") if isinstance(holder.get("started"), (int, float)) else 0
    held = holder.get("pid") not in (None, os.getpid()) and (
        _alive(holder.get("pid")) if mine else time.time() - started < STALE_AFTER)
    if held:
        raise _refusal(folder, what, holder)
    os.ftruncate(fd, 0)
    os.write(fd, _record(command))
    return fd
