"""clotclf_core.tiling.tileset: the format 2 TileSet — streamed pixel files, per-slide index shards
(kept and rejected tiles), the merged index, broken files as one clear error (and tiled again),
and a resumed TileSet following the current manifest without rewriting any slide's files.
Tiny synthetic TileSets written through TileSetWriter: no slide is read here."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import clotclf_core.tiling.tileset as tileset_mod
import clotclf_core.tiling.writer as tileset_writer
from clotclf_core.plugin import ClotclfError
from clotclf_core.tiling.tileset import TileSet, TileSetError, npy_problem
from clotclf_core.tiling.writer import PixelFileWriter, TileSetWriter, write_shard

S = 8  # tile side
SETTINGS = {"synthetic": True}
LABELS = {"a": ("pa", "c1", "CE"), "b": ("pb", "c1", "LAA"), "c": ("pc", "c2", "CE")}


def make(root: Path, slides=LABELS, n=3) -> Path:
    writer = TileSetWriter(root, SETTINGS, S)
    for k, (image_id, (patient, center, label)) in enumerate(slides.items()):
        pixels = np.full((n + k, S, S, 3), 10 * k, np.uint8)
        rows = [{"patient_id": patient, "center_id": center, "label": label, "x": i, "y": 0, "size": S, "downsample": 1.0,
                 "score_otsu": 0.5} for i in range(n + k)]
        writer.add_slide(image_id, pixels, rows, {})
        (root / "qc" / f"{image_id}.png").write_bytes(b"png")
    return root


def listed(slides=LABELS) -> dict:
    return {k: dict(zip(("patient_id", "center_id", "label"), v)) for k, v in slides.items()}


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10 if keep is None else keep])


def stale_merge(root: Path) -> None:
    """Make the merged tiles.csv out of date, so that readers go to the shards."""
    (root / "tiles.csv").unlink()


# ----------------------------------------------------------------------------- layout


def test_layout_index_shards_and_merged_index(tmp_path):
    root = make(tmp_path / "ts")
    assert sorted(p.name for p in (root / "index").iterdir()) == ["a.csv", "b.csv", "c.csv"]
    ts = TileSet(root)
    assert len(ts) == 3 + 4 + 5 and list(ts.index.columns[:9]) == tileset_mod.INDEX_COLUMNS
    assert ts.meta["format_version"] == 2 and ts.meta["merged_index"]["rows"] == 12
    stale_merge(root)
    from_shards = TileSet(root)
    cols = list(ts.index.columns)
    assert from_shards.index[cols].astype(str).equals(ts.index[cols].astype(str))
    assert (from_shards.pixels("c")[4] == 20).all() and len(from_shards.rejected) == 0


def test_rejected_tiles_are_kept_in_the_shards(tmp_path):
    root = make(tmp_path / "ts", {"a": LABELS["a"]})
    rows = [{"row": 0, "x": 0, "y": 0, "size": S, "kept": True, "rejected_by": "", "score_otsu": 0.9},
            {"row": -1, "x": 8, "y": 0, "size": S, "kept": False, "rejected_by": "otsu", "score_otsu": 0.1}]
    with tileset_writer.slide_pixels(root, "d", S) as sink:
        sink.add(np.zeros((1, S, S, 3), np.uint8))
        sink.finish(None)
    write_shard(root, "d", rows)
    writer = TileSetWriter(root, SETTINGS, S)
    writer.commit("d", "done", {"n_kept": 1}, {"patient_id": "pd", "label": "CE"})
    ts = TileSet(root)
    assert set(ts.index["image_id"]) == {"a", "d"} and len(ts.rejected) == 1
    assert ts.rejected.iloc[0]["rejected_by"] == "otsu" and ts.rejected.iloc[0]["patient_id"] == "pd"


def test_pixel_file_writer_streams_selects_and_aborts(tmp_path):
    (tmp_path / "pixels").mkdir()
    w = PixelFileWriter(tmp_path, "s", S)
    for k in range(3):
        w.add(np.full((2, S, S, 3), k, np.uint8))
    assert not (tmp_path / "pixels" / "s.npy").exists()  # a temporary file until finished
    assert w.finish(np.array([5, 0, 2])) == 3
    got = np.load(tmp_path / "pixels" / "s.npy", mmap_mode="r")
    assert got.shape == (3, S, S, 3) and [int(t[0, 0, 0]) for t in got] == [2, 0, 1]
    w = PixelFileWriter(tmp_path, "t", S)
    w.add(np.ones((4, S, S, 3), np.uint8))
    w.abort()
    w = PixelFileWriter(tmp_path, "u", S)
    assert w.finish(None) == 0 and not (tmp_path / "pixels" / "u.npy").exists()  # no tile kept: no file
    assert sorted(p.name for p in (tmp_path / "pixels").iterdir()) == ["s.npy"]
    with pytest.raises(ValueError, match="uint8"):
        PixelFileWriter(tmp_path, "v", S).add(np.ones((1, S, S, 3), np.float32))


def test_a_streamed_pixel_file_is_what_numpy_save_writes(tmp_path):
    (tmp_path / "pixels").mkdir()
    tiles = np.random.default_rng(0).integers(0, 256, (7, S, S, 3), dtype=np.uint8)
    w = PixelFileWriter(tmp_path, "n", S)
    w.add(tiles[:3])
    w.add(tiles[3:])
    assert w.finish(None) == 7
    np.save(tmp_path / "ref.npy", tiles)
    assert (tmp_path / "pixels" / "n.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    old = os.umask(0o027)
    try:  # the usual permissions for new files, not mkstemp's 0600
        w = PixelFileWriter(tmp_path, "m", S)
        w.add(tiles)
        w.finish(np.array([6, 1]))
    finally:
        os.umask(old)
    assert (tmp_path / "pixels" / "m.npy").stat().st_mode & 0o777 == 0o640
    assert np.array_equal(np.load(tmp_path / "pixels" / "m.npy"), tiles[[6, 1]])


# ----------------------------------------------------------------------------- broken files


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "pixels" / "b.npy").unlink(), "pixels/b.npy: missing"),
        (lambda r: truncate(r / "pixels" / "b.npy"), "pixels/b.npy: truncated or unreadable"),
        (lambda r: truncate(r / "pixels" / "b.npy", keep=40), "pixels/b.npy: truncated or unreadable"),
        (lambda r: (r / "pixels" / "b.npy").write_bytes(b""), "pixels/b.npy: truncated or unreadable"),
        (lambda r: np.save(r / "pixels" / "b.npy", np.zeros((4, S, S, 3), np.float32)), r"holds float32 \(4, 8, 8, 3\) instead of uint8"),
        (lambda r: np.save(r / "pixels" / "b.npy", np.zeros((2, S, S, 3), np.uint8)), r"holds uint8 \(2, 8, 8, 3\) instead of uint8 \(4, 8, 8, 3\)"),
        (lambda r: (stale_merge(r), (r / "index" / "b.csv").write_bytes(b"")), "index '.*b.csv' is empty"),
        (lambda r: (stale_merge(r), (r / "index" / "b.csv").write_bytes(b"\x00\x9f\x92\x96" * 50)), "b.csv' is not a CSV text file"),
        (lambda r: (stale_merge(r), (r / "index" / "b.csv").write_text("x,y\n1,2\n")), "b.csv' lacks columns"),
        (lambda r: (stale_merge(r), (r / "index" / "b.csv").unlink()), "index/b.csv: missing"),
    ],
    ids=["deleted", "truncated", "header-cut", "empty", "dtype", "fewer-tiles", "empty-shard", "binary-shard",
         "columns-shard", "missing-shard"],
)
def test_broken_slide_files_are_one_clear_error_and_tiled_again(tmp_path, damage, message):
    root = make(tmp_path / "ts")
    damage(root)
    with pytest.raises(TileSetError, match="broken slide file") as err:
        TileSet(root)
    text = str(err.value)
    assert re.search(message, text), text
    assert "--overwrite" in text and f"--out {root}" in text and "a.npy" not in text
    assert isinstance(err.value, ClotclfError)
    writer = TileSetWriter(root, SETTINGS, S)  # a resumed run tiles b again
    assert set(writer.broken) == {"b"} and "a" in writer.meta["slides"] and "b" not in writer.meta["slides"]


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02\xff\xfe" * 40], ids=["empty", "binary"])
def test_a_broken_merged_index_is_one_clear_error(tmp_path, content):
    root = make(tmp_path / "ts")
    (root / "tiles.csv").write_bytes(content)
    with pytest.raises(TileSetError, match=r"tile index '.*tiles.csv' is (empty|not a CSV text file)"):
        TileSet(root)


def test_index_and_pixel_file_must_agree(tmp_path):
    root = make(tmp_path / "ts")
    shard = root / "index" / "b.csv"
    lines = shard.read_text().splitlines()
    shard.write_text("\n".join(lines[:-1]) + "\n")  # drop b's last row
    stale_merge(root)
    with pytest.raises(TileSetError, match=r"b.npy holds 4 tiles but index/b.csv lists 3 kept"):
        TileSet(root)
    assert "lists 3" in TileSetWriter(root, SETTINGS, S).broken["b"]


def test_pixels_turns_a_file_broken_after_opening_into_a_tileset_error(tmp_path):
    root = make(tmp_path / "ts")
    ts = TileSet(root)
    assert ts.tile(0).shape == (S, S, 3)  # a's array is now cached
    truncate(root / "pixels" / "b.npy")
    with pytest.raises(TileSetError, match=r"b.npy is truncated or unreadable \(ValueError"):
        ts.pixels("b")
    (root / "pixels" / "c.npy").unlink()
    with pytest.raises(TileSetError, match=r"lacks .*c.npy; re-run `clotclf tile"):
        ts.pixels("c")


def test_npy_problem_accepts_good_files_and_names_the_rest(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((0, S, S, 3), np.uint8))
    assert npy_problem(path, np.uint8, (0, S, S, 3)) is None
    np.save(path, np.zeros((5, S, S, 3), np.uint8))
    assert npy_problem(path, np.uint8, (5, S, S, 3)) is None
    assert "instead of uint8 (5, 16, 16, 3)" in npy_problem(path, np.uint8, (5, 16, 16, 3))
    assert npy_problem(path, np.float16, (5, S * S * 3)) == f"holds uint8 (5, {S}, {S}, 3) instead of float16 (5, {S * S * 3})"
    with open(path, "wb") as fh:  # an .npz archive under the .npy name
        np.savez(fh, a=np.zeros(3))
    assert npy_problem(path, np.uint8, (5, S, S, 3)) == "not a .npy array"
    assert npy_problem(tmp_path / "none.npy", np.uint8, (5, S, S, 3)) == "missing"


# ----------------------------------------------------------------------------- resuming with a new manifest


def test_sync_changes_labels_and_drops_unlisted_slides_without_touching_their_files(tmp_path):
    root = make(tmp_path / "ts")
    before = TileSet(root)
    files = {p: p.stat().st_mtime_ns for k in ("a", "b") for p in (root / "pixels" / f"{k}.npy", root / "index" / f"{k}.csv")}
    (root / "pixels" / "stale.npy").write_bytes(b"left by an interrupted run")

    writer = TileSetWriter(root, SETTINGS, S)
    now = {"a": ("pa", "c1", "LAA"), "b": ("p9", "c3", "LAA")}  # a: new label; b: new patient and centre; c: gone
    changes = writer.sync(listed(now))
    assert changes["relabelled"] == {"a": "label 'CE' -> 'LAA'", "b": "patient_id 'pb' -> 'p9', center_id 'c1' -> 'c3'"}
    assert changes["removed"] == {"c": "was done, 5 tiles"}

    ts = TileSet(root)  # the merged index is out of date: read from the shards
    assert set(ts.slides) == {"a", "b"} and set(ts.index["image_id"]) == {"a", "b"}
    got = ts.index.groupby("image_id")[["patient_id", "center_id", "label"]].first().apply(tuple, axis=1).to_dict()
    assert got == now
    keep = before.index[before.index["image_id"] != "c"].reset_index(drop=True)
    cols = ["image_id", "row", "x", "y", "size", "score_otsu"]
    assert keep[cols].astype(str).equals(ts.index[cols].astype(str))
    assert files == {p: p.stat().st_mtime_ns for p in files}, "no slide file rewritten"
    assert sorted(p.name for p in (root / "pixels").iterdir()) == ["a.npy", "b.npy"]
    assert not (root / "index" / "c.csv").exists() and not (root / "qc" / "c.png").exists() and (root / "qc" / "a.png").exists()
    assert no_temp_files(root)
    writer.merge_index()
    assert TileSet(root).index.groupby("image_id")["label"].first().to_dict() == {"a": "LAA", "b": "LAA"}

    mtime = (root / "tileset.json").stat().st_mtime_ns  # nothing left to change: nothing is rewritten
    assert TileSetWriter(root, SETTINGS, S).sync(listed(now)) == {"removed": {}, "relabelled": {}}
    assert (root / "tileset.json").stat().st_mtime_ns == mtime


def test_sync_removes_failed_and_broken_slides_that_are_no_longer_listed(tmp_path):
    root = make(tmp_path / "ts")
    writer = TileSetWriter(root, SETTINGS, S)
    writer.commit("bad", "failed", {}, reason="unreadable")
    (root / "pixels" / "c.npy").unlink()
    writer = TileSetWriter(root, SETTINGS, S)
    changes = writer.sync(listed({"a": LABELS["a"]}))
    assert changes["relabelled"] == {}
    assert changes["removed"] == {"b": "was done, 4 tiles", "bad": "was failed", "c": "files broken: pixels/c.npy: missing"}
    assert set(TileSet(root).slides) == {"a"}


@pytest.mark.parametrize("fail_on", ["tileset.json", "unlink"])
def test_sync_interrupted_at_any_step_leaves_a_consistent_tileset(tmp_path, monkeypatch, fail_on):
    root = make(tmp_path / "ts")
    now = {"a": ("pa", "c1", "LAA"), "b": LABELS["b"]}

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    if fail_on == "tileset.json":
        monkeypatch.setattr(tileset_writer, "write_text", crash)  # (tileset.json; shards go through write_csv)
    else:
        monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(OSError, match="No space"):
        TileSetWriter(root, SETTINGS, S).sync(listed(now))
    monkeypatch.undo()
    ts = TileSet(root)
    assert no_temp_files(root)
    if fail_on == "tileset.json":  # nothing committed yet
        assert set(ts.slides) == {"a", "b", "c"} and ts.index[ts.index.image_id == "a"]["label"].eq("CE").all()
    else:  # c left the TileSet with the commit, whatever came after
        assert set(ts.slides) == {"a", "b"} and set(ts.index["image_id"]) == {"a", "b"}
    TileSetWriter(root, SETTINGS, S).sync(listed(now))
    ts = TileSet(root)
    assert set(ts.slides) == {"a", "b"} and ts.index[ts.index.image_id == "a"]["label"].eq("LAA").all()
    assert sorted(p.name for p in (root / "pixels").iterdir()) == ["a.npy", "b.npy"]
