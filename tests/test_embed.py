"""clotclf embed and the feature store: what is written, that it is what the encoder computes,
resuming after an interruption (same bytes), keeping up with a changed TileSet, identity checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tilesets import TINY_TIMM, make_tileset

from clotclf_core.features.embed import embed_tileset
from clotclf_core.features.store import (
    FeatureStore,
    FeatureStoreError,
    check_encoder,
    check_matches_tileset,
    tileset_mismatches,
)
from clotclf_core.plugin.errors import Interrupted


@pytest.fixture
def tiles(tmp_path):
    return make_tileset(tmp_path / "tiles")


def _embed(tiles, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("device", "cpu")
    return embed_tileset(tiles, out, "timm", dict(TINY_TIMM), **kw)


def _bytes(store_dir):
    return {p.name: p.read_bytes() for p in sorted((store_dir / "slides").iterdir())}


def test_store_holds_what_the_encoder_computes(tiles, tmp_path):
    import timm

    from clotclf_core.tiling.tileset import TileSet

    summary = _embed(tiles, tmp_path / "f", batch_size=4)
    assert summary["embedded"] == 4 and summary["tiles"] == 27 and summary["no_tiles"] == {"s9": "the tissue mask is empty"}
    store = FeatureStore(tmp_path / "f")
    ts = TileSet(tiles)
    # a bare timm model built the same way, fed by hand: the features must be its output
    torch.manual_seed(0)
    bare = timm.create_model(num_classes=0, **{k: v for k, v in TINY_TIMM.items() if k != "model"},
                             model_name=TINY_TIMM["model"]).eval()
    mean = torch.tensor(bare.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(bare.pretrained_cfg["std"]).view(1, 3, 1, 1)
    for image_id in ["s0", "s1", "s2", "s3"]:
        feats = store.features(image_id)
        assert feats.dtype == np.float16 and feats.shape == (len(ts.pixels(image_id)), 16)
        x = torch.from_numpy(np.array(ts.pixels(image_id))).permute(0, 3, 1, 2).float() / 255
        with torch.inference_mode():
            ref = bare((x - mean) / std).numpy()
        np.testing.assert_allclose(feats.astype(np.float32), ref, rtol=2e-3, atol=2e-3)
        rows = store.tiles(image_id)
        expected = ts.index[ts.index["image_id"] == image_id].reset_index(drop=True)
        assert rows[["row", "x", "y", "label", "patient_id"]].equals(expected[["row", "x", "y", "label", "patient_id"]])
    enc = store.encoder
    assert enc["backbone"] == "timm" and enc["options"]["model"] == "vit_tiny_patch16_224"
    assert enc["mean"] == [0.5, 0.5, 0.5] and enc["input_size"] == 32 and len(enc["weights_sha256"]) == 64
    assert store.empty == {"s9": {"status": "no_tiles", "n_tiles": 0, "tileset_status": "no_tissue",
                                  "reason": "the tissue mask is empty"}}
    assert list(store.index.columns[-1:]) == ["feature_row"] and len(store.index) == 27
    bags, mask = store.bags(["s0", "s9", "s2"])
    assert bags.shape == (3, 11, 16) and mask.sum(1).tolist() == [5, 0, 11]
    assert np.array_equal(bags[0, :5], store.features("s0").astype(np.float32)) and not bags[0, 5:].any()
    check_matches_tileset(store, ts)  # the TileSet it came from matches


def test_interrupted_then_resumed_gives_the_same_bytes(tiles, tmp_path, monkeypatch):
    from clotclf_core.features.encoder import Encoder

    _embed(tiles, tmp_path / "whole", batch_size=4)
    real = Encoder.forward_tensor
    calls = {"n": 0}

    def flaky(self, images):
        calls["n"] += 1
        if calls["n"] == 4:  # s0 is 2 batches of 4, s1 is 2: the Ctrl-C lands in s1, the second slide
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(Encoder, "forward_tensor", flaky)
    with pytest.raises(Interrupted, match="1 slide\\(s\\) have features.*run the same command again"):
        _embed(tiles, tmp_path / "part", batch_size=4)
    part = json.loads((tmp_path / "part" / "features.json").read_text())
    assert [k for k, v in part["slides"].items() if v["status"] == "done"] == ["s0"]
    assert sorted(p.name for p in (tmp_path / "part" / "slides").iterdir()) == ["s0.csv", "s0.npy"]  # no temp file
    monkeypatch.setattr(Encoder, "forward_tensor", real)
    again = _embed(tiles, tmp_path / "part", batch_size=4)
    assert again["kept"] == 1 and again["embedded"] == 3
    assert _bytes(tmp_path / "part") == _bytes(tmp_path / "whole")


def test_follows_a_changed_tileset(tiles, tmp_path):
    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.tiling.writer import TileSetWriter

    out = tmp_path / "f"
    _embed(tiles, out)
    before = _bytes(out)
    writer = TileSetWriter(tiles, {"synthetic": True}, 32)
    listed = {f"s{i}": {"patient_id": f"p{i // 2}", "center_id": "c1", "label": "CE" if i % 2 else "LAA"} for i in range(4)}
    listed["s0"]["label"] = "CE"  # relabelled in the manifest
    del listed["s3"]  # no longer listed
    listed["s9"] = {"patient_id": "p9", "center_id": "c1", "label": ""}
    writer.sync(listed)
    rng = np.random.default_rng(5)
    rows = [{"patient_id": "p0", "center_id": "c1", "label": "CE", "x": 0, "y": 3 * i, "size": 64, "downsample": 2.0} for i in range(6)]
    writer.add_slide("s1", rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), rows, {})  # tiled again
    summary = _embed(tiles, out)
    assert summary["embedded"] == 1 and summary["redone"] == {"s1": "tiled again (other tiles)"}
    assert summary["relabelled"] == {"s0": "label 'LAA' -> 'CE'"} and summary["removed"] == {"s3": "done"}
    store = FeatureStore(out)
    assert store.done == ["s0", "s1", "s2"] and store.tiles("s0")["label"].unique().tolist() == ["CE"]
    assert _bytes(out)["s0.npy"] == before["s0.npy"] and _bytes(out)["s2.npy"] == before["s2.npy"]
    assert "s3.npy" not in _bytes(out)
    check_matches_tileset(store, TileSet(tiles))


def test_overwrite_replaces_a_store_and_leftovers_are_cleaned(tiles, tmp_path):
    out = tmp_path / "f"
    _embed(tiles, out)
    (out / "slides" / ".s0.npy.abc123.npy.tmp").write_bytes(b"left by a killed run")
    again = embed_tileset(tiles, out, "timm", {**TINY_TIMM, "embed_dim": 32}, device="cpu", progress=False, overwrite=True)
    assert again["embedded"] == 4 and FeatureStore(out).num_features == 32
    assert not [p for p in (out / "slides").iterdir() if p.suffix == ".tmp"]


def test_broken_slide_file_is_refused_then_embedded_again(tiles, tmp_path):
    out = tmp_path / "f"
    _embed(tiles, out)
    good = (out / "slides" / "s2.npy").read_bytes()
    (out / "slides" / "s2.npy").write_bytes(good[: len(good) // 2])
    with pytest.raises(FeatureStoreError, match="s2.npy: truncated.*re-run the same `clotclf embed`"):
        FeatureStore(out)
    summary = _embed(tiles, out)
    assert summary["redone"] == {"s2": "its files were missing or broken"}
    assert (out / "slides" / "s2.npy").read_bytes() == good


def test_identity_checks(tiles, tmp_path):
    from clotclf_core.features.encoder import build_encoder
    from clotclf_core.tiling.tileset import TileSet

    _embed(tiles, tmp_path / "f")
    store = FeatureStore(tmp_path / "f")
    check_encoder(store, store.encoder)
    other = build_encoder("timm", {**TINY_TIMM, "embed_dim": 32}, tile_size=32, device="cpu").record()
    with pytest.raises(FeatureStoreError, match="made with the encoder timm\\(model=vit_tiny.*embed_dim=16.*but the run expects "
                                                "timm\\(.*embed_dim=32.*differ in options, weights_sha256"):
        check_encoder(store, other)
    reseeded = build_encoder("timm", dict(TINY_TIMM), tile_size=32, device="cpu", seed=1).record()
    with pytest.raises(FeatureStoreError, match="differ in weights_sha256"):
        check_encoder(store, reseeded)
    elsewhere = make_tileset(tmp_path / "other", sizes=(5, 8), settings={"synthetic": True, "downsample": 4})
    problems = tileset_mismatches(store, TileSet(elsewhere))
    assert problems[0].startswith("the TileSet was cut with other tiling settings")
    assert "2 slide(s) with features are not (or no longer) in the TileSet: s2, s3" in problems[1]
    with pytest.raises(FeatureStoreError, match="does not match the TileSet"):
        check_matches_tileset(store, TileSet(elsewhere))


def test_cli_embed(tiles, tmp_path):
    from badinput import invoke

    out = invoke(["embed", "--tiles", tiles, "--backbone", "timm:model=vit_tiny_patch16_224,img_size=32,patch_size=8",
                  "--backbone-opt", "depth=1", "--backbone-opt", "embed_dim=16", "--backbone-opt", "num_heads=2",
                  "--out", tmp_path / "f", "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["embedded"] == 4 and summary["num_features"] == 16 and summary["normalisation"]["from"] == "backbone"
    text = invoke(["embed", "--tiles", tiles, "--backbone", "timm:model=vit_tiny_patch16_224,img_size=32,patch_size=8",
                   "--backbone-opt", "depth=1", "--backbone-opt", "embed_dim=16", "--backbone-opt", "num_heads=2",
                   "--out", tmp_path / "f", "--device", "cpu"])
    assert text.exit_code == 0 and "0 slide(s) embedded" in text.stdout and "4 already done" in text.stdout
    assert "s9: no tiles, no features (the tissue mask is empty)" in text.stdout
