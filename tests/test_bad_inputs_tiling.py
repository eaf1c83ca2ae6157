"""Every bad input of `clotclf tile` and `clotclf export-patches`: one clear `Error:` line, the
documented exit code (2 user error, 3 partial batch failure, 130 interrupted), no traceback, and
nothing half-written — full and read-only disks on a real tmpfs, Ctrl-C, partial failures,
broken tile indexes, absurd geometries and mpps, files that lie about their size, an unreachable
Dask scheduler."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from badinput import assert_clean_error, files_under, invoke, run, run_on_small_disk, temp_leftovers
from test_tiling import DARK, SMALL_ARGS, write_slide

from clotclf_core.plugin.errors import EXIT_INTERRUPTED, EXIT_PARTIAL


@pytest.fixture
def slides(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    write_slide(d / "s1.tif", seed=1)
    write_slide(d / "s2.tif", blobs=((500, 400, 250, DARK),), seed=2)
    return d


def tile(*args):
    return invoke(["tile", *map(str, args)])


# ----------------------------------------------------------------------------- disks


def test_tile_on_a_full_disk_is_one_line_naming_the_folder_and_the_space(tmp_path, slides):
    mount = tmp_path / "disk"
    out, left = run_on_small_disk(["tile", slides, "--out", mount / "ts", *SMALL_ARGS, "-q"], mount, size_kb=72)
    line = assert_clean_error(out, mentions=["out of disk space", str(mount / "ts"), "MiB"])
    assert "resume" in line
    assert not [p for p in left if p.endswith(".tmp")], left
    assert not any(p.startswith("./ts/pixels/") and p.endswith(".npy") and "s2" in p for p in left) or "s2" not in line


def test_tile_into_a_read_only_folder_is_one_line_and_writes_nothing(tmp_path, slides):
    mount = tmp_path / "ro"
    out, left = run_on_small_disk(["tile", slides, "--out", mount / "ts", *SMALL_ARGS, "-q"], mount, readonly=True)
    assert_clean_error(out, mentions=["read-only", str(mount / "ts")])
    assert left == []


@pytest.mark.parametrize("readonly", [False, True], ids=["full", "read-only"])
def test_export_patches_on_a_bad_disk_leaves_no_partial_output(tmp_path, slides, readonly):
    mount = tmp_path / "disk"
    args = ["export-patches", slides, "--out", mount / "patches", "--tile-size", "50", "--downsample", "2", "--size", "64",
            "--thumbnail-size", "256", "--per-slide", "30", "-q"]
    out, left = run_on_small_disk(args, mount, size_kb=48, readonly=readonly)
    assert_clean_error(out, mentions=["read-only" if readonly else "out of disk space", str(mount / "patches")])
    assert left == [], left


# ----------------------------------------------------------------------------- interruptions and partial failures


def test_ctrl_c_in_tile_says_what_was_kept_and_how_to_resume(tmp_path, slides, monkeypatch):
    import clotclf_core.tiling.execution as execution

    real = execution.process_slide

    def interrupted(job, bar=None):
        if job["image_id"] == "s2":
            raise KeyboardInterrupt
        return real(job, bar)

    monkeypatch.setattr(execution, "process_slide", interrupted)
    out = tile(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "-q")
    line = assert_clean_error(out, code=EXIT_INTERRUPTED, mentions=["interrupted", "1 slide(s) finished", "same command again"])
    assert "kept" in line
    assert temp_leftovers(tmp_path / "ts") == [] and (tmp_path / "ts" / "pixels" / "s1.npy").exists()
    monkeypatch.undo()
    again = tile(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 1


def test_ctrl_c_in_a_terminal_under_dask_local_is_one_line(tmp_path, slides):
    """A terminal's Ctrl-C reaches the whole process group: the local cluster's worker processes
    must leave it to the client (one line saying what was kept), not print their own tracebacks."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from badinput import _env

    for i in range(40):  # enough slides to still be running once the cluster is up
        (slides / f"c{i:02d}.tif").write_bytes((slides / "s1.tif").read_bytes())
    out = tmp_path / "ts"
    cmd = [sys.executable, "-m", "clotclf_core.cli", "tile", str(slides), "--out", str(out), *SMALL_ARGS, "-q",
           "--dask", "local", "--workers", "2"]
    # a new session, as a shell gives a foreground job (a background job of a script would ignore SIGINT)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(None),
                            start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None and not list((out / "index").glob("*.csv")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: interrupted"), stderr


@pytest.mark.parametrize("quiet", [[], ["-q"], ["--json"]], ids=["table", "quiet", "json"])
def test_one_bad_slide_among_good_ones_is_a_partial_failure(tmp_path, slides, quiet):
    (slides / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 100)
    out = tile(slides, "--out", tmp_path / "ts", *SMALL_ARGS, *quiet)
    line = assert_clean_error(out, code=EXIT_PARTIAL, mentions=["1 of 3 slide(s) could not be tiled", "broken:", "run the same command again"])
    assert str(tmp_path / "ts") in line
    if quiet == ["--json"]:
        assert json.loads(out.stdout)["failures"][0]["image_id"] == "broken"
    from clotclf_core.tiling.tileset import TileSet

    assert set(TileSet(tmp_path / "ts").index["image_id"]) == {"s1", "s2"}


def test_a_truncated_pyramid_is_one_line_without_the_readers_own_warnings(tmp_path, slides):
    import numpy as np
    import tifffile

    img = np.random.default_rng(0).integers(0, 255, (600, 600, 3), np.uint8)
    with tifffile.TiffWriter(tmp_path / "full.tif") as w:
        for step in (1, 2, 4):
            w.write(img[::step, ::step], tile=(128, 128), compression="deflate", photometric="rgb")
    data = (tmp_path / "full.tif").read_bytes()
    (slides / "cut.tif").write_bytes(data[: len(data) // 2])  # an interrupted copy
    out = run(["tile", slides, "--out", tmp_path / "ts", *SMALL_ARGS, "-q"], timeout=120)
    assert_clean_error(out, code=EXIT_PARTIAL, mentions=["cut", "truncated"])
    assert "tifffile" not in out.stderr and "invalid page offset" not in out.stderr, out.stderr


def test_a_manifest_row_whose_slide_is_missing_is_a_partial_failure(tmp_path, slides):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,label\ns1,CE\ns2,LAA\ngone,CE\n")
    out = tile(slides, "--manifest", manifest, "--out", tmp_path / "ts", *SMALL_ARGS, "-q")
    assert_clean_error(out, code=EXIT_PARTIAL, mentions=["gone:", "no slide file for image_id 'gone'"])


# ----------------------------------------------------------------------------- broken tile indexes


def _tiled(tmp_path, slides):
    assert tile(slides, "--out", tmp_path / "ts", *SMALL_ARGS, "-q").exit_code == 0
    return tmp_path / "ts"


def _stale(root: Path) -> None:
    (root / "tiles.csv").unlink()


@pytest.mark.parametrize(
    "where, content",
    [("tiles.csv", b""), ("tiles.csv", b"\x00\xff\xfe\x01" * 64), ("index/s1.csv", b""), ("index/s1.csv", b"\x89PNG\r\n\x1a\n\x00\x00")],
    ids=["empty-merged", "binary-merged", "empty-shard", "binary-shard"],
)
def test_an_empty_or_binary_tile_index_is_one_line_when_read_and_repaired_by_a_rerun(tmp_path, slides, where, content):
    root = _tiled(tmp_path, slides)
    if where.startswith("index/"):
        _stale(root)
    (root / where).write_bytes(content)
    out = invoke(["train", "--tiles", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "-q"])
    assert_clean_error(out, mentions=[where.split("/")[-1], "re-run `clotclf tile"])
    assert not (tmp_path / "run").exists()
    again = tile(slides, "--out", root, *SMALL_ARGS, "--json")  # a rerun over it repairs the TileSet
    assert again.exit_code == 0, again.stderr
    from clotclf_core.tiling.tileset import TileSet

    assert set(TileSet(root).index["image_id"]) == {"s1", "s2"}


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02" * 30], ids=["empty", "binary"])
def test_an_old_format_tiles_csv_that_is_empty_or_binary(tmp_path, slides, content):
    root = tmp_path / "old"
    (root / "pixels").mkdir(parents=True)
    (root / "tiles.csv").write_bytes(content)
    (root / "tileset.json").write_text(json.dumps({"format": "clotclf-tileset", "format_version": 1, "tile_pixels": 8,
                                                   "settings": {}, "slides": {"a": {"status": "done", "n_tiles": 0}}}))
    out = invoke(["train", "--tiles", str(root), "--out", str(tmp_path / "run"), "-q"])
    assert_clean_error(out, mentions=["tiles.csv"])
    out = tile(slides, "--out", root, *SMALL_ARGS, "-q")  # a rerun over an old TileSet: refused, it says how
    assert_clean_error(out, mentions=["format 1", "--overwrite"])


# ----------------------------------------------------------------------------- slide paths


@pytest.mark.parametrize("command", ["tile", "export-patches"])
def test_a_symlink_loop_as_slides_is_said_for_what_it_is(tmp_path, command):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    out = invoke([command, tmp_path / "loop", "--out", tmp_path / "out"])
    line = assert_clean_error(out, mentions=["symbolic link loop", str(tmp_path / "loop")])
    assert "does not exist" not in line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- geometry, mpp, lying files


def _huge_header_tiff(path: Path, side: int = 200_000) -> Path:
    """A 502-byte TIFF whose header declares a side x side RGB image (its data is not there)."""
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, side), (279, 4, 1, 2**32 - 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    data = b"II*\x00" + struct.pack("<I", 8) + ifd
    path.write_bytes(data + b"\x00" * (502 - len(data)))
    return path


def _slide_dir(tmp_path, name, **kw) -> Path:
    d = tmp_path / name
    d.mkdir()
    write_slide(d / f"{name}.tif", **kw)
    return d


@pytest.mark.parametrize(
    "case, make, args, mentions",
    [
        ("downsample-inf", None, ["--downsample", "inf"], ["downsample", "finite"]),
        ("tile-um-and-tile-size", None, ["--tile-um", "100", "--tile-size", "50"], ["--tile-um", "--tile-size", "give one"]),
        ("tiny-slide", lambda t: _slide_dir(t, "tiny", size=(40, 300), blobs=()), [], ["40 x 300 px", "smaller than 64 px"]),
        ("absurd-mpp-with-tile-um", lambda t: _slide_dir(t, "vips", mpp=1000.0), ["--tile-um", "200"],
         ["microns per pixel", "--tile-size"]),
        ("grid-too-large", lambda t: _slide_dir(t, "dense", size=(4000, 3000), blobs=()), ["--downsample", "1", "--tile-size", "8", "--train-size", "8",
                                                             "--stride", "1"], ["more than 10,000,000", "--stride"]),
        # 100 um tiles are 100 px on a 1 um/px scan, but --stride 100 at 1/4 is 400 px: gaps between tiles
        ("stride-past-a-tile-um-tile", lambda t: _slide_dir(t, "coarse", mpp=1.0), ["--tile-um", "100", "--stride", "100"],
         ["--stride", "400 level-0 px", "100 um", "never be looked at"]),
        # a tile of 224,000 level-0 px (a typo for --downsample 10): 14,000 px at 1/16, 35 GiB for one batch
        ("tile-far-larger-than-the-slide", None, ["--downsample", "1000", "--min-tissue", "0"],
         ["GiB", "--downsample", "--batch-size"]),
        ("huge-header-502-bytes", lambda t: (t / "lie").mkdir() or _huge_header_tiff(t / "lie" / "lie.tif").parent, [],
         ["truncated", "200,000 x 200,000 px"]),
    ],
)
def test_bad_geometry_and_lying_slides_are_one_line(tmp_path, slides, case, make, args, mentions):
    folder = make(tmp_path) if make else slides
    outcome = run(["tile", folder, "--out", tmp_path / "ts", *args, "-q"], timeout=120)
    assert_clean_error(outcome, mentions=mentions)
    if case in ("downsample-inf", "tile-um-and-tile-size"):
        assert not (tmp_path / "ts").exists()


def test_an_implausible_mpp_is_ignored_with_a_note(tmp_path):
    d = _slide_dir(tmp_path, "vips", mpp=1000.0, size=(1800, 1800), blobs=((900, 900, 700, DARK),))
    out = tile(d, "--out", tmp_path / "ts", "--json")
    assert out.exit_code == 0, out.stderr
    summary = json.loads(out.stdout)
    assert any("1000 microns per pixel, outside the plausible 0.05-50: ignored" in n for n in summary["notes"])
    from clotclf_core.tiling.tileset import TileSet

    assert TileSet(tmp_path / "ts").slides["vips"]["mpp"] is None


def test_an_unreachable_dask_scheduler_writes_nothing(tmp_path, slides):
    out = run(["tile", slides, "--out", tmp_path / "ts", *SMALL_ARGS, "--dask", "tcp://127.0.0.1:9", "-q"],
              env={"CLOTCLF_DASK_TIMEOUT": "2"}, timeout=120)
    assert_clean_error(out, mentions=["cannot reach the Dask scheduler", "tcp://127.0.0.1:9", "Nothing was written"])
    assert files_under(tmp_path / "ts") == [] and not (tmp_path / "ts").exists()


def test_progress_in_a_log_is_a_few_lines_not_one_per_refresh(tmp_path, slides):
    out = run(["tile", slides, "--out", tmp_path / "ts", *SMALL_ARGS], env={"CLOTCLF_PROGRESS": "log"})
    assert out.exit_code == 0, out.stderr
    assert len(out.stderr.splitlines()) <= 4, out.stderr
    tty = run(["tile", slides, "--out", tmp_path / "ts2", *SMALL_ARGS], env={"CLOTCLF_PROGRESS": "off"})
    assert tty.exit_code == 0 and tty.stderr.strip() == ""
