"""clotclf_core.tileset: broken pixel files are one clear error (and are tiled again), and a
resumed TileSet follows the current manifest (labels rewritten, unlisted slides dropped),
atomically. Tiny synthetic TileSets written through TileSetWriter: no slide is read here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import clotclf_core.tileset as tileset_mod
from clotclf_core.errors import ClotclfError
from clotclf_core.tileset import TileSet, TileSetError, TileSetWriter, pixel_file_problem

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


# ----------------------------------------------------------------------------- broken pixel files


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10 if keep is None else keep])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.unlink(), "b.npy: missing"),
        (truncate, "b.npy: truncated or unreadable"),
        (lambda p: truncate(p, keep=40), "b.npy: truncated or unreadable"),  # cut inside the header
        (lambda p: p.write_bytes(b""), "b.npy: truncated or unreadable"),
        (lambda p: np.save(p, np.zeros((4, S, S, 3), np.float32)), "holds float32 (4, 8, 8, 3) instead of uint8 (4, 8, 8, 3)"),
        (lambda p: np.save(p, np.zeros((2, S, S, 3), np.uint8)), "holds uint8 (2, 8, 8, 3) instead of uint8 (4, 8, 8, 3)"),
    ],
    ids=["deleted", "truncated", "header-cut", "empty", "dtype", "fewer-tiles"],
)
def test_broken_pixel_file_is_one_clear_error_when_opening(tmp_path, damage, message):
    root = make(tmp_path / "ts")
    damage(root / "pixels" / "b.npy")
    with pytest.raises(TileSetError, match="broken pixel file") as err:
        TileSet(root)
    text = str(err.value)
    assert message in text and "--overwrite" in text and f"--out {root}" in text and "a.npy" not in text
    assert isinstance(err.value, ClotclfError)


def test_index_and_pixel_file_must_agree(tmp_path):
    root = make(tmp_path / "ts")
    csv = root / "tiles.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(line for line in lines if not (line.startswith("b,") and ",3," in line)) + "\n")  # drop b's last row
    with pytest.raises(TileSetError, match=r"b.npy: holds 4 tiles but tiles.csv lists 3"):
        TileSet(root)
    assert "lists 3" in TileSetWriter(root, SETTINGS, S).broken["b"]

    root = make(tmp_path / "ts2")
    csv = root / "tiles.csv"
    csv.write_text(csv.read_text().replace("b,pb,c1,LAA,3,", "b,pb,c1,LAA,9,"))  # b's last row points past its file
    with pytest.raises(TileSetError, match=r"b.npy: holds 4 tiles but tiles.csv refers to tile 9"):
        TileSet(root)
    assert "refers to tile 9" in TileSetWriter(root, SETTINGS, S).broken["b"]


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


def test_pixel_file_problem_accepts_good_files_and_names_the_rest(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((0, S, S, 3), np.uint8))
    assert pixel_file_problem(path, 0, S) is None
    np.save(path, np.zeros((5, S, S, 3), np.uint8))
    assert pixel_file_problem(path, 5, S) is None
    assert "instead of uint8 (5, 16, 16, 3)" in pixel_file_problem(path, 5, 16)
    with open(path, "wb") as fh:  # an .npz archive under the .npy name
        np.savez(fh, a=np.zeros(3))
    assert pixel_file_problem(path, 5, S) == "not a .npy array"
    assert pixel_file_problem(tmp_path / "none.npy", 5, S) == "missing"


def test_writer_treats_a_slide_with_a_broken_pixel_file_as_not_done(tmp_path):
    root = make(tmp_path / "ts")
    truncate(root / "pixels" / "b.npy")
    writer = TileSetWriter(root, SETTINGS, S)
    assert writer.is_done("a") and not writer.is_done("b") and "truncated" in writer.broken["b"]
    # the next commit leaves a consistent TileSet without b, until b is tiled again
    writer.record_failure("x", "failed", "unreadable")
    ts = TileSet(root)
    assert set(ts.index["image_id"]) == {"a", "c"} and "b" not in ts.slides
    rows = [{"patient_id": "pb", "center_id": "c1", "label": "LAA", "x": i, "y": 0, "size": S, "downsample": 1.0} for i in range(2)]
    writer.add_slide("b", np.full((2, S, S, 3), 7, np.uint8), rows, {})
    ts = TileSet(root)
    assert (ts.pixels("b") == 7).all() and (ts.index["image_id"] == "b").sum() == 2
    assert TileSetWriter(root, SETTINGS, S).broken == {}


# ----------------------------------------------------------------------------- resuming with a new manifest


def test_sync_rewrites_labels_and_drops_unlisted_slides_without_pixel_work(tmp_path):
    root = make(tmp_path / "ts")
    before = TileSet(root)
    stamps = {k: (root / "pixels" / f"{k}.npy").stat().st_mtime_ns for k in ("a", "b")}
    (root / "pixels" / "stale.npy").write_bytes(b"left by an interrupted commit")

    writer = TileSetWriter(root, SETTINGS, S)
    now = {"a": ("pa", "c1", "LAA"), "b": ("p9", "c3", "LAA")}  # a: new label; b: new patient and centre; c: gone
    changes = writer.sync(listed(now))
    assert changes["relabelled"] == {
        "a": "label 'CE' -> 'LAA'",
        "b": "patient_id 'pb' -> 'p9', center_id 'c1' -> 'c3'",
    }
    assert changes["removed"] == {"c": "was done, 5 tiles"}

    ts = TileSet(root)
    assert set(ts.slides) == {"a", "b"} and set(ts.index["image_id"]) == {"a", "b"}
    got = ts.index.groupby("image_id")[["patient_id", "center_id", "label"]].first().apply(tuple, axis=1).to_dict()
    assert got == now
    # the tiles themselves are untouched: same rows, same columns, same pixel files
    keep = before.index[before.index["image_id"] != "c"].reset_index(drop=True)
    cols = [c for c in keep.columns if c not in ("patient_id", "center_id", "label")]
    assert keep[cols].equals(ts.index[cols]) and list(ts.index.columns) == list(before.index.columns)
    assert stamps == {k: (root / "pixels" / f"{k}.npy").stat().st_mtime_ns for k in ("a", "b")}
    assert sorted(p.name for p in (root / "pixels").iterdir()) == ["a.npy", "b.npy"]
    assert not (root / "qc" / "c.png").exists() and (root / "qc" / "a.png").exists()
    assert no_temp_files(root)

    # nothing left to change: nothing is rewritten
    mtime = (root / "tiles.csv").stat().st_mtime_ns
    assert TileSetWriter(root, SETTINGS, S).sync(listed(now)) == {"removed": {}, "relabelled": {}}
    assert (root / "tiles.csv").stat().st_mtime_ns == mtime


def test_sync_removes_failed_and_broken_slides_that_are_no_longer_listed(tmp_path):
    root = make(tmp_path / "ts")
    writer = TileSetWriter(root, SETTINGS, S)
    writer.record_failure("bad", "failed", "unreadable")
    (root / "pixels" / "c.npy").unlink()
    writer = TileSetWriter(root, SETTINGS, S)
    changes = writer.sync(listed({"a": LABELS["a"]}))
    assert changes["relabelled"] == {}
    assert changes["removed"] == {"b": "was done, 4 tiles", "bad": "was failed", "c": "pixel file broken: missing"}
    assert set(TileSet(root).slides) == {"a"}


@pytest.mark.parametrize("fail_on", ["tileset.json", "tiles.csv", "unlink"])
def test_sync_interrupted_at_any_step_leaves_a_consistent_tileset(tmp_path, monkeypatch, fail_on):
    """A crash while syncing never leaves an index that refers to a missing pixel file; the
    next sync finishes the job."""
    root = make(tmp_path / "ts")
    now = {"a": ("pa", "c1", "LAA"), "b": LABELS["b"]}

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    if fail_on == "tileset.json":
        monkeypatch.setattr(tileset_mod, "write_json", crash)
    elif fail_on == "tiles.csv":
        monkeypatch.setattr(tileset_mod, "write_text", crash)
    else:
        monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(OSError, match="No space"):
        TileSetWriter(root, SETTINGS, S).sync(listed(now))
    monkeypatch.undo()

    ts = TileSet(root)  # opens: every done slide's pixel file is there and matches its rows
    assert no_temp_files(root)
    if fail_on == "tileset.json":  # nothing committed yet
        assert set(ts.slides) == {"a", "b", "c"} and ts.index[ts.index.image_id == "a"]["label"].eq("CE").all()
    else:  # c left the TileSet with the first commit, whatever came after
        assert set(ts.slides) == {"a", "b"} and set(ts.index["image_id"]) == {"a", "b"}
    TileSetWriter(root, SETTINGS, S).sync(listed(now))
    ts = TileSet(root)
    assert set(ts.slides) == {"a", "b"} and ts.index[ts.index.image_id == "a"]["label"].eq("LAA").all()
    assert sorted(p.name for p in (root / "pixels").iterdir()) == ["a.npy", "b.npy"]
