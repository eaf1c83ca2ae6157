"""The CLI's last line of defence: OS errors and Ctrl-C become one clear line and a documented exit code."""

from __future__ import annotations

import errno

from badinput import assert_clean_error, run_on_small_disk

from clotclf_core.plugin.errors import EXIT_INTERRUPTED, os_error_message


def test_os_error_message_names_path_and_fix(tmp_path):
    full = os_error_message(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.npy")))
    assert "out of disk space" in full and str(tmp_path / "x.npy") in full and "MiB free" in full
    ro = os_error_message(OSError(errno.EROFS, "Read-only file system", "/srv/out"))
    assert "read-only" in ro and "/srv/out" in ro
    assert "symlink loop" in os_error_message(OSError(errno.ELOOP, "Too many levels", "/a/b"))
    assert os_error_message(OSError(errno.EIO, "I/O error")) is None  # not a user error: stays a bug report


def test_read_only_output_folder_is_one_line(tmp_path):
    out, left = run_on_small_disk(["demo-data", str(tmp_path / "ro" / "demo"), "--patients", "4", "-q"], tmp_path / "ro", readonly=True)
    assert_clean_error(out, mentions=["read-only", "demo"])
    assert left == []


def test_ctrl_c_exit_code(monkeypatch):
    from click.testing import CliRunner

    from clotclf_core.cli import main as cli_mod

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("clotclf_core.cli.plugins._plugin_rows", boom)
    res = CliRunner().invoke(cli_mod.cli, ["list-plugins"])
    assert res.exit_code == EXIT_INTERRUPTED
    assert res.stderr.startswith("Error: interrupted")
