"""Many slides in a feature store (issue 19): features.json is written a fixed number of
times per run, a killed run's journal is read (a torn last line ignored) and resumed to the same
bytes; the shared journal helper (:mod:`clotclf_core.journal`) on its own; reading every bag of a
store holds a bounded number of file descriptors (benchmarks/fds.py measures whole commands)."""

from __future__ import annotations

import json

import pytest
from tilesets import TINY_TIMM, make_tileset

from clotclf_core.features.embed import embed_tileset
from clotclf_core.features.store import JOURNAL_NAME, META_NAME, FeatureStore
from clotclf_core.journal import Journal, apply_journal_file
from clotclf_core.plugin.errors import Interrupted


def _embed(tiles, out, **kw):
    return embed_tileset(tiles, out, "timm", dict(TINY_TIMM), progress=False, device="cpu", batch_size=4, **kw)


def _files(store_dir):
    files = {p.name: p.read_bytes() for p in sorted((store_dir / "slides").iterdir())}
    return {**files, META_NAME: (store_dir / META_NAME).read_bytes()}


def test_features_json_is_written_a_fixed_number_of_times_whatever_the_number_of_slides(tmp_path, monkeypatch):
    from clotclf_core.features import writer as store_writer

    real, writes = store_writer.write_json, []

    def counting(target, obj):
        if str(target).endswith(META_NAME):
            writes.append(target)
        return real(target, obj)

    monkeypatch.setattr(store_writer, "write_json", counting)
    counts = []
    for n in (1, 6):
        tiles = make_tileset(tmp_path / f"t{n}", sizes=(2,) * n, empty={})
        writes.clear()
        summary = _embed(tiles, tmp_path / f"f{n}")
        assert summary["embedded"] == n
        counts.append(len(writes))
        assert not (tmp_path / f"f{n}" / JOURNAL_NAME).exists()  # folded at the end
        assert FeatureStore(tmp_path / f"f{n}").done == [f"s{i}" for i in range(n)]
    assert counts[0] == counts[1] <= 3, counts


def test_a_killed_embed_is_read_from_its_journal_and_resumed_to_the_same_bytes(tmp_path, monkeypatch):
    from clotclf_core.features.encoder import Encoder
    from clotclf_core.features.writer import FeatureStoreWriter

    tiles = make_tileset(tmp_path / "tiles")
    _embed(tiles, tmp_path / "whole")
    real = Encoder.forward_tensor
    calls = {"n": 0}

    def killed(self, images):
        calls["n"] += 1
        if calls["n"] == 4:  # s0 is 2 batches of 4, s1 is 2: the kill lands in s1
            raise KeyboardInterrupt
        return real(self, images)

    # a kill (SIGKILL) never reaches the fold at the end: features.json stays as the run began
    monkeypatch.setattr(Encoder, "forward_tensor", killed)
    monkeypatch.setattr(FeatureStoreWriter, "finish", lambda self: None)
    with pytest.raises(Interrupted):
        _embed(tiles, tmp_path / "part")
    part = tmp_path / "part"
    assert json.loads((part / META_NAME).read_text())["slides"].get("s0") is None  # not in features.json...
    with open(part / JOURNAL_NAME, "ab") as fh:  # ...and the line being written when killed, torn
        fh.write(b'{"id":"s1","slide":{"status":"do')
    store = FeatureStore(part)  # ...but read from the journal; the torn line ignored
    assert store.done == ["s0"] and store.features("s0").shape == (5, 16)
    assert set(store.empty) == {"s9"}

    monkeypatch.undo()
    again = _embed(tiles, part)
    assert again["kept"] == 1 and again["embedded"] == 3
    assert not (part / JOURNAL_NAME).exists()
    assert _files(part) == _files(tmp_path / "whole")  # features.json included


def test_a_torn_last_line_is_ignored_and_the_next_line_stays_whole(tmp_path):
    path = tmp_path / "x.journal"
    path.write_bytes(b'{"id":"a","slide":{"status":"done"}}\n{"id":"b","forget":true}\n{"id":"c","sli')
    slides = {"b": {"status": "done"}}
    assert apply_journal_file(path, slides) == 2 and slides == {"a": {"status": "done"}}
    Journal(path).record("d", {"status": "done"})  # a resumed writer appends after the torn line
    slides = {}
    assert apply_journal_file(path, slides) == 3 and slides == {"a": {"status": "done"}, "d": {"status": "done"}}
    assert apply_journal_file(tmp_path / "none.journal", slides) == 0


def test_reading_every_bag_of_a_many_slide_store_holds_a_bounded_number_of_descriptors(tmp_path):
    import os

    import numpy as np
    import pandas as pd

    from clotclf_core.features.writer import FeatureStoreWriter
    from clotclf_core.tiling import arrays

    n = arrays.MAX_OPEN + 20
    writer = FeatureStoreWriter(tmp_path / "f", {"backbone": "synthetic"}, {"fingerprint": "x"}, 4)
    for i in range(n):
        rows = pd.DataFrame({"image_id": f"s{i}", "patient_id": f"p{i}", "center_id": "c1", "label": "CE", "row": [0, 1],
                             "x": [0, 8], "y": 0, "size": 8, "downsample": 1.0})
        with writer.slide(f"s{i}", rows) as matrix:
            matrix[:] = i
    store = FeatureStore(tmp_path / "f")  # (no finish(): every slide read from the journal)
    assert len(store.done) == n
    before = len(os.listdir("/proc/self/fd"))
    bags, mask = store.bags(store.done)
    assert bags.shape == (n, 2, 4) and mask.all() and np.array_equal(bags[:, 0, 0], [int(s[1:]) for s in store.done])
    assert len(store.index) == 2 * n
    assert len(os.listdir("/proc/self/fd")) - before <= arrays.MAX_OPEN
