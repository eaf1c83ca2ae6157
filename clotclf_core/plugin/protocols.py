"""What the objects a plugin's factories build must provide: every member the core reads.

A member marked *optional* may be left out; the core then uses the default written beside it (it
reads optional members with ``getattr(obj, name, default)``, so nothing else is needed). Everything
else is required. The core talks to components only through these members, so a third-party
component is a drop-in replacement for a built-in one.

Factories by kind (see :class:`clotclf_core.plugin.spec.ComponentSpec`):

- source:     ``factory(opts) -> PatchSource``
- filter:     ``factory(opts) -> PatchFilter``
- backbone:   ``factory(opts) -> torch.nn.Module`` following :class:`Backbone`
- head:       ``factory(opts, in_features, num_classes) -> torch.nn.Module`` following :class:`Head`
- aggregator: ``factory(opts, in_features, num_classes) -> torch.nn.Module`` following :class:`Aggregator`
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch


#: the normalisation a backbone gets when it declares none (ImageNet's, on the 0-1 scale)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- slides / sources


@runtime_checkable
class Slide(Protocol):
    """An open whole-slide image. Coordinates are always level-0 (full resolution) pixels.

    :class:`clotclf_core.plugin.regions.RegionSlide` implements ``read_region``, ``thumbnail``,
    ``level_layout`` and the context manager from one method that yields a level's decoded blocks;
    a source usually subclasses it.

    Required:

    - ``path``: the file it was opened from.
    - ``dimensions``: ``(width, height)`` at level 0.
    - ``mpp``: microns per pixel at level 0, or ``None`` when the file does not say (pass the raw
      value through :func:`clotclf_core.plugin.regions.checked_mpp`: implausible values become None).
    - ``thumbnail``, ``read_region``, ``close``.

    Optional (default in brackets):

    - ``level_dimensions`` [``[dimensions]``] and ``level_downsamples`` [``[1.0]``]: the stored
      pyramid, most detailed first. Tiling reads the most reduced level it can reduce exactly.
    - ``level_layout(level) -> LevelLayout`` [blocks of :data:`~clotclf_core.plugin.regions.GENERIC_BLOCK`
      pixels read through ``read_region``]: the level cut into the pieces the file stores, so that
      tiling decodes each stored tile once; with ``byte_counts`` it also skips glass undecoded.
      It may take a ``block`` keyword (blocks of about that side, where the file allows): tiling asks
      for small blocks where it decodes only the tiles under tissue.
    - ``mpp_note`` [``""``]: why a reported mpp was ignored (recorded per slide).
    - ``stored_thumbnail() -> np.ndarray | None`` [none]: the small picture of the whole slide the file
      stores (RGB uint8), None when it stores none; ``clotclf tile --mask-from thumbnail`` makes the
      tissue mask from it. Raise :class:`~clotclf_core.plugin.errors.SlideReadError` when it is damaged.
    - ``source_name`` [the source's spec name]: recorded per slide in the TileSet.
    - ``__enter__`` / ``__exit__``: ``with source.open(path) as slide:`` (RegionSlide has them).
    """

    path: str
    #: (width, height) at level 0
    dimensions: tuple[int, int]
    #: microns per pixel at level 0, or None when the file does not say
    mpp: float | None

    def thumbnail(self, max_size: int) -> "np.ndarray":
        """RGB uint8 array (H, W, 3) of the whole slide whose longer side is <= ``max_size``."""

    def read_region(self, x: float, y: float, width: float, height: float, downsample: float = 1.0) -> "np.ndarray":
        """RGB uint8 array of the level-0 rectangle (x, y, width, height), resized by 1/downsample.

        The result has shape (round(height / downsample), round(width / downsample), 3).
        Pixels outside the slide are white. Validate the request with
        :func:`clotclf_core.plugin.regions.check_region`.
        """

    def close(self) -> None:
        """Release the file. Called once; the slide is not used afterwards."""


@runtime_checkable
class PatchSource(Protocol):
    """Opens slide files of the formats it understands.

    Required: ``can_open``, ``open``. Optional: ``priority(path) -> float`` [0.0] ranks the
    sources that can open a file when none is named (higher first; the built-in ``tifffile``
    source says 6 for single-level TIFFs, ``openslide`` 10 for pyramids). ``priority`` may raise
    :class:`clotclf_core.plugin.errors.SlideUnusable` (or :class:`~clotclf_core.plugin.errors.SlideDamaged`)
    for a file no reader can use rightly: the automatic choice then stops with that message
    instead of trying the next source. Any other exception in ``can_open`` or ``priority`` only
    rules this source out for the file.
    """

    def can_open(self, path: str) -> bool:
        """Cheap check (extension, magic bytes) whether :meth:`open` is likely to work."""

    def open(self, path: str) -> Slide:
        """Open ``path``; raise :class:`clotclf_core.plugin.errors.SlideReadError` if it cannot be read."""


# --------------------------------------------------------------------------- filters


@runtime_checkable
class PatchFilter(Protocol):
    """Scores a batch of candidate tiles; tiles scoring >= ``threshold`` are kept.

    Tiling calls :meth:`score` on batches (up to ``TileSettings.batch_size`` tiles, never one
    at a time), with the tiles already at the cache resolution ``train_size`` (224 by default):
    the same pixels training will see. Filters run in the order given; a filter only sees the
    tiles every earlier filter kept. Each score is stored in the tile index as ``score_<name>``.

    Required: ``threshold`` (a number), ``score``. Optional:

    - ``describe() -> dict`` [``{}``]: recorded in tileset.json (e.g. the weights' sha256).
    - a ``background`` keyword of ``score``: when ``score`` declares it, it gets the slide's
      estimated glass colour (``(r, g, b)`` ints), so that "glass" can follow the slide
      (grey-green glass, dim scans).
    - ``low_resolution`` [``False``]: ``True`` when its scores mean the same on a low-resolution view
      of the tiles (a share of tissue pixels does; a learnt classifier's does not):
      ``clotclf tile --coords-only`` scores tiles cut from the mask's view and accepts only such filters.
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

    Required: ``num_features`` (F, an int), ``forward``. Optional:

    - ``pretrained_cfg`` [ImageNet mean / std, the TileSet's tile size]: its input, timm's way
      (every timm model already has one): a mapping with ``mean`` and ``std`` (3 floats each, on
      the 0-1 scale) and ``input_size`` ``(3, H, W)``. A backbone with its own weights (a
      foundation encoder) must declare the normalisation they were trained with.
    - ``clotclf_record_options`` [``{}``]: options to record in the run beside the ones the user
      gave (e.g. the Hub commit an ``hf-hub:`` model resolved to), so a rebuild is exact.
    - ``feature_names`` [none] (2.1): ``num_features`` distinct non-empty strings, what each output
      column means (``"eosin_od_mean"``); recorded in ``features.json`` (and so in a MIL run's
      ``config.json``) so that a model card can say which features drive a prediction. For
      hand-made features (the built-in ``composition`` encoder); a network leaves it out.
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
      :func:`clotclf_core.plugin.masked.masked_softmax` and ``masked_mean`` do the masked part.
    - returns logits (B, num_classes); with ``return_attention=True`` a pair ``(logits,
      attention)`` where ``attention`` is float (B, N), non-negative, zero at padded positions
      and summing to 1 over each bag's real tiles — or ``None`` for an aggregator without one.

    Required: ``has_attention`` (True when ``attention`` is returned; attention heatmaps need it),
    ``forward``.

    Optional (2.1): ``auxiliary_loss`` [False]. An aggregator that trains with a loss term of its
    own besides the bag-level one (CLAM's instance clustering, DSMIL's critical-instance loss) sets
    it True; the training step then calls ``forward(bags, mask, targets=targets)`` (``targets``:
    long (B,) class indices) and gets ``(logits, extra)``, ``extra`` a finite scalar tensor (already
    weighted by the aggregator's own option) that is added to the task's loss. Only the training
    step passes ``targets``; scoring, evaluation and prediction call ``forward(bags, mask)`` as above.
    """

    has_attention: bool

    def forward(self, bags: "torch.Tensor", mask: "torch.Tensor", return_attention: bool = False,
                targets: "torch.Tensor | None" = None) -> Any: ...

