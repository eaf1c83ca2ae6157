"""Built-in patch filter ``otsu``: keep tiles whose tissue fraction is at least ``threshold``.

Per tile, Otsu's threshold splits the pixels (grey level or saturation) in two classes; the
tile's score is the share of pixels on the TISSUE side (darker in grey, more saturated in
saturation). The published STRIP AI code counted the bright, background side, so its "at
least 30 %" kept mostly-empty tiles; here a blank tile scores ~0 and a full one ~1.

Glass is whatever colour the slide's glass is: tiling passes each slide's estimated glass colour
(``score(tiles, background=(r, g, b))``) and "glass-bright" means within ``background_margin`` grey
levels of it, so grey-green glass (RGB ≈ 200) is not counted as tissue. A fixed
``background_level`` overrides that (clotclf 0.1 used 220).

Importing this module imports only pydantic; the filter itself is numpy (``_filter.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl


class OtsuOptions(Options):
    threshold: float = Field(
        0.10, ge=0.0, le=1.0,
        description="keep a tile when at least this share of it is tissue (0.10, the mask's min_tissue: no edge tissue lost; clotclf 0.1 and the published STRIP AI code: 0.30)",
    )
    channel: Literal["grey", "saturation"] = Field(
        "grey", description="what Otsu splits: grey level (tissue = darker) or HSV saturation (tissue = more saturated)"
    )
    min_contrast: float = Field(
        15.0,
        ge=0.0,
        le=255.0,
        description="below this gap between the two class means (0-255) a tile is uniform: all tissue or all background",
    )
    background_level: float | None = Field(
        None,
        ge=0.0,
        le=255.0,
        description="grey channel: pixels brighter than this (0-255) are never tissue (glass); "
        "default: the slide's glass grey level minus background_margin (220 on white glass)",
    )
    background_margin: float = Field(
        22.0, ge=0.0, le=255.0, description="grey channel: how much darker than the slide's glass a pixel must be to count as tissue"
    )
    min_saturation: float = Field(
        20.0,
        ge=0.0,
        le=255.0,
        description="saturation channel: pixels less saturated than this (0-255) above the glass's own saturation are never tissue",
    )


def build(opts: OtsuOptions):
    from ._filter import OtsuFilter

    return OtsuFilter(opts)


@hookimpl
def clotclf_patch_filters():
    return [
        ComponentSpec(
            "filter",
            "otsu",
            "share of tissue pixels (tissue side of a per-tile Otsu threshold); keep >= threshold",
            OtsuOptions,
            build,
        )
    ]
