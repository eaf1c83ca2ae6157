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


def test_os_error_message_of_a_write_names_what_where_and_the_space_needed(tmp_path):
    """The one helper every writer uses (write_guard, tiling, patch sets, the registry's pulls)."""
    full = os_error_message(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ckpt" / "last.tmp")),
                            "the last checkpoint", tmp_path, 50 * 2**20, "run the same command with --resume")
    assert full.startswith(f"out of disk space while writing the last checkpoint in '{tmp_path}' (")
    assert "MiB free, about 50 MiB needed" in full and full.endswith("then run the same command with --resume")
    hint = os_error_message(OSError(errno.EDQUOT, "Disk quota exceeded"), "the TileSet", tmp_path, "each slide ~150 KiB per tile")
    assert "free; each slide ~150 KiB per tile)" in hint
    # libraries that report a full disk without an errno: safetensors, numpy's short writes
    assert os_error_message(RuntimeError("Io error: No space left on device (os error 28)"), "model.safetensors", tmp_path)
    assert os_error_message(OSError("0 requested and 12 written"), "pixels", tmp_path).startswith("out of disk space")
    ro = os_error_message(OSError(errno.EROFS, "Read-only file system", "/srv/out/x"), "the predictions", "/srv/out")
    assert ro.startswith("cannot write the predictions in '/srv/out': the file system is read-only") and "--out" in ro
    denied = os_error_message(PermissionError(errno.EACCES, "Permission denied", "/srv/out/x"), "the predictions", "/srv/out")
    assert denied.startswith("permission denied writing the predictions in '/srv/out'")
    assert os_error_message(PermissionError(errno.EACCES, "Permission denied", "/srv/in")).startswith("permission denied for '/srv/in'")
    way = os_error_message(FileExistsError(errno.EEXIST, "File exists", "/srv/out/a"), "the predictions", "/srv/out")
    assert way == "cannot write the predictions in '/srv/out': '/srv/out/a' already exists and is in the way. Remove it or choose another path"
    assert os_error_message(ValueError("bad value"), "x", tmp_path) is None


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
