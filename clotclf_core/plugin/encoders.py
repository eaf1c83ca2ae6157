"""What a backbone that is a published tile encoder says about itself: :class:`EncoderInfo`, put in
its spec as ``extra["encoder"]`` (docs/plugins.md, 2.2).

``clotclf list-encoders`` lists every backbone that has one (the built-in zoo: ``uni2-h``,
``virchow2``, ``phikon``…), ``clotclf embed`` compares its ``um_per_px`` with the TileSet's and
warns beyond :data:`SCALE_TOLERANCE` (:meth:`EncoderInfo.scale_problem`), and the registry refuses
to publish a model that carries weights whose licence forbids it (``redistribution``). Each value
comes from the model's own card or code; ``source`` says where it was read.

Pooling, the one choice every token encoder leaves open, has four names (:data:`POOLINGS`); a preset
declares the ones it offers and its default, and the run records the one used.

Light: pydantic only.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: how tile features are pooled from an encoder's output
POOLINGS: dict[str, str] = {
    "cls": "the class token",
    "cls_mean": "the class token followed by the mean of the patch tokens (twice the width)",
    "mean": "the mean of the patch tokens (a CNN: its global average pool)",
    "pooler": "the model's own pooler output",
}
#: ``clotclf embed`` warns when the TileSet's microns per pixel and the encoder's differ by more than this factor
SCALE_TOLERANCE = 1.5

Pooling = Literal["cls", "cls_mean", "mean", "pooler"]


class EncoderInfo(BaseModel):
    """A published tile encoder: where its weights are, what it takes and gives, under which terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str = Field(..., description="the Hugging Face Hub repo of the weights (ORG/NAME)")
    loader: str = Field(..., description="what loads it: timm, transformers, or a pre-training run")
    embedding_dim: int = Field(..., gt=0, description="features per tile with the default pooling")
    input_size: int = Field(..., gt=0, description="the side in pixels the weights were trained at")
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    um_per_px: float | None = Field(None, gt=0, description="microns per pixel the weights were trained at (None: unknown)")
    um_per_px_range: tuple[float, float] | None = Field(
        None, description="trained at several magnifications: the smallest and largest microns per pixel")
    licence: str
    gated: bool | None = Field(None, description="whether the Hub repo asks for an accepted licence and a token (None: not verified)")
    redistribution: Literal["yes", "no", "unknown"] = Field(
        "unknown", description="whether the licence lets a model carrying these weights be published")
    remote_code: bool = Field(False, description="its loader runs the repo's own Python code (trust_remote_code)")
    pooling: Pooling = "cls"
    poolings: tuple[Pooling, ...] = ("cls",)
    citation: str = ""
    source: str = Field("", description="where the recipe (options, pooling, normalisation, scale) was read")
    notes: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> EncoderInfo:
        if self.pooling not in self.poolings:
            raise ValueError(f"pooling {self.pooling!r} is not one of the poolings {self.poolings}")
        if self.um_per_px_range is not None and not 0 < self.um_per_px_range[0] <= self.um_per_px_range[1]:
            raise ValueError(f"um_per_px_range {self.um_per_px_range} must be (smallest, largest), both positive")
        return self

    @property
    def tile_um(self) -> float | None:
        """The tile side in microns that matches the encoder: its input size at its microns per pixel."""
        return round(self.input_size * self.um_per_px, 3) if self.um_per_px else None

    def tile_command(self, slides: str = "SLIDES", out: str = "TILES") -> str | None:
        """The ``clotclf tile`` command whose tiles the encoder sees at its own scale."""
        if self.tile_um is None:
            return None
        return f"clotclf tile {slides} --out {out} --tile-um {self.tile_um:g} --train-size {self.input_size}"

    def scale_problem(self, um_per_px: float | None) -> str | None:
        """Why tiles at ``um_per_px`` (microns per cached pixel, as the encoder sees them once resized
        to its input) are at another scale than the encoder was trained at; ``None`` when they are
        within :data:`SCALE_TOLERANCE` (or either scale is unknown)."""
        if not um_per_px or not self.um_per_px or not math.isfinite(um_per_px):
            return None
        low, high = self.um_per_px_range or (self.um_per_px, self.um_per_px)
        if low / SCALE_TOLERANCE <= um_per_px <= high * SCALE_TOLERANCE:
            return None
        ratio = um_per_px / self.um_per_px
        trained = (f"{low:g}-{high:g} um/px" if self.um_per_px_range else f"{self.um_per_px:g} um/px")
        return (f"the tiles reach the encoder at {um_per_px:.3g} um/px, {ratio:.2g}x the scale it was trained at "
                f"({trained}): its features may mean little. Tile at its scale: {self.tile_command()}")


def encoder_info(extra: dict) -> EncoderInfo | None:
    """The :class:`EncoderInfo` in a spec's ``extra`` (``None`` when it has none)."""
    info = extra.get("encoder") if isinstance(extra, dict) else None
    if info is None or isinstance(info, EncoderInfo):
        return info
    return EncoderInfo.model_validate(info)


def pool_tokens(tokens, pooling: str, num_prefix_tokens: int):
    """Tile features from a token encoder's output ``tokens`` (B, T, D), whose first
    ``num_prefix_tokens`` are the class token and any register tokens (timm's ``num_prefix_tokens``;
    never a literal 1 or 5): ``cls`` -> (B, D), ``mean`` of the patch tokens -> (B, D), ``cls_mean``
    -> (B, 2D). Imports torch when called."""
    import torch

    if pooling == "cls":
        return tokens[:, 0]
    patches = tokens[:, num_prefix_tokens:].mean(dim=1)
    if pooling == "mean":
        return patches
    if pooling == "cls_mean":
        return torch.cat([tokens[:, 0], patches], dim=-1)
    raise ValueError(f"pooling {pooling!r} is not one of cls, mean, cls_mean")
