"""Shared checks for bad-input tests: one clear ``Error:`` line, the documented exit code, no
traceback, and nothing half-written left behind.

- :func:`invoke` runs the CLI in this process (fast; click's runner keeps stderr apart);
- :func:`run` runs ``python -m clotclf_core.cli`` in a real child process (real exit codes,
  signals, environment);
- :func:`run_on_small_disk` runs it with one folder on a tiny (or read-only) tmpfs, mounted in a
  private mount namespace (``unshare -m``, or ``unshare -rm`` when not root), so full-disk and
  read-only cases are real ``ENOSPC`` / ``EROFS`` errors, not simulations;
- :func:`assert_clean_error` and :func:`files_under` check the outcome.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None


def invoke(args: Sequence[str], env: dict[str, str] | None = None, input: str | None = None) -> Outcome:
    """Run ``clotclf ARGS`` in this process."""
    from click.testing import CliRunner

    from clotclf_core.cli.main import cli
    from clotclf_core.plugin_manager import reset_manager

    reset_manager()
    res = CliRunner().invoke(cli, [str(a) for a in args], env=env, input=input, catch_exceptions=True)
    exc = res.exception if not isinstance(res.exception, SystemExit) else None
    return Outcome(res.exit_code, res.stdout, res.stderr, exc)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "CLOTCLF_PROGRESS": "off", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("CLOTCLF_DEBUG", None)
    env.update(extra or {})
    return env


def run(args: Sequence[str], env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 300) -> Outcome:
    """Run ``clotclf ARGS`` in a child process."""
    cmd = [sys.executable, "-m", "clotclf_core.cli", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(env), cwd=cwd, timeout=timeout)
    return Outcome(done.returncode, done.stdout, done.stderr)


def _namespace_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    for prefix in ([unshare, "-m"], [unshare, "-rm"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return []


_PREFIX: list[str] | None = None


def run_on_small_disk(
    args: Sequence[str], mount: Path, size_kb: int = 256, readonly: bool = False, env: dict[str, str] | None = None,
    prepare: str = "", timeout: float = 300,
) -> tuple[Outcome, list[str]]:
    """Run ``clotclf ARGS`` with ``mount`` (created if missing) on a ``size_kb`` tmpfs, read-only
    if asked. ``prepare`` is shell run after mounting (e.g. to copy inputs in, before a remount
    read-only). Returns the outcome and the files left under ``mount`` afterwards."""
    global _PREFIX
    if _PREFIX is None:
        _PREFIX = _namespace_prefix()
    if not _PREFIX:
        pytest.skip("cannot mount a tmpfs here (no mount namespace): full-disk cases need `unshare -m` or root")
    mount.mkdir(parents=True, exist_ok=True)
    listing = mount.parent / f".{mount.name}.listing"
    m = shlex.quote(str(mount))
    cmd = shlex.join([sys.executable, "-m", "clotclf_core.cli", *map(str, args)])
    script = f"""
        mount -t tmpfs -o size={size_kb}k tmpfs {m} || exit 99
        {prepare}
        {"mount -o remount,ro " + m + " || exit 98" if readonly else ""}
        {cmd}
        rc=$?
        (cd {m} && find . -mindepth 1 | sort) > {shlex.quote(str(listing))}
        exit $rc
    """
    done = subprocess.run([*_PREFIX, "sh", "-c", script], capture_output=True, text=True, env=_env(env), timeout=timeout)
    assert done.returncode not in (98, 99), f"could not set up the tmpfs: {done.stderr}"
    left = listing.read_text().split() if listing.exists() else []
    listing.unlink(missing_ok=True)
    return Outcome(done.returncode, done.stdout, done.stderr), left


def error_lines(outcome: Outcome) -> list[str]:
    return [line for line in outcome.stderr.splitlines() if line.startswith("Error:")]


def assert_clean_error(outcome: Outcome, code: int = 2, mentions: Sequence[str] = ()) -> str:
    """Exit ``code``, exactly one ``Error:`` line naming each of ``mentions``, no traceback.
    Returns the error line."""
    assert outcome.exception is None, f"unhandled {type(outcome.exception).__name__}: {outcome.exception}"
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.stderr[-3000:]
    lines = error_lines(outcome)
    assert len(lines) == 1, f"expected one Error: line, got {lines!r}\nstderr: {outcome.stderr[-2000:]}"
    assert outcome.exit_code == code, f"exit code {outcome.exit_code}, expected {code}: {lines[0]}"
    for word in mentions:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    return lines[0]


def files_under(folder: Path) -> list[str]:
    """Every path under ``folder`` (relative, sorted); [] if it does not exist."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def temp_leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write would leave if it went wrong (``.*.tmp``)."""
    return [p for p in files_under(folder) if Path(p).name.endswith(".tmp")]
