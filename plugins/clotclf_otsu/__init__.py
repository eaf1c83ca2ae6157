"""Built-in patch filter ``otsu``: keep tiles whose tissue fraction is at least ``threshold``.

Per tile, Otsu's threshold splits the pixels (grey level or saturation) in two classes; the
tile's score is the share of pixels on the TISSUE side (darker in grey, more saturated in
saturation). The published STRIP AI code counted the bright, background side, so its "at
least 30 %" kept mostly-empty tiles; here a blank tile scores ~0 and a full one ~1.

Importing this module imports only pydantic; the filter itself is numpy (``_filter.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clotclf_core.hookspecs import hookimpl
from clotclf_core.interfaces import ComponentSpec, Options


class OtsuOptions(Options):
    threshold: float = Field(0.30, ge=0.0, le=1.0, description="keep a tile when at least this share of it is tissue")
    channel: Literal["grey", "saturation"] = Field(
        "grey", description="what Otsu splits: grey level (tissue = darker) or HSV saturation (tissue = more saturated)"
    )
    min_contrast: float = Field(
        15.0,
        ge=0.0,
        le=255.0,
        description="below this gap between the two class means (0-255) a tile is uniform: all tissue or all background",
    )
    background_level: float = Field(
        220.0,
        ge=0.0,
        le=255.0,
        description="grey channel: pixels brighter than this (0-255) are never tissue (glass)",
    )
    min_saturation: float = Field(
        20.0,
        ge=0.0,
        le=255.0,
        description="saturation channel: pixels less saturated than this (0-255) are never tissue (glass)",
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
