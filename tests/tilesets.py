"""Small synthetic TileSets for the feature-store tests, written through TileSetWriter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: a 1-block timm ViT on 32-px tiles: the fastest real encoder for tests
TINY_TIMM = {"model": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2}


def make_tileset(root: Path, sizes=(5, 8, 11, 3), settings=None, labels=None, seed: int = 0, tile: int = 32,
                 empty: dict[str, str] | None = None) -> Path:
    """Slides ``s0, s1…`` with ``sizes[i]`` random tiles each (patients of two slides, alternating
    labels), plus ``empty``: slides recorded without tiles (id -> reason)."""
    from clotclf_core.tiling.writer import TileSetWriter

    rng = np.random.default_rng(seed)
    writer = TileSetWriter(root, settings or {"synthetic": True}, tile)
    for s, n in enumerate(sizes):
        pixels = rng.integers(0, 256, (n, tile, tile, 3), dtype=np.uint8)
        label = (labels or {}).get(f"s{s}", "CE" if s % 2 else "LAA")
        rows = [{"patient_id": f"p{s // 2}", "center_id": "c1", "label": label, "x": 40 * i, "y": 7 * s,
                 "size": tile * 2, "downsample": 2.0} for i in range(n)]
        writer.add_slide(f"s{s}", pixels, rows, {})
    for image_id, reason in (empty if empty is not None else {"s9": "the tissue mask is empty"}).items():
        writer.commit(image_id, "no_tissue", {}, reason=reason)
    return root


#: a tiny aggregator for tests (parameters in the hundreds)
TINY_ABMIL = {"hidden": 8, "attention_dim": 4}
#: 16 slides of 8 patients (two each), patient-consistent labels, 3-11 tiles per slide
MIL_SIZES = (5, 8, 11, 3, 6, 7, 9, 4, 5, 6, 8, 10, 5, 6, 7, 8)


def make_mil_tileset(root: Path, sizes=MIL_SIZES, empty: dict[str, str] | None = None) -> Path:
    """A TileSet for bag-level tests: patient ``p{k}`` has slides ``s{2k}``, ``s{2k+1}`` of one label."""
    labels = {f"s{i}": "CE" if (i // 2) % 2 else "LAA" for i in range(len(sizes))}
    return make_tileset(root, sizes=sizes, labels=labels, empty=empty if empty is not None else {})


def make_feature_store(tiles: Path, out: Path, **encoder) -> Path:
    """``clotclf embed`` of ``tiles`` with the tiny timm ViT (options overridable)."""
    from clotclf_core.features.embed import embed_tileset

    embed_tileset(tiles, out, "timm", {**TINY_TIMM, **encoder}, device="cpu", progress=False)
    return out


def make_cohort_tileset(root: Path, n_slides: int, tiles: int = 3, tile: int = 32, centres: int = 5, seed: int = 0) -> Path:
    """A TileSet of ``n_slides`` slides of ``tiles`` random tiles each (patients of two slides of one
    label, labels alternating by patient, ``centres`` centres), written the way ``clotclf tile``
    writes one (pixel file, shard and journal line per slide; the index merged once at the end) so
    that thousands of slides take seconds, not the quadratic minutes of :func:`make_tileset`."""
    from clotclf_core.tiling.writer import TileSetWriter, slide_pixels, write_shard

    rng = np.random.default_rng(seed)
    writer = TileSetWriter(root, {"synthetic": True}, tile)
    listed = {f"s{s:05d}": {"patient_id": f"p{s // 2:05d}", "center_id": f"c{(s // 2) % centres + 1}",
                            "label": "CE" if (s // 2) % 2 else "LAA"} for s in range(n_slides)}
    writer.sync(listed)
    for image_id, rec in listed.items():
        with slide_pixels(root, image_id, tile) as sink:
            sink.add(rng.integers(0, 256, (tiles, tile, tile, 3), dtype=np.uint8))
            n = sink.finish(None)
        write_shard(root, image_id, [{"row": i, "x": 2 * tile * i, "y": 0, "size": 2 * tile, "downsample": 2.0,
                                      "kept": True, "rejected_by": ""} for i in range(n)])
        writer.commit(image_id, "done", {"n_kept": n, "synthetic": True}, rec)
    writer.merge_index()
    return root
