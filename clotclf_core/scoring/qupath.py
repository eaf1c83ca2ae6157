"""A slide's scored tiles as GeoJSON that QuPath imports as is (File > Import objects, or drag the file
onto the open slide): ``predict`` and ``evaluate`` write one ``qupath/<image_id>.geojson`` per slide.

What QuPath reads (its ``GsonTools`` / ``QuPathTypeAdapters``, v0.4 to 0.7 — checked in its source, not
by running QuPath):

- a ``FeatureCollection``; coordinates are **level-0 pixels, origin at the top-left** of the
  full-resolution image (no CRS, no microns);
- ``properties.objectType``: ``"detection"`` for each tile, ``"annotation"`` for the tissue outline
  (a missing objectType would make every tile an annotation);
- ``properties.classification``: ``{"name": ..., "color": [r, g, b]}`` — QuPath **rejects** a
  classification without a colour (``Unable to parse PathClass``), so one is always written;
- ``properties.measurements``: an object ``{name: number}`` (QuPath's own format since 0.4); only
  finite numbers (JSON has no NaN), so a measurement a tile does not have is left out.

Each tile is a detection classified by its predicted class (the colours are the heatmaps':
coolwarm's blue end for the first label, its red end for the second), measured with P(label) of
the ensemble and of every model, each attention model's weight, its tissue share, darkness and
filter scores. The tissue mask of tiling is the annotation (``masks/<image_id>.png`` of the
TileSet, traced to polygons to within one mask pixel); a TileSet without masks (made before
clotclf wrote them) gets the outline of its candidate tiles instead, named as such.

paquo (QuPath's Python binding) is not used: it drives QuPath's Java classes and needs a QuPath
installation (and a JVM) at run time, and it is GPL-3.0 while clotclf is Apache-2.0. The GeoJSON
QuPath itself writes and reads needs neither.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clotclf_core.plugin.io import write_text

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clotclf_core.tiling.tileset import TileSet

#: the classes' colours: the two ends of the heatmaps' coolwarm map for two labels, else tab10
TWO_CLASS_COLOURS = ((59, 76, 192), (180, 4, 38))
TAB10 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
         (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
#: the tissue outline: the QC picture's blue
TISSUE_COLOUR = (40, 90, 255)
#: measurement names kept from the TileSet index (index column -> QuPath measurement)
INDEX_MEASUREMENTS = {"tissue": "tissue share", "darkness": "darkness"}
#: where tiling keeps each slide's tissue mask inside a TileSet
MASKS_DIR = "masks"


def class_colours(labels: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    palette = TWO_CLASS_COLOURS if len(labels) == 2 else TAB10
    return {name: tuple(palette[i % len(palette)]) for i, name in enumerate(labels)}


def index_measurements(rows: "pd.DataFrame") -> dict[str, np.ndarray]:
    """The TileSet's own per-tile numbers: tissue share, darkness and each filter's score (a column
    that is empty or not numeric, as in TileSets of clotclf 0.1, gives no measurement)."""
    import pandas as pd

    wanted = {col: name for col, name in INDEX_MEASUREMENTS.items() if col in rows.columns}
    wanted |= {col: f"{col[len('score_'):]} score" for col in rows.columns if col.startswith("score_")}
    out = {}
    for col, name in wanted.items():
        values = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=np.float64)
        if np.isfinite(values).any():
            out[name] = values
    return out


def _box(x: float, y: float, size: float, width: int | None, height: int | None) -> list[list[list[float]]]:
    """A tile's square, clipped to the slide (a tile may reach past its edge), as a closed ring."""
    x1, y1 = x + size, y + size
    if width:
        x1 = min(x1, width)
    if height:
        y1 = min(y1, height)
    x0, y0 = max(x, 0), max(y, 0)
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _number(v: Any) -> float | None:
    f = float(v)
    return round(f, 6) if math.isfinite(f) else None


def tile_features(tiles: np.ndarray, measurements: dict[str, np.ndarray], predicted: Sequence[str], labels: Sequence[str],
                  dims: tuple[int, int] | None = None, metadata: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One detection per tile: ``tiles`` (N, 3) x, y, size in level-0 px; ``measurements`` name ->
    (N,) numbers; ``predicted`` the class of each tile. ``dims`` (width, height) clips the boxes."""
    colours = class_colours(labels)
    width, height = dims if dims else (None, None)
    out = []
    for i, (x, y, size) in enumerate(np.asarray(tiles, dtype=np.float64).reshape(-1, 3)):
        values = {name: _number(v[i]) for name, v in measurements.items()}
        props: dict[str, Any] = {
            "objectType": "detection",
            "classification": {"name": str(predicted[i]), "color": list(colours[str(predicted[i])])},
            "measurements": {k: v for k, v in values.items() if v is not None},
        }
        if metadata:
            props["metadata"] = dict(metadata)
        out.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": _box(x, y, size, width, height)},
                    "properties": props})
    return out


def tissue_feature(geometry: Any, name: str) -> dict[str, Any] | None:
    """The tissue outline (a shapely geometry in level-0 px) as a locked annotation, or None when empty."""
    from shapely.geometry import mapping

    if geometry is None or geometry.is_empty:
        return None
    return {"type": "Feature", "geometry": mapping(geometry),
            "properties": {"objectType": "annotation", "name": name, "color": list(TISSUE_COLOUR), "isLocked": True}}


def mask_geometry(mask: np.ndarray, level0_per_pixel: float) -> Any:
    """A boolean mask traced to (multi)polygons with their holes, in level-0 px: each boundary runs
    through the centres of the mask's edge pixels, so it is exact to within one mask pixel."""
    import cv2
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.ops import unary_union

    m = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
    if not m.any():
        return MultiPolygon()
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    scale = float(level0_per_pixel)

    def ring(c: np.ndarray) -> np.ndarray:
        return (c.reshape(-1, 2).astype(np.float64) + 0.5) * scale

    polygons = []
    for i, c in enumerate(contours):
        if hierarchy[0][i][3] != -1 or len(c) < 3:  # a hole (drawn with its outer ring below) or a speck
            continue
        holes = []
        child = hierarchy[0][i][2]
        while child != -1:
            if len(contours[child]) >= 3:
                holes.append(ring(contours[child]))
            child = hierarchy[0][child][0]
        poly = Polygon(ring(c), holes).buffer(0)  # buffer(0): a self-touching trace made valid
        if not poly.is_empty:
            polygons.append(poly)
    return unary_union(polygons) if polygons else MultiPolygon()


def tissue_outline(ts: "TileSet", image_id: str) -> tuple[Any, str]:
    """(the slide's tissue outline in level-0 px, its annotation name): the tissue mask tiling kept,
    else the union of the slide's candidate tiles (kept and rejected), said in the name."""
    from shapely.geometry import box
    from shapely.ops import unary_union

    info = ts.slides.get(image_id, {})
    scale = info.get("mask_level0_px_per_pixel")
    path = Path(ts.root) / MASKS_DIR / f"{image_id}.png"
    if scale and path.is_file():
        from PIL import Image

        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0
        return mask_geometry(mask, float(scale)), "tissue mask (clotclf tiling)"
    frames = [f[f["image_id"] == image_id] for f in (ts.index, getattr(ts, "rejected", None)) if f is not None and len(f)]
    boxes = [box(x, y, x + s, y + s) for f in frames for x, y, s in f[["x", "y", "size"]].to_numpy(dtype=np.float64)]
    return unary_union(boxes) if boxes else None, "tissue: outline of the candidate tiles (this TileSet keeps no tissue mask)"


def feature_collection(tiles: list[dict[str, Any]], tissue: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": ([tissue] if tissue else []) + tiles}


def write_collection(path: Path, collection: dict[str, Any]) -> Path:
    """Compact JSON (a slide can have thousands of tiles), atomically."""
    write_text(path, json.dumps(collection, separators=(",", ":"), allow_nan=False) + "\n")
    return path


def slide_dims(ts: "TileSet", image_id: str) -> tuple[int, int] | None:
    """The slide's level-0 (width, height) as its TileSet recorded them (None when it did not)."""
    info = ts.slides.get(image_id, {})
    return (int(info["width"]), int(info["height"])) if info.get("width") and info.get("height") else None
