"""Atomic file writes: every result is written to a temporary file next to its target and
renamed over it, so a crash or a full disk never leaves a half-written file under the real name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from clotclf_core.plugin.errors import ClotclfError, os_error_message


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success rename it onto ``target``.

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path: Path | None = None
    try:  # everything after mkstemp inside the try: a Ctrl-C at any point leaves no temporary file
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
        tmp_path = Path(tmp)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results get the usual permissions
        yield tmp_path
        # again: a writer may have replaced the file (safetensors' save_file writes a new 0600 one)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        if tmp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
        raise


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def write_guard(what: str, folder: str | os.PathLike, needed: int | None = None,
                after: str = "run the command again") -> Iterator[None]:
    """Turn an OS error a user can fix inside the block (a full, read-only or forbidden disk...) into
    one :class:`ClotclfError`: :func:`~clotclf_core.plugin.errors.os_error_message`'s line."""
    try:
        yield
    except ClotclfError:
        raise
    except Exception as exc:
        message = os_error_message(exc, what, Path(folder), needed, after)
        if message is None:
            raise
        raise ClotclfError(message) from None


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
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; results get the usual permissions
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


# ----------------------------------------------------------------------------- CSV cells safe in a spreadsheet

#: a cell starting with one of these is run as a formula by Excel, LibreOffice and Google Sheets
#: (OWASP "CSV Injection"; ASVS 5 1.2.10 adds NUL); the quote is how they are neutralised, and
#: a leading quote is escaped too, so that :func:`csv_unescape` gives back exactly what was written
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0")
_ESCAPED_STARTS = FORMULA_STARTS + ("'",)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text and any(ch.isdigit() for ch in text)


def csv_safe(value: Any) -> Any:
    """One CSV cell made safe to open in a spreadsheet: a string starting with ``= + - @``, tab,
    CR or NUL gets a leading ``'`` (so ``=HYPERLINK(...)`` shows as text instead of running), and
    so does one starting with ``'`` (so the escape can be undone). Numbers, and strings that are
    plain numbers (``-0.25``), are left as they are. :func:`csv_unescape` is its inverse."""
    if isinstance(value, str) and value.startswith(_ESCAPED_STARTS) and not _is_number(value):
        return "'" + value
    return value


def csv_unescape(value: Any) -> Any:
    """The value :func:`csv_safe` was given (clotclf reading back a CSV it wrote)."""
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" and value[1:].startswith(_ESCAPED_STARTS):
        return value[1:]
    return value


def _text_column(column: Any) -> bool:
    """Whether a pandas column may hold text (object, pandas 3's ``str``, ``string``, ``category``)."""
    from pandas.api import types

    return types.is_object_dtype(column) or types.is_string_dtype(column) or isinstance(column.dtype, types.CategoricalDtype)


def csv_safe_frame(df: Any) -> Any:
    """A copy of a pandas DataFrame with :func:`csv_safe` applied to its text cells (and its column
    names); numeric columns are untouched."""
    out = df.copy()
    for col in out.columns:
        if _text_column(out[col]):
            out[col] = out[col].map(csv_safe)
    out.columns = [csv_safe(c) for c in out.columns]
    return out


def csv_unescape_frame(df: Any) -> Any:
    """The inverse of :func:`csv_safe_frame`, in place (returns ``df``): for reading back a CSV clotclf wrote."""
    for col in df.columns:
        if _text_column(df[col]):
            df[col] = df[col].map(csv_unescape)
    df.columns = [csv_unescape(c) for c in df.columns]
    return df


def csv_text(df: Any, **to_csv: Any) -> str:
    """``df.to_csv(index=False, **to_csv)`` with every text cell neutralised (:func:`csv_safe_frame`):
    how clotclf writes every CSV a person may open in a spreadsheet."""
    to_csv.setdefault("index", False)
    return csv_safe_frame(df).to_csv(**to_csv)


def csv_rows_text(rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> str:
    """CSV text of ``rows`` (dicts) with the csv module, every text cell neutralised
    (:func:`csv_safe`): for writers without pandas."""
    import csv
    import io

    names = fieldnames or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[csv_safe(n) for n in names], lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({csv_safe(k): csv_safe(v) for k, v in row.items()})
    return buf.getvalue()


def write_csv(target: str | os.PathLike, df: Any, **to_csv: Any) -> None:
    """Write a DataFrame as CSV atomically, every text cell neutralised (:func:`csv_text`)."""
    write_text(target, csv_text(df, **to_csv))
