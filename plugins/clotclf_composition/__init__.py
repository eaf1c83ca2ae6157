"""The ``composition`` encoder: named, hand-made features of clot composition, per tile, on the CPU.

A backbone plugin like any other (``clotclf embed --backbone composition``, end-to-end MIL with
``--backbone composition``), with no trainable weights: per tile it measures

- colour deconvolution into haematoxylin / eosin / residual (Ruifrok & Johnston's fixed H-E-DAB
  matrix, scikit-image's ``hed_from_rgb``; "residual" is its DAB channel, which in H&E takes what
  neither stain explains — the strong green/blue absorption of packed red cells);
- colour statistics of the tissue pixels: means and percentiles in RGB, HSV and CIE Lab;
- area fractions of the tissue from stain thresholds: red cells, fibrin / platelets, nucleated cells
  (white cells), the rest — the composition that separates cardioembolic from atherosclerotic clots;
- texture: grey-level co-occurrence (GLCM) statistics at two distances and a uniform-LBP histogram.

Every feature is named (``feature_names``, plugin API 2.1), so ``features.json`` and a MIL run's
``config.json`` say what each column is. The full list and the thresholds: :mod:`._features`.

Why a fixed stain matrix and not one fitted per tile (Macenko): a fit on one small tile is unstable,
fails on tiles that are mostly glass, and would make the same colour read differently in two tiles;
stain differences between labs are removed per slide instead (``clotclf embed --stain-normalise``).
So a blank tile needs no stain matrix and is not an error: it has a defined result — with fewer
than ``min_tissue_pixels`` tissue pixels, the statistics are taken over all its pixels (glass
colours, zero area fractions) and ``tissue_fraction`` says how little tissue it held.

It receives raw pixels: its declared normalisation is the identity (mean 0, std 1), so the core's
``(x / 255 - mean) / std`` hands it ``x / 255``. Importing this module imports no torch.
"""

from __future__ import annotations

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl

CLOTCLF_PLUGIN_API = ">=2.1,<3"


class CompositionOptions(Options):
    tissue_od: float = Field(0.3, gt=0.0, le=3.0, description="a pixel is tissue when its optical density summed over R, G, B exceeds this (glass ~0.15, pale fibrin ~0.6)")
    min_tissue_pixels: int = Field(64, ge=1, le=1_000_000, description="fewer tissue pixels: statistics over the whole tile (a blank tile's defined result)")
    nucleus_h: float = Field(0.6, gt=0.0, le=5.0, description="haematoxylin density (skimage HED x 10) above which a pixel is a nucleus (nucleated cell)")
    red_cell_residual: float = Field(0.55, gt=0.0, le=5.0, description="residual (DAB) density (skimage HED x 10) above which a non-nuclear pixel is a red cell")
    fibrin_eosin: float = Field(0.12, gt=0.0, le=5.0, description="eosin density (skimage HED x 10) above which a pixel that is neither nucleus nor red cell is fibrin / platelets")
    glcm_levels: int = Field(32, ge=8, le=256, description="grey levels of the co-occurrence matrices")


def build(opts: CompositionOptions):
    from ._module import CompositionEncoder

    return CompositionEncoder(opts)


@hookimpl
def clotclf_backbones():
    return [ComponentSpec(
        "backbone", "composition",
        "Named clot-composition features per tile (H/E/residual stains, colour, red-cell/fibrin/nucleus fractions, "
        "GLCM/LBP texture); no weights, CPU",
        CompositionOptions, build)]
