"""How slides are cut into tiles (:class:`TileSettings`), and the errors of tiling.

The default geometry (justified in docs/data-formats.md): the slide seen at 1/4, 224-pixel tiles
(896 level-0 pixels a side), cached at 224 pixels, no overlap — 4 level-0 pixels per cached pixel,
inside the 4–8 of the public STRIP AI solutions and about 1 µm per pixel at 0.25 µm/px scans,
where a red cell (~7 µm) spans ~7 pixels. The published recipe (600-pixel tiles at 1/10, cached at
224: ~27 level-0 pixels per cached pixel) is ``--downsample 10 --tile-size 600``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from clotclf_core.config import StrictModel
from clotclf_core.plugin.errors import ClotclfError

#: a slide must be at least this many pixels a side to be tiled
MIN_SLIDE_SIDE = 64
#: more grid cells than this on one slide is a geometry mistake (a 1 µm tile on a 10 cm slide...)
MAX_GRID_CELLS = 10_000_000
#: one batch of candidate tiles at the working resolution may not need more memory than this (a
#: tile far larger than any slide, e.g. --downsample 1000, is a geometry mistake, not a slide to tile)
MAX_BATCH_BYTES = 512 * 2**20


#: settings added after TileSet format 2 was fixed, with the default that leaves a record unchanged
LATER_FIELDS: dict[str, Any] = {"mask_from": "auto", "coords_only": False}


class TilingError(ClotclfError):
    """Tiling cannot start (bad folder, no slides, unreachable cluster, nothing could be tiled)."""


class SlideSkip(ClotclfError):
    """A slide that yields no tiles for a reason that is not a bug: recorded by ``tile_slides``,
    raised by ``tile_slide`` (except ``no_tissue``, which there is an empty result)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class TileSettings(StrictModel):
    """How slides are cut into tiles. Every field is recorded in ``tileset.json`` and is a ``clotclf
    tile`` option (``--field-name``, generated from this model: the descriptions are its help)."""

    downsample: float = Field(4.0, ge=1.0, allow_inf_nan=False, description="view the slide at 1/downsample (--tile-size and --stride are pixels of that view)")
    tile_size: int = Field(224, ge=8, description="tile side in pixels of that view (224 at 1/4 = 896 level-0 pixels); not with --tile-um")
    stride: int | None = Field(None, ge=1, description="step between tiles in pixels of that view [default: the tile side, no overlap]")
    tile_um: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="tile side in microns (needs the slide's mpp), instead of --tile-size; --stride stays in pixels of the view",
    )
    train_size: int = Field(224, ge=8, description="side of the cached tiles (the training input size)")
    min_tissue: float = Field(0.1, ge=0.0, le=1.0, description="share of a tile that must lie in the tissue mask for it to be a candidate")
    thumbnail_size: int = Field(1024, ge=64, description="longer side of the low-resolution view the tissue mask is computed on")
    tissue_method: Literal["saturation", "od", "either", "both"] = Field(
        "either", description="tissue mask: more saturated than the slide's glass, absorbing more (optical density), either or both"
    )
    batch_size: int = Field(64, ge=1, description="tiles filtered together")
    prescreen: bool = Field(
        True,
        description="tiled TIFFs: skip decoding TIFF tiles whose compressed size says glass, far from any busy tile "
        "(a lattice of them is decoded to check, and any tissue found makes its neighbours decoded too)",
    )
    edges: Literal["pad", "drop"] = Field(
        "pad",
        description="pad: the grid covers the whole slide, centred, tiles past its edge filled with the slide's glass "
        "colour (no slide too small, no edge lost); drop: whole tiles from (0, 0) only (clotclf 0.1)",
    )
    max_tiles: int | None = Field(None, ge=1, description="keep at most this many tiles per slide, the best by --max-tiles-by [default: all]")
    max_tiles_by: Literal["tissue", "dark"] = Field(
        "tissue",
        description="rank for --max-tiles: tissue (share in the tissue mask, ties broken by darkness) or dark (darkest first, as the STRIP AI winners did)",
    )
    background: Literal["slide", "white"] = Field(
        "slide", description="glass colour for the tissue mask, padding and filters: estimated per slide, or white (clotclf 0.1)"
    )
    mask_from: Literal["auto", "scan", "thumbnail"] = Field(
        "auto",
        description="where the tissue mask comes from: auto (a pyramid's low level when it has one, then only the tiles under "
        "tissue are decoded; else the scan), scan (the working level decoded whole), thumbnail (the thumbnail the slide stores)",
    )
    coords_only: bool = Field(
        False,
        description="grid, mask, scores (from the low-resolution view) and QC picture, no pixel cache: embed / predict read "
        "the tiles from the slides later; every filter must score low-resolution tiles (otsu does)",
    )

    @model_validator(mode="after")
    def _check(self) -> "TileSettings":
        if self.stride is not None and self.tile_um is None and self.stride > self.tile_size:
            raise ValueError(f"stride ({self.stride}) larger than tile_size ({self.tile_size}) would skip tissue between tiles")
        return self

    @field_validator("downsample")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @classmethod
    def from_values(cls, **values: Any) -> "TileSettings":
        """Validate settings given by a user (CLI, YAML): a bad value is one ConfigError naming it."""
        from pydantic import ValidationError

        from clotclf_core.plugin.errors import ConfigError
        from clotclf_core.plugin.spec import format_validation_error

        try:
            return cls(**values)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, "tiling settings")) from None

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> "TileSettings":
        """The settings a TileSet or a trained run recorded. Records made before ``edges`` and
        ``background`` existed (clotclf 0.1) get that version's behaviour: edges dropped, white
        glass, so that ``predict`` cuts new slides the way the model's training slides were cut."""
        fields = set(cls.model_fields)
        values = {k: v for k, v in recorded.items() if k in fields}
        if "edges" not in recorded:
            values.setdefault("edges", "drop")
        if "background" not in recorded:
            values.setdefault("background", "white")
        return cls(**values)

    def level0_geometry(self, mpp: float | None) -> tuple[float, float]:
        """(tile side, stride) in level-0 pixels for a slide with ``mpp`` microns per pixel."""
        if self.tile_um is not None:
            if not mpp:
                raise SlideSkip(
                    "failed", "the slide does not record a plausible microns per pixel, so --tile-um cannot be used; "
                    "use --tile-size (pixels of the 1/downsample view) instead"
                )
            size0 = self.tile_um / mpp
        else:
            size0 = self.tile_size * self.downsample
        stride0 = self.stride * self.downsample if self.stride else size0
        if self.tile_um is not None and stride0 > size0 + 0.5:  # the stride is in view pixels, the tile in microns
            raise SlideSkip(
                "failed", f"--stride {self.stride} at 1/{self.downsample:g} is {stride0:g} level-0 px, more than the tile "
                f"({size0:g} px = {self.tile_um:g} um at this slide's {mpp:g} um/px): the tissue between tiles would never be "
                "looked at; give a smaller --stride, or none (tiles side by side)"
            )
        return max(size0, 1.0), max(stride0, 1.0)

    def record(self) -> dict[str, Any]:
        """What ``tileset.json`` records under ``settings`` (with the filters and source added).

        The fields added in clotclf 0.2 (:data:`LATER_FIELDS`) are recorded only when they differ from
        their defaults, so that a TileSet cut at the defaults keeps the record (and is resumed) as
        before them; :meth:`from_recorded` gives the defaults back."""
        values = self.model_dump(mode="json")
        for name, default in LATER_FIELDS.items():
            if values.get(name) == default:
                values.pop(name)
        return values
