"""The peers' side of ``benchmarks/peers.py``: one runner per peer, each run in that peer's own venv.

Each ``run_<peer>(slide, mode, out)`` does the tool's own documented tissue detection and tiling at
the benchmark's geometry (224-px tiles at 1 um/px, no overlap; each tool's defaults otherwise) and,
in mode ``pixels``, extracts the RGB pixels of every kept tile as uint8 arrays in memory with the
tool's own reader (resized to 224 px where the tool returns another size). It returns the kept
tiles as level-0 boxes ``[x, y, w, h]``, how many tiles were read, and a note on how it read.
``_warm_<peer>()`` imports what the run needs, so the clock measures the work, not the imports.

Only the standard library and the peer itself are imported here (this runs in the peer's venv).
"""

from __future__ import annotations

from pathlib import Path

TILE_PX, MPP_TARGET = 224, 1.0


def _rgb224(arr):
    import cv2

    arr = arr[..., :3]
    if arr.shape[0] != TILE_PX or arr.shape[1] != TILE_PX:
        arr = cv2.resize(arr, (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)
    return arr


# ----------------------------------------------------------------------------- hs2p 6.1.0


def run_hs2p(slide: str, mode: str, out: str) -> dict:
    from hs2p.api import (
        FilterConfig,
        SegmentationConfig,
        SlideSpec,
        TilingConfig,
        tile_slide,
    )
    from hs2p.wsi import iter_tile_arrays_from_result

    res = tile_slide(SlideSpec(sample_id=Path(slide).stem, image_path=Path(slide)),
                     tiling=TilingConfig(requested_spacing_um=MPP_TARGET, requested_tile_size_px=TILE_PX, tolerance=0.05, overlap=0.0),
                     segmentation=SegmentationConfig(method="hsv"), filtering=FilterConfig())
    n = 0
    if mode == "pixels":
        for arr in iter_tile_arrays_from_result(result=res, num_workers=1):
            _rgb224(arr)
            n += 1
    side = int(res.tiles.tile_size_lv0)
    boxes = [[int(x), int(y), side, side] for x, y in zip(res.x, res.y)]
    return {"boxes": boxes, "read": n, "note": f"{res.backend}, mask from level {res.seg_level} (1/{res.seg_downsample}), "
                                                f"tiles read at level {res.tiles.read_level}"}


def run_hs2p_files(slide: str, mode: str, out: str) -> dict:
    """hs2p as its command line runs (``python -m hs2p`` with its default config): ``tile_slides``
    writes the coordinates (``.npz`` + ``.meta.json``), ``process_list.csv`` and both previews (mask
    and tile layout, on by default in its ``default.yaml``); in mode ``pixels`` also the tiles
    (``save_tiles``: a tar of JPEGs, through Pillow: PyTurboJPEG is an optional extra). The peer of
    ``clotclf tile``, which writes its TileSet, QC picture and mask."""
    from hs2p.api import (
        FilterConfig,
        PreviewConfig,
        SegmentationConfig,
        SlideSpec,
        TilingConfig,
        tile_slides,
    )

    out_dir = Path(out) / "hs2p"
    [art] = tile_slides([SlideSpec(sample_id=Path(slide).stem, image_path=Path(slide))],
                        tiling=TilingConfig(requested_spacing_um=MPP_TARGET, requested_tile_size_px=TILE_PX, tolerance=0.05, overlap=0.0),
                        segmentation=SegmentationConfig(method="hsv"), filtering=FilterConfig(),
                        preview=PreviewConfig(save_mask_preview=True, save_tiling_preview=True), output_dir=out_dir,
                        num_workers=1, save_tiles=mode == "pixels", jpeg_backend="pil")
    return {"read_back_hs2p": str(art.coordinates_npz_path)}


def read_back_hs2p(npz: str) -> dict:
    """The kept tiles from hs2p's coordinates file (after the clock, as clotclf's TileSet is read back)."""
    import json

    import numpy as np

    with np.load(npz, allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    meta = json.loads(Path(npz).with_name(Path(npz).name.replace(".npz", ".meta.json")).read_text())
    side = int(meta["tiling"]["tile_size_lv0"])
    files = sorted(p.relative_to(Path(npz).parents[1]).as_posix() for p in Path(npz).parents[1].rglob("*") if p.is_file())
    return {"boxes": [[int(a), int(b), side, side] for a, b in zip(x, y)], "note": "written: " + ", ".join(files)}


def _warm_hs2p() -> None:
    import cv2  # noqa: F401
    import hs2p.api
    import hs2p.wsi  # noqa: F401
    import openslide  # noqa: F401


# ----------------------------------------------------------------------------- LazySlide 0.13.0 (wsidata 0.12)


def run_lazyslide(slide: str, mode: str, out: str) -> dict:
    """``open_wsi`` (its automatic reader, no zarr store written), ``zs.pp.find_tissues`` (defaults:
    Otsu with its artifact filter, the level nearest 4 um/px that fits in memory) and
    ``zs.pp.tile_tissues(tile_px=224, mpp=1.0)`` (its default drops tiles over 30 % background);
    pixels through ``wsi.iter.tile_images``, which reads each tile with the slide's reader."""
    import lazyslide as zs
    from lazyslide.preprocess._tissue import _decide_level
    from wsidata import open_wsi

    wsi = open_wsi(slide, store=None)
    seg_level = _decide_level(wsi, "auto")  # what find_tissues(level="auto") picks, for the note only
    zs.pp.find_tissues(wsi)
    zs.pp.tile_tissues(wsi, TILE_PX, mpp=MPP_TARGET)
    n = 0
    if mode == "pixels":
        for tile in wsi.iter.tile_images("tiles"):
            _rgb224(tile.image)
            n += 1
    bounds = wsi["tiles"].bounds
    boxes = [[round(x0), round(y0), round(x1 - x0), round(y1 - y0)]
             for x0, y0, x1, y1 in bounds[["minx", "miny", "maxx", "maxy"]].to_numpy()]
    spec = wsi.tile_spec("tiles")
    down = wsi.properties.level_downsample
    return {"boxes": boxes, "read": n,
            "note": f"{type(wsi.reader).__name__}, tissue from level {seg_level} (1/{down[seg_level]:.0f}), "
                    f"{len(wsi['tissues'])} tissue pieces, tiles read at level {spec.ops_level} ({spec.ops_width} px, resized)"}


def _warm_lazyslide() -> None:
    import cv2  # noqa: F401
    import geopandas  # noqa: F401
    import lazyslide
    import lazyslide.preprocess  # noqa: F401
    import openslide  # noqa: F401
    import shapely  # noqa: F401
    import wsidata
    import wsidata.io  # noqa: F401


# ----------------------------------------------------------------------------- TIAToolbox 2.1.3


def run_tiatoolbox(slide: str, mode: str, out: str) -> dict:
    """The reader ``WSIReader.open`` tries for a ``.tif`` (``TIFFWSIReader``; ``OpenSlideWSIReader`` where
    that refuses the file -- a generic multi-page TIFF under 4 GB -- in place of the in-memory
    ``VirtualWSIReader`` that ``WSIReader.open`` falls back to there, which reads the whole level 0 and
    has no mpp, so no 1 um/px geometry), ``reader.tissue_mask()`` (defaults: Otsu at 1.25x objective
    power) and ``get_patch_extractor("slidingwindow", resolution=1.0, units="mpp", input_mask=mask)``
    (defaults: a tile with any tissue is kept; edge tiles padded). Coordinates: the extractor's list."""
    import logging

    from tiatoolbox.tools.patchextraction import get_patch_extractor
    from tiatoolbox.wsicore.wsireader import OpenSlideWSIReader, TIFFWSIReader

    logging.getLogger("tiatoolbox").setLevel(logging.ERROR)  # one "Scale > 1" warning per tile otherwise
    try:
        reader, how = TIFFWSIReader(slide), "TIFFWSIReader"
    except ValueError as exc:  # "Unsupported TIFF WSI format"
        if "Unsupported TIFF WSI format" not in str(exc):
            raise
        reader, how = OpenSlideWSIReader(slide), "OpenSlideWSIReader (its TIFF reader refuses the file)"
    mask = reader.tissue_mask()
    ext = get_patch_extractor("slidingwindow", input_img=reader, input_mask=mask, patch_size=(TILE_PX, TILE_PX),
                              resolution=MPP_TARGET, units="mpp", stride=(TILE_PX, TILE_PX))
    n = 0
    if mode == "pixels":
        for patch in ext:
            _rgb224(patch)
            n += 1
    scale = MPP_TARGET / float(reader.info.mpp[0])  # level-0 px per output px
    side = round(TILE_PX * scale)
    boxes = [[round(x0 * scale), round(y0 * scale), side, side] for x0, y0, _, _ in ext.coordinate_list]
    mh, mw = mask.img.shape[:2]
    return {"boxes": boxes, "read": n,
            "note": f"{how}, Otsu mask at 1.25x ({mw} x {mh} px, 1/{reader.info.slide_dimensions[0] / mw:.0f}), "
                    f"tiles read at 1 um/px by read_rect"}


def _warm_tiatoolbox() -> None:
    import cv2  # noqa: F401
    import openslide  # noqa: F401
    import tiatoolbox.tools.patchextraction
    import tiatoolbox.tools.tissuemask
    import tiatoolbox.wsicore.wsireader  # noqa: F401


RUNNERS = {"hs2p": (run_hs2p, _warm_hs2p), "hs2p-files": (run_hs2p_files, _warm_hs2p), "lazyslide": (run_lazyslide, _warm_lazyslide),
           "tiatoolbox": (run_tiatoolbox, _warm_tiatoolbox)}
