"""What ``predict`` and ``evaluate`` show of one slide: its scored tiles as a heatmap PNG and as
QuPath GeoJSON, from one :class:`SlideScores` (the tiles of one TileSet with every model's per-tile
probabilities, the ensemble's and any attention weights, aligned).

The heatmap lies over the slide's thumbnail when the caller has the slide (``predict``), else over
the TileSet's tissue mask in grey (``evaluate`` reads no slide), and says which. Its probability
panel is the ensemble of the models that scored these tiles, MIL members included (their tile
probability: each tile as a bag of one); members tiled differently are named as left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clotclf_core.scoring.plots import plot_attention_heatmap, plot_heatmap
from clotclf_core.scoring.qupath import (
    MASKS_DIR,
    feature_collection,
    index_measurements,
    slide_dims,
    tile_features,
    tissue_feature,
    tissue_outline,
    write_collection,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clotclf_core.tiling.tileset import TileSet

#: the longer side of a heatmap's background drawn from the tissue mask, in pixels
MASK_VIEW_SIDE = 1024


@dataclass
class SlideScores:
    """One slide's tiles in one TileSet with their scores. ``rows`` are the TileSet index rows of
    ``tiles`` (x, y, size in level-0 px); ``members`` model name -> (n, C) P per tile (NaN where that
    model did not score the tile); ``weights`` each member's ensemble weight; ``attention`` model
    name -> (n,) weights; ``of`` who the ensemble is, in words (empty for one model); ``n_models``
    how many models the whole ensemble has (members tiled differently scored other tiles)."""

    image_id: str
    ts: "TileSet"
    rows: "pd.DataFrame"
    members: dict[str, np.ndarray]
    weights: dict[str, float]
    attention: dict[str, np.ndarray] = field(default_factory=dict)
    of: str = ""
    n_models: int = 1  #: models in the whole ensemble (some may have scored other tiles of the slide)

    @property
    def tiles(self) -> np.ndarray:
        return self.rows[["x", "y", "size"]].to_numpy(dtype=np.float64)

    @property
    def ensemble(self) -> np.ndarray:
        """Per tile, the weighted mean of the members that scored it (NaN where none did)."""
        total = num = None
        for name, p in self.members.items():
            ok = np.isfinite(p).all(axis=1)
            w = np.where(ok, self.weights.get(name, 1.0), 0.0)
            add = np.where(ok[:, None], p, 0.0) * w[:, None]
            num = add if num is None else num + add
            total = w if total is None else total + w
        if num is None:
            return np.zeros((len(self.rows), 0))
        return np.divide(num, total[:, None], out=np.full_like(num, np.nan), where=total[:, None] > 0)

    @property
    def info(self) -> dict[str, Any]:
        return self.ts.slides.get(self.image_id, {})

    @property
    def dims(self) -> tuple[int, int]:
        """Level-0 (width, height): as tiling recorded them, else (a feature store) the tiles' extent."""
        recorded = slide_dims(self.ts, self.image_id)
        if recorded:
            return recorded
        t = self.tiles
        return (int((t[:, 0] + t[:, 2]).max()), int((t[:, 1] + t[:, 2]).max())) if len(t) else (1, 1)


def align(rows: "pd.DataFrame", tiles: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` of ``tiles`` (x, y, size) placed on ``rows``' tiles (NaN where absent)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full((len(rows), *values.shape[1:]), np.nan)
    where = {tuple(t): i for i, t in enumerate(rows[["x", "y", "size"]].to_numpy(dtype=np.int64).tolist())}
    for j, t in enumerate(np.asarray(tiles, dtype=np.int64).reshape(-1, 3).tolist()):
        i = where.get(tuple(t))
        if i is not None:
            out[i] = values[j]
    return out


def mask_view(ts: "TileSet", image_id: str, dims: tuple[int, int]) -> np.ndarray:
    """A stand-in thumbnail of a slide of level-0 ``dims`` when the slide is not at hand: the tissue
    mask tiling kept, light grey on white (all white for a TileSet without masks)."""
    width, height = dims
    path = Path(ts.root) / MASKS_DIR / f"{image_id}.png"
    if path.is_file():
        from PIL import Image

        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0
    else:
        scale = MASK_VIEW_SIDE / max(width, height)
        mask = np.zeros((max(1, round(height * scale)), max(1, round(width * scale))), bool)
    view = np.full((*mask.shape, 3), 255, np.uint8)
    view[mask] = (214, 214, 222)
    return view


def measurements(ss: SlideScores, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """The QuPath measurements of each tile: ``P(<label>)`` of one model; of an ensemble each model's
    ``P(<label>) <model>`` and, when every model scored these tiles, ``P(<label>) ensemble`` (the
    second label only for two labels: P(first) is 1 minus it); each attention model's
    ``attention <model>``; tissue share, darkness and filter scores."""
    shown = [len(labels) - 1] if len(labels) == 2 else list(range(len(labels)))
    out: dict[str, np.ndarray] = {}
    ens = ss.ensemble
    for c in shown:
        if ss.n_models == 1:
            out[f"P({labels[c]})"] = ens[:, c]
            continue
        if len(ss.members) == ss.n_models:
            out[f"P({labels[c]}) ensemble"] = ens[:, c]
        for name, p in ss.members.items():
            out[f"P({labels[c]}) {name}"] = p[:, c]
    for name, a in ss.attention.items():
        out[f"attention {name}"] = a
    out.update(index_measurements(ss.rows))
    return out


def _tile_features(ss: SlideScores, labels: Sequence[str]) -> list[dict[str, Any]]:
    ens = ss.ensemble
    keep = np.isfinite(ens).all(axis=1) if ens.size else np.zeros(len(ss.rows), bool)
    sub = SlideScores(ss.image_id, ss.ts, ss.rows[keep], {k: v[keep] for k, v in ss.members.items()}, ss.weights,
                      {k: v[keep] for k, v in ss.attention.items()}, ss.of, ss.n_models)
    predicted = [labels[i] for i in np.argmax(ens[keep], axis=1)] if keep.any() else []
    return tile_features(sub.tiles, measurements(sub, labels), predicted, labels, slide_dims(ss.ts, ss.image_id),
                         {"models": ss.of} if ss.of else None)


def write_geojson(views: Sequence[SlideScores], labels: Sequence[str], path: Path) -> Path:
    """``path``: one slide's tissue outline and tiles for QuPath (:mod:`clotclf_core.scoring.qupath`);
    ``views`` are its tiles in one TileSet each (several when the models were tiled differently: QuPath
    then shows each recipe's tiles as their own, overlapping, detections)."""
    outline, name = tissue_outline(views[0].ts, views[0].image_id)
    tiles = [f for view in views for f in _tile_features(view, labels)]
    return write_collection(path, feature_collection(tiles, tissue_feature(outline, name)))


def write_heatmap(ss: SlideScores, labels: Sequence[str], png: Path, thumb: np.ndarray | None = None,
                  dims: tuple[int, int] | None = None) -> Path:
    """One PNG: P(second label) per tile (the ensemble) over the slide — its thumbnail ``thumb`` of a
    slide of level-0 ``dims``, else the tissue mask — and beside it the attention of the first model
    that has some. Axes and scale bar in µm when the slide records its mpp."""
    target, col = labels[-1], len(labels) - 1
    background, note = "slide", ""
    if thumb is None:
        dims = ss.dims
        thumb, background = mask_view(ss.ts, ss.image_id, dims), "tissue mask"
        note = " (over the tissue mask: the slide itself was not read)"
    mpp = ss.info.get("mpp")
    ens = ss.ensemble
    p = ens[:, col] if ens.size else np.zeros(len(ss.rows))
    ok = np.isfinite(p)
    title = f"{ss.image_id}: P({target}) per tile{note}"
    for name, weights in ss.attention.items():
        use = ok & np.isfinite(weights)
        return plot_attention_heatmap(thumb, ss.tiles[use], p[use], weights[use], dims, png, target,
                                      f"{title} and attention", name, mpp=mpp, of=ss.of, background=background)
    return plot_heatmap(thumb, ss.tiles[ok], p[ok], dims, png, target, title, mpp=mpp, of=ss.of, background=background)
