"""Hostile files (issue 19): special files, TIFF headers that lie about their size, damaged tile
tables, Aperio mpp in exponent syntax, ids with control characters, formula cells, a manifest of
10,000 missing slides, file descriptors. Each bad input: one `Error:` line naming the thing and the
fix, the exit code, nothing half-written; a run that could hang runs in a subprocess under a
timeout (the harness bounds it, not a timing assertion)."""

from __future__ import annotations

import json
import os
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from badinput import assert_clean_error, invoke, run, temp_leftovers
from test_tiling import DARK, SMALL, SMALL_ARGS, write_slide

from clotclf_core.plugin.errors import EXIT_PARTIAL


@pytest.fixture
def slides(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    write_slide(d / "s1.tif", blobs=((500, 400, 250, DARK),), seed=1)
    return d


def tile(*args):
    return invoke(["tile", *map(str, args)])


def crafted_tiff(path: Path, width: int, height: int, tile_side: int, offsets: list[int] | None, counts: list[int],
                 payload: bytes) -> Path:
    """A deflate RGB tiled TIFF written by hand: ``offsets`` index into ``payload`` (None: every tile
    at its start), ``counts`` are the tile byte counts. Lets a test declare what no writer would."""
    n = len(counts)
    ifd_end = 8 + 2 + 10 * 12 + 4
    off_at, cnt_at, data_at = ifd_end, ifd_end + 4 * n, ifd_end + (8 * n if n > 1 else 0)
    offsets = [data_at + o for o in (offsets if offsets is not None else [0] * n)]
    table = (lambda at, values: (4, n, values[0]) if n == 1 else (4, n, at))
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 2), (277, 3, 1, 3),
               (322, 3, 1, tile_side), (323, 3, 1, tile_side), (324, *table(off_at, offsets)), (325, *table(cnt_at, counts))]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, typ, cnt) + (struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val))
        for tag, typ, cnt, val in entries) + struct.pack("<I", 0)
    arrays = struct.pack(f"<{n}I", *offsets) + struct.pack(f"<{n}I", *counts) if n > 1 else b""
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + arrays + payload)
    return path


def _tile_bytes(side: int = 128) -> bytes:
    return zlib.compress(np.random.default_rng(0).integers(0, 255, (side, side, 3), np.uint8).tobytes())


def short_table_tiff(path: Path) -> Path:
    """600 x 600 px in 128-px tiles needs 25 tiles; the table lists 4 (a damaged file)."""
    data = _tile_bytes()
    return crafted_tiff(path, 600, 600, 128, [0] * 4, [len(data)] * 4, data)


def one_huge_tile_tiff(path: Path) -> Path:
    """One 32,768 x 32,768 tile (3 GiB to decode) in a file of a few kB."""
    data = zlib.compress(bytes(4096))
    return crafted_tiff(path, 32768, 32768, 32768, None, [len(data)], data)


def shared_tiles_tiff(path: Path) -> Path:
    """65,536 x 65,536 px (12.9 GB decoded) whose 65,536 tiles all point at one small tile: a 0.5 MB file."""
    data = zlib.compress(bytes(256 * 256 * 3))
    n = (65536 // 256) ** 2
    return crafted_tiff(path, 65536, 65536, 256, None, [len(data)] * n, data)


# ----------------------------------------------------------------------------- special files


def test_a_fifo_named_by_the_manifest_is_refused_at_once_and_the_others_tiled(tmp_path, slides):
    os.mkfifo(slides / "pipe.tif")  # no writer: a plain open() would block forever
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id\ns1\npipe\n")
    out = run(["tile", slides, "--manifest", manifest, "--out", tmp_path / "ts", *SMALL_ARGS, "-q"], timeout=120)
    assert_clean_error(out, code=EXIT_PARTIAL, mentions=["pipe", "FIFO (named pipe), not a file", "give the slide file itself"])
    meta = json.loads((tmp_path / "ts" / "tileset.json").read_text())
    assert meta["slides"]["s1"]["status"] == "done" and meta["slides"]["pipe"]["status"] == "failed"
    assert not temp_leftovers(tmp_path / "ts")


def test_a_fifo_as_manifest_is_refused_at_once_and_writes_nothing(tmp_path, slides):
    os.mkfifo(tmp_path / "m.csv")
    out = run(["tile", slides, "--manifest", tmp_path / "m.csv", "--out", tmp_path / "ts", "-q"], timeout=60)
    assert_clean_error(out, mentions=["manifest", "FIFO", "not a CSV file", "--manifest"])
    assert not (tmp_path / "ts").exists()


@pytest.mark.parametrize("kind", ["folder", "symlink-loop"])
def test_a_folder_or_a_link_loop_named_like_a_slide_is_said_in_words(tmp_path, slides, kind):
    if kind == "folder":
        (slides / "x.tif").mkdir()
    else:
        (slides / "x.tif").symlink_to("x.tif")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id\ns1\nx\n")
    out = tile(slides, "--manifest", manifest, "--out", tmp_path / "ts", *SMALL_ARGS, "-q")
    line = assert_clean_error(out, code=EXIT_PARTIAL, mentions=["x.tif"])
    assert ("is a folder, not a file" if kind == "folder" else "symbolic link loop") in line
    assert "Errno" not in line and "IsADirectoryError" not in line


# ----------------------------------------------------------------------------- TIFFs that lie


@pytest.mark.parametrize("source", [None, "openslide", "tifffile"])
def test_a_tile_table_short_of_the_image_is_refused_whichever_source_reads_it(tmp_path, source):
    (tmp_path / "d").mkdir()
    short_table_tiff(tmp_path / "d" / "short.tif")
    args = ["--source", source] if source else []
    out = run(["tile", tmp_path / "d", "--out", tmp_path / "ts", *args, "-q"], timeout=120)
    assert_clean_error(out, mentions=["short", "damaged", "lists 4 tiles where its size needs 25", "re-copy or re-export"])


@pytest.mark.parametrize(
    "make, mentions",
    [(one_huge_tile_tiff, ["32,768 x 32,768 px", "3.0 GiB", "512 MiB", "--trust-declared-size"]),
     (shared_tiles_tiff, ["65,536 x 65,536 px", "12.9 GB of pixels", "share their data", "--trust-declared-size"])],
    ids=["one-3-GiB-tile", "tiles-sharing-one-block"],
)
def test_a_declared_size_the_file_cannot_hold_is_refused_before_decoding(tmp_path, make, mentions):
    """Both sources took GBs of memory on these (OpenSlide aborted a memory-capped job)."""
    (tmp_path / "d").mkdir()
    make(tmp_path / "d" / "lie.tif")
    assert (tmp_path / "d" / "lie.tif").stat().st_size < 600_000
    out = run(["tile", tmp_path / "d", "--out", tmp_path / "ts", "-q"], timeout=120)
    assert_clean_error(out, mentions=["lie.tif", *mentions])
    assert not temp_leftovers(tmp_path / "ts")


def test_trust_declared_size_lifts_the_memory_caps_but_never_the_damage_checks(tmp_path):
    from clotclf_core.slides.guard import SlideTooLarge, tiff_problem

    huge, short = one_huge_tile_tiff(tmp_path / "huge.tif"), short_table_tiff(tmp_path / "short.tif")
    assert isinstance(tiff_problem(huge), SlideTooLarge) and tiff_problem(huge, trust_declared_size=True) is None
    assert "damaged" in str(tiff_problem(short, trust_declared_size=True))
    ok = write_slide(tmp_path / "ok.tif")
    assert tiff_problem(ok) is None


@pytest.mark.parametrize("text, expected", [("2.5e-01", 0.25), ("0.2500", 0.25), (".25", 0.25), ("1e308", None)])
def test_an_aperio_mpp_is_read_with_its_exponent(tmp_path, text, expected):
    import tifffile

    from clotclf_core.slides.open import open_slide

    img = np.full((300, 300, 3), 230, np.uint8)
    path = tmp_path / "aperio.tif"
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", metadata=None,
                     description=f"Aperio Image Library v12.0.0\r\n300x300 [0,0 300x300] (128x128) |AppMag = 20|MPP = {text}")
    slide = open_slide(path, source="tifffile")
    try:
        assert slide.mpp == expected if expected is None else slide.mpp == pytest.approx(expected)
        if expected is None:
            assert "outside the plausible" in slide.mpp_note
    finally:
        slide.close()


# ----------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "cell, mentions",
    [('"s1\rx"', ["line 2", "image_id", "control character \\x0d", "remove it"]),
     ('"s1\nError: forged"', ["line 2", "image_id", "control character \\x0a"]),
     ("s1\u200bx", ["line 2", "image_id", "control character", "u200b"]),
     ("a" * 245, ["line 2", "245 bytes", "shorten it to at most 200 bytes"])],
    ids=["CR", "LF-forging-a-line", "zero-width-space", "245-chars"],
)
def test_an_id_that_cannot_name_a_file_or_a_line_is_refused_at_manifest_reading(tmp_path, slides, cell, mentions):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image_id,patient_id\n{cell},p1\n", encoding="utf-8")
    out = tile(slides, "--manifest", manifest, "--out", tmp_path / "ts", "-q")
    assert_clean_error(out, mentions=["manifest", *mentions])
    assert "forged" not in out.stderr.split("Error:", 1)[0] and not (tmp_path / "ts").exists()


def test_a_control_character_in_a_patient_id_is_refused_too(tmp_path, slides):
    manifest = tmp_path / "m.csv"
    manifest.write_text('image_id,patient_id\ns1,"p\x1b[31m1"\n')
    out = tile(slides, "--manifest", manifest, "--out", tmp_path / "ts", "-q")
    assert_clean_error(out, mentions=["patient_id", "control character", "line 2"])


def test_a_file_name_in_another_unicode_form_is_named_nfc_nfd(tmp_path, slides):
    nfd = unicodedata.normalize("NFD", "café")
    (slides / f"{nfd}.tif").write_bytes((slides / "s1.tif").read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image_id\n{unicodedata.normalize('NFC', 'café')}\n", encoding="utf-8")
    out = tile(slides, "--manifest", manifest, "--out", tmp_path / "ts", "-q")
    assert_clean_error(out, mentions=["Unicode normalisation", "NFD", "NFC", "rename the file"])


# ----------------------------------------------------------------------------- formula cells


def test_csv_cells_are_neutralised_and_read_back_exactly():
    import pandas as pd

    from clotclf_core.plugin.io import csv_safe, csv_text, csv_unescape

    for value in ("=HYPERLINK(\"http://x\")", "+cmd", "-1+2", "@SUM(A1)", "\tx", "\rx", "'=already", "'plain"):
        assert csv_safe(value).startswith("'") and csv_unescape(csv_safe(value)) == value
    for value in ("s1", "-0.25", "+1", "1e-3", 0.5, -3, "", "it's"):
        assert csv_safe(value) == value
    text = csv_text(pd.DataFrame({"image_id": ["=1+1", "ok"], "p": [-0.25, 0.5]}))
    assert text.splitlines() == ["image_id,p", "'=1+1,-0.25", "ok,0.5"]


def test_a_formula_id_is_text_in_every_csv_tile_writes_and_reads_back_the_same(tmp_path, slides):
    from clotclf_core.slides.manifest import read_manifest
    from clotclf_core.tiling.run import tile_slides
    from clotclf_core.tiling.tileset import TileSet

    os.rename(slides / "s1.tif", slides / "=cmd.tif")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id\n=cmd\n=HYPERLINK(1)\n")
    summary = tile_slides(slides, tmp_path / "ts", manifest=manifest, settings=SMALL, progress=False)
    assert summary["missing"]["count"] == 1
    for csv in ("tiles.csv", "index/=cmd.csv", "missing_slides.csv"):
        cells = [line.split(",")[0] for line in (tmp_path / "ts" / csv).read_text().splitlines()[1:]]
        assert cells and all(c.startswith(("'=", "\"'=")) for c in cells), (csv, cells)
    assert set(TileSet(tmp_path / "ts").index["image_id"]) == {"=cmd"}
    again = read_manifest(tmp_path / "ts" / "missing_slides.csv", require_labels=False)
    assert list(again["image_id"]) == ["=HYPERLINK(1)"]


# ----------------------------------------------------------------------------- many rows, journal, descriptors


def test_ten_thousand_missing_rows_are_listed_in_a_file_and_the_error_line_stays_short(tmp_path, slides):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id\ns1\n" + "".join(f"gone{i}\n" for i in range(10_000)))
    out = run(["tile", slides, "--manifest", manifest, "--out", tmp_path / "ts", *SMALL_ARGS, "-q"], timeout=120)
    line = assert_clean_error(out, code=EXIT_PARTIAL, mentions=["10,000 without a slide file", "missing_slides.csv",
                                                               "gone0", "and 9,997 more"])
    assert len(line) < 1500, len(line)
    assert (tmp_path / "ts" / "missing_slides.csv").read_text().count("\n") == 10_001
    meta = json.loads((tmp_path / "ts" / "tileset.json").read_text())
    assert list(meta["slides"]) == ["s1"]


def test_tileset_json_is_written_a_fixed_number_of_times_whatever_the_number_of_slides(tmp_path, monkeypatch):
    from clotclf_core.tiling import writer as tileset_writer
    from clotclf_core.tiling.run import tile_slides

    real, writes = tileset_writer.write_text, []

    def counting(target, text):
        if Path(target).name == "tileset.json":
            writes.append(target)
        return real(target, text)

    monkeypatch.setattr(tileset_writer, "write_text", counting)
    counts = []
    for n in (1, 4):
        folder = tmp_path / f"slides{n}"
        folder.mkdir()
        for i in range(n):
            write_slide(folder / f"s{i}.tif", seed=i)
        writes.clear()
        tile_slides(folder, tmp_path / f"ts{n}", settings=SMALL, progress=False)
        counts.append(len(writes))
        assert not (tmp_path / f"ts{n}" / "tileset.journal").exists()
    assert counts[0] == counts[1] <= 3, counts


def test_a_killed_runs_journal_is_applied_and_a_torn_last_line_ignored(tmp_path):
    from clotclf_core.tiling.tileset import JOURNAL, apply_journal

    (tmp_path / JOURNAL).write_bytes(b'{"id":"a","slide":{"status":"done"}}\n{"id":"b","forget":true}\n{"id":"c","sli')
    meta = {"slides": {"b": {"status": "done"}}}
    assert apply_journal(tmp_path, meta) == 2 and meta["slides"] == {"a": {"status": "done"}}


def test_open_memory_maps_are_bounded_whatever_the_number_of_slides(tmp_path):
    from tilesets import make_tileset

    from clotclf_core.tiling import arrays
    from clotclf_core.tiling.tileset import TileSet

    ts = TileSet(make_tileset(tmp_path / "ts", sizes=(2,) * (arrays.MAX_OPEN + 20), tile=8))
    before = len(os.listdir("/proc/self/fd"))
    for image_id in ts.slides:
        if ts.slides[image_id].get("status") == "done":
            assert ts.pixels(image_id).shape == (2, 8, 8, 3)
    assert len(ts._arrays) == arrays.MAX_OPEN
    assert len(os.listdir("/proc/self/fd")) - before <= arrays.MAX_OPEN


def test_too_many_open_files_is_never_called_corrupt_data(tmp_path, monkeypatch):
    import errno

    from tilesets import make_tileset

    from clotclf_core.tiling import tileset as tileset_module
    from clotclf_core.tiling.tileset import TileSet, TileSetError, npy_problem

    ts = TileSet(make_tileset(tmp_path / "ts", sizes=(2,), tile=8))
    path = tmp_path / "ts" / "pixels" / "s0.npy"

    def no_descriptors(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files", str(path))

    monkeypatch.setattr(tileset_module, "open", no_descriptors, raising=False)
    with pytest.raises(TileSetError, match=r"too many open files .*ulimit -n.*the data is not at fault"):
        npy_problem(path, np.uint8, (2, 8, 8, 3))
    monkeypatch.setattr(np, "load", no_descriptors)
    with pytest.raises(TileSetError, match=r"too many open files") as info:
        ts.pixels("s0")
    assert "truncated" not in str(info.value)


def test_export_patches_refuses_a_declared_size_and_names_its_override(tmp_path):
    (tmp_path / "d").mkdir()
    one_huge_tile_tiff(tmp_path / "d" / "lie.tif")
    out = run(["export-patches", tmp_path / "d", "--out", tmp_path / "p", "-q"], timeout=120)
    assert_clean_error(out, mentions=["no slide could be read", "lie", "512 MiB", "--trust-declared-size"])
    assert not temp_leftovers(tmp_path) and not (tmp_path / "p" / "patchset.json").exists()


def test_distinct_segment_bytes_count_shared_data_once_in_any_order():
    import numpy as np

    from clotclf_core.slides.guard import _distinct_bytes

    def plain(offsets, counts):
        used = {(int(o), int(n)) for o, n in zip(offsets, counts)}
        return sum(n for _, n in used), len(used)

    rng = np.random.default_rng(1)
    for _ in range(50):
        offsets = rng.integers(0, 40, 30).astype(np.uint64) * 100  # repeats, in any order
        counts = rng.integers(1, 4, 30).astype(np.uint64)
        assert _distinct_bytes(offsets, counts) == plain(offsets, counts)
    increasing = np.arange(1, 11, dtype=np.uint64) * 1000
    assert _distinct_bytes(increasing, np.full(10, 7, np.uint64)) == (70, 10)
    assert _distinct_bytes(np.zeros(0, np.uint64), np.zeros(0, np.uint64)) == (0, 0)
