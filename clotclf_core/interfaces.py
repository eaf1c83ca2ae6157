"""What a patch source, slide, patch filter, backbone, head and aggregator must provide.

A plugin hands the core *specs* (:class:`ComponentSpec`): light metadata plus a factory.
Importing a spec must not import torch, timm or openslide; the factory does the heavy
imports when the component is built.

The objects the factories return follow the protocols below. The core only ever talks to
components through these protocols, so a third-party component is a drop-in replacement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

Kind = Literal["source", "filter", "backbone", "head", "aggregator"]

#: Every component kind and the hook (in :mod:`clotclf_core.hookspecs`) that provides it. The plugin
#: manager, ``list-plugins``, the name-clash policy and the recorded provenance all read this table:
#: a new kind is one entry here, its hookspec, its protocol below, and (for ``clotclf smoke-test``)
#: one entry in :data:`clotclf_core.smoke.SMOKE_BY_KIND`.
KIND_HOOKS: dict[str, str] = {
    "source": "clotclf_patch_sources",
    "filter": "clotclf_patch_filters",
    "backbone": "clotclf_backbones",
    "head": "clotclf_heads",
    "aggregator": "clotclf_aggregators",
}
KINDS: tuple[str, ...] = tuple(KIND_HOOKS)

#: what a component name may look like: lower case letters, digits, ``.``, ``_``, ``-`` (``/`` and
#: ``:`` are taken by qualified names ``plugin/name`` and filter options ``name:k=v``)
NAME_RULE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NAME_RULE_TEXT = "lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters"


class Options(BaseModel):
    """Base class for a component's options. Unknown option names are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoOptions(Options):
    """For a component that takes no options."""


@dataclass(frozen=True)
class ComponentSpec:
    """Light description of one component a plugin provides.

    - ``kind``: ``source`` | ``filter`` | ``backbone`` | ``head`` | ``aggregator``.
    - ``name``: what users type (``--backbone cct``): :data:`NAME_RULE` (lower case, no ``/`` or ``:``).
    - ``summary``: one line for ``clotclf list-plugins``.
    - ``options``: a pydantic model (subclass :class:`Options`) with a default for every field
      that has a sensible one; ``Field(description=...)`` becomes the help text.
    - ``factory``: builds the component. Signatures by kind:

      * source:   ``factory(opts) -> PatchSource``
      * filter:   ``factory(opts) -> PatchFilter``
      * backbone: ``factory(opts) -> torch.nn.Module`` with ``num_features`` (see :class:`Backbone`)
      * head:     ``factory(opts, in_features: int, num_classes: int) -> torch.nn.Module``
      * aggregator: ``factory(opts, in_features: int, num_classes: int) -> torch.nn.Module``
        (see :class:`Aggregator`)

    The plugin manager checks every spec when the plugin loads (kind, name rule, options subclass
    :class:`Options`, defaults valid, factory callable) and wraps ``factory`` so an exception while
    building names the component and its distribution (:class:`clotclf_core.errors.PluginError`).

    ``extra`` is free-form metadata; keys the core reads: ``extensions`` (sources),
    ``rebuild_options`` (options set when a *saved* model is rebuilt, default
    ``{"pretrained": False}`` for an options model with a ``pretrained`` field: rebuilding never
    downloads pretrained weights, the saved weights replace them anyway).
    """

    kind: str
    name: str
    summary: str
    options: type[Options]
    factory: Callable[..., Any]
    #: filled in by the plugin manager: the plugin (entry point) and distribution providing it
    plugin: str = ""
    distribution: str = ""
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate_options(self, values: dict[str, Any] | None) -> Options:
        """Validate ``values`` against the options model (raises :class:`ConfigError`)."""
        from .config import validate_options

        return validate_options(self, values or {})


# --------------------------------------------------------------------------- slides / sources


@runtime_checkable
class Slide(Protocol):
    """An open whole-slide image. Coordinates are always level-0 (full resolution) pixels."""

    path: str
    #: (width, height) at level 0
    dimensions: tuple[int, int]
    #: microns per pixel at level 0, or None when the file does not say
    mpp: float | None

    def thumbnail(self, max_size: int) -> "np.ndarray":
        """RGB uint8 array (H, W, 3) of the whole slide whose longer side is <= ``max_size``."""

    def read_region(self, x: int, y: int, width: int, height: int, downsample: float = 1.0) -> "np.ndarray":
        """RGB uint8 array of the level-0 rectangle (x, y, width, height), resized by 1/downsample.

        The result has shape (round(height / downsample), round(width / downsample), 3).
        Pixels outside the slide are white.
        """

    def close(self) -> None: ...


@runtime_checkable
class PatchSource(Protocol):
    """Opens slide files of the formats it understands."""

    def can_open(self, path: str) -> bool:
        """Cheap check (extension, magic bytes) whether :meth:`open` is likely to work."""

    def open(self, path: str) -> Slide:
        """Open ``path``; raise :class:`clotclf_core.errors.ClotclfError` if it cannot be read."""


# --------------------------------------------------------------------------- filters


@runtime_checkable
class PatchFilter(Protocol):
    """Scores a batch of candidate tiles; tiles scoring >= ``threshold`` are kept.

    Tiling calls :meth:`score` on batches (up to ``TileSettings.batch_size`` tiles, never one
    at a time), with the tiles already at the cache resolution ``train_size`` (224 by default):
    the same pixels training will see. Filters run in the order given; a filter only sees the
    tiles every earlier filter kept. Each score is stored in the tile index as ``score_<name>``.
    An optional ``describe() -> dict`` (e.g. the weights' sha256) is recorded in tileset.json.
    A filter whose ``score`` takes a ``background`` keyword gets the slide's estimated glass colour
    (``(r, g, b)`` ints), so that "glass" can follow the slide (grey-green glass, dim scans).
    """

    threshold: float

    def score(self, tiles: "np.ndarray") -> "np.ndarray":
        """``tiles``: uint8 (N, S, S, 3) RGB, NHWC, S = train_size. Returns float (N,) finite
        scores, higher = more tissue."""


# --------------------------------------------------------------------------- models


class Backbone(Protocol):
    """A ``torch.nn.Module`` mapping images (B, 3, H, W) to pooled features (B, num_features).

    What it receives: float32 (B, 3, H, W) RGB, ``(pixel / 255 - mean) / std`` per channel, with
    ``mean`` / ``std`` and H = W = the input size it declares (below), or what the run chose.

    Optional declaration of its input, read by :func:`clotclf_core.backbone_input.input_spec`:
    a ``pretrained_cfg`` mapping in timm's style (every timm model already has one) with
    ``mean`` and ``std`` (3 floats each, on the 0-1 scale) and ``input_size`` ``(3, H, W)``.
    Without it clotclf uses the ImageNet mean / std and the TileSet's tile size. A backbone with
    its own weights (a foundation encoder) must declare the normalisation they were trained with.
    """

    num_features: int

    def forward(self, x: "torch.Tensor") -> "torch.Tensor": ...


class Head(Protocol):
    """A ``torch.nn.Module`` mapping features (B, in_features) to logits (B, num_classes)."""

    def forward(self, x: "torch.Tensor") -> "torch.Tensor": ...


class Aggregator(Protocol):
    """A ``torch.nn.Module`` pooling a bag of tile features into one prediction (multiple-instance learning).

    ``forward(bags, mask, return_attention=False)``:

    - ``bags``: float (B, N, F) — B bags (slides or patients) of up to N tiles with F features
      each (``F = in_features``, the encoder's ``num_features``). float32, or bf16 / fp16 under autocast.
    - ``mask``: bool (B, N) — True where a position holds a real tile; bags shorter than N are
      padded and their padded positions must not change the result (zero attention, not counted
      in a mean). A bag may be a single tile (N = 1), and B may be 1 (no batch norm over bags).
      A bag whose mask is all False must give finite logits (no NaN), e.g. the bias alone.
    - returns logits (B, num_classes); with ``return_attention=True`` a pair ``(logits,
      attention)`` where ``attention`` is float (B, N), non-negative, zero at padded positions
      and summing to 1 over each bag's real tiles — or ``None`` for an aggregator without one.

    ``has_attention``: True when ``attention`` is returned (heatmaps of attention need it).
    :func:`clotclf_core.aggregate.run_aggregator` calls an aggregator and checks these shapes.
    """

    has_attention: bool

    def forward(self, bags: "torch.Tensor", mask: "torch.Tensor", return_attention: bool = False) -> Any: ...
