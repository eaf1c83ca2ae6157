"""Filter plugins, built once per process and run in order on batches of candidate tiles."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from clotclf_core.plugin.errors import PluginError

FilterRef = tuple[str, dict[str, Any]]


@dataclass
class BuiltFilter:
    """A filter plugin ready to score: its name (score column ``score_<name>``), object and options."""

    name: str
    obj: Any
    options: dict[str, Any]
    #: the plugin (entry point), distribution and version providing it (recorded in tileset.json)
    component: dict[str, str] = field(default_factory=dict)
    #: whether ``score`` takes the slide's glass colour (``score(tiles, background=(r, g, b))``)
    wants_background: bool = False
    #: whether its scores mean something on low-resolution tiles (``--coords-only``; the plugin's ``low_resolution``)
    low_resolution: bool = False

    @property
    def threshold(self) -> float:
        return float(self.obj.threshold)

    def describe(self) -> dict[str, Any]:
        """What tileset.json's ``settings.filters`` records (compared on resume: no versions here)."""
        extra = self.obj.describe() if callable(getattr(self.obj, "describe", None)) else {}
        return {"name": self.name, "options": self.options, **({"describe": extra} if extra else {})}

    def score(self, tiles: np.ndarray, background: np.ndarray | None) -> np.ndarray:
        if self.wants_background and background is not None:
            s = self.obj.score(tiles, background=tuple(int(v) for v in background))
        else:
            s = self.obj.score(tiles)
        s = np.asarray(s, dtype=np.float32).reshape(-1)
        if s.shape != (len(tiles),) or not np.isfinite(s).all():
            raise PluginError(f"filter '{self.name}' returned {s.shape} scores (all finite: {np.isfinite(s).all()}) for {len(tiles)} tiles")
        return s


def build_filters(refs: Sequence[FilterRef]) -> list[BuiltFilter]:
    """Validate options and build each filter plugin once (bad names / options raise here)."""
    from clotclf_core.plugin_manager import get_manager

    mgr = get_manager()
    built: list[BuiltFilter] = []
    for name, options in refs:
        spec = mgr.get("filter", name)
        if any(b.name == spec.name for b in built):
            raise PluginError(f"filter '{spec.name}' is given twice; give each filter once (its score column is score_{spec.name})")
        opts = spec.validate_options(options)
        obj = spec.factory(opts)
        if not callable(getattr(obj, "score", None)) or not isinstance(getattr(obj, "threshold", None), (int, float)):
            raise PluginError(
                f"filter '{spec.name}' (plugin {spec.plugin}) built an object without score() and a numeric threshold; "
                "see PatchFilter in clotclf_core/interfaces.py"
            )
        try:
            wants = "background" in inspect.signature(obj.score).parameters
        except (TypeError, ValueError):
            wants = False
        component = {"plugin": spec.plugin, "distribution": spec.distribution, "version": spec.version}
        built.append(BuiltFilter(spec.name, obj, opts.model_dump(mode="json"), component, wants,
                                 getattr(obj, "low_resolution", False) is True))
    return built


_FILTER_CACHE: dict[str, list[BuiltFilter]] = {}


def filters_for(refs: Sequence[FilterRef]) -> list[BuiltFilter]:
    """Filters built once per process (worker processes build their own)."""
    key = json.dumps([list(r) for r in refs], sort_keys=True, default=str)
    if key not in _FILTER_CACHE:
        _FILTER_CACHE[key] = build_filters(refs)
    return _FILTER_CACHE[key]


def as_built(filters: Sequence[FilterRef | BuiltFilter]) -> list[BuiltFilter]:
    if all(isinstance(f, BuiltFilter) for f in filters):
        return list(filters)  # type: ignore[arg-type]
    return build_filters([(f[0], dict(f[1] or {})) for f in filters])  # type: ignore[index]


def check_coords_only(filters: Sequence[BuiltFilter], coords_only: bool) -> None:
    """``--coords-only`` scores tiles cut from the low-resolution view: refuse a filter that needs the
    tiles' full pixels (one that does not declare ``low_resolution = True``), naming it."""
    from clotclf_core.tiling.settings import TilingError

    needs = [f.name for f in filters if not f.low_resolution] if coords_only else []
    if needs:
        raise TilingError(
            f"--coords-only scores tiles from the slide's low-resolution view, but filter{'s' if len(needs) > 1 else ''} "
            f"{', '.join(repr(n) for n in needs)} need{'' if len(needs) > 1 else 's'} the tiles' full pixels at tiling time; "
            "drop --coords-only (pixels cached), or tile with filters that score low-resolution tiles (e.g. --filter otsu) "
            "and apply the others after `embed`")


def run_filters(
    filters: list[BuiltFilter], batch: np.ndarray, background: np.ndarray | None
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Score ``batch`` with each filter in order (a filter sees only the tiles every earlier one
    kept). Returns ``(alive, scores, rejected_by)``: survivors, per-filter scores (NaN where not
    scored) and, per tile, the index of the filter that rejected it (-1: kept)."""
    alive = np.ones(len(batch), bool)
    rejected_by = np.full(len(batch), -1, np.int64)
    scores = {f.name: np.full(len(batch), np.nan, np.float32) for f in filters}
    for fi, f in enumerate(filters):
        idx = np.flatnonzero(alive)
        if len(idx) == 0:
            break
        s = f.score(batch[idx], background)
        scores[f.name][idx] = s
        drop = s < f.threshold
        alive[idx[drop]] = False
        rejected_by[idx[drop]] = fi
    return alive, scores, rejected_by
