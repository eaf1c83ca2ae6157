"""The multiple-instance (MIL) model: an aggregator plugin on bags of tiles, with or without a backbone.

:class:`MILClassifier` is what a bag-level run saves and loads (``config.json``'s ``model`` with
``kind: mil``, see :class:`clotclf_core.models.config.ModelConfig`):

- **on features** (``clotclf train --features F --aggregator abmil``): the module is the
  aggregator alone; bags are (B, N, F) float tile features of a frozen encoder, which the config
  records (``model.encoder``) but whose weights are **not** part of the model (foundation-model
  licences forbid redistributing them; ``clotclf predict`` rebuilds the encoder from the record);
- **end to end** (``clotclf train --tiles T --backbone cct --aggregator abmil``): a backbone plugin
  turns each tile of a bag into features and is trained with the aggregator; bags are
  (B, N, 3, S, S) normalised images.

Either way the mask (B, N) says which positions are real tiles; padded positions are never fed
to the backbone (so BatchNorm statistics never see them) and get zero attention.

**Standardised features** (``config.standardise``, on features only): every feature is shifted and
scaled by the mean and standard deviation of the training patients' tiles of the fold
(:func:`clotclf_core.features.bags.fit_standardisation`), before the aggregator. The two vectors
are buffers of the model (``feature_mean``, ``feature_std``), saved in ``model.safetensors`` with
the weights: covered by the weights' sha256, pushed and pulled with them, restored with a
checkpoint, and applied by :meth:`MILClassifier.pool`, the one path every consumer (training,
evaluate, predict, heatmaps) takes from features to logits.

Imports torch; :mod:`clotclf_core.models.build` builds it (``build_model`` asks the config's ``form``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clotclf_core.models.aggregate import build_aggregator, run_aggregator, run_for_training
from clotclf_core.models.config import ModelConfig
from clotclf_core.plugin.errors import ClotclfError, PluginError


class MILClassifier(nn.Module):
    """Bags (+ mask) -> slide logits (B, C); ``return_attention=True`` also gives attention (B, N) or None."""

    def __init__(self, aggregator: nn.Module, config: ModelConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator
        self.config = config
        #: which plugin / distribution / version provided each component (saved in config.json)
        self.plugins: dict[str, Any] = {}
        if config.standardise:  # identity until the training patients' statistics are set
            n = config.encoder.num_features
            self.register_buffer("feature_mean", torch.zeros(n))
            self.register_buffer("feature_std", torch.ones(n))

    @property
    def standardises(self) -> bool:
        """Whether stored features are standardised with the training patients' statistics."""
        return bool(self.config.standardise)

    def set_standardisation(self, mean: Any, std: Any) -> None:
        """Store the per-feature mean and standard deviation (F,) fitted on the training patients."""
        if not self.standardises:
            raise PluginError("this MIL model was built without feature standardisation (config.standardise is false)")
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=self.feature_mean.dtype))
        self.feature_std.copy_(torch.as_tensor(std, dtype=self.feature_std.dtype))

    def pool(self, feats: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False):
        """Tile features (B, N, F) + mask -> ``(logits, attention or None)``: standardised first when the
        model stores statistics (padded positions stay zero), then the aggregator."""
        return run_aggregator(self.aggregator, self._standardised(feats, mask), mask, return_attention)

    def _standardised(self, feats: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.standardises:
            return feats
        z = (feats - self.feature_mean.to(feats.dtype)) / self.feature_std.to(feats.dtype)
        return z if mask is None else z * mask.unsqueeze(-1).to(z.dtype)

    @property
    def labels(self) -> list[str]:
        return list(self.config.labels)

    @property
    def has_attention(self) -> bool:
        return bool(getattr(self.aggregator, "has_attention", False))

    def tile_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised tile images (n, 3, S, S) -> features (n, F) (end to end only)."""
        if self.backbone is None:
            raise PluginError("this MIL model works on features of a frozen encoder; it has no backbone of its own")
        return self.backbone(images)

    def forward(self, bags: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False,
                targets: torch.Tensor | None = None):
        """Logits (B, C) (with ``return_attention``: and attention). With ``targets`` (the training
        step): ``(logits, extra)``, the aggregator's own loss term or None (plugin API 2.1)."""
        if self.backbone is not None:  # (B, N, 3, S, S) images -> (B, N, F) features, real tiles only
            b, n = bags.shape[:2]
            if mask is None:
                mask = torch.ones(b, n, dtype=torch.bool, device=bags.device)
            flat = mask.reshape(-1)
            feats = self.backbone(bags.reshape(b * n, *bags.shape[2:])[flat])
            full = feats.new_zeros(b * n, feats.shape[-1])
            full[flat] = feats
            bags = full.view(b, n, -1)
        if targets is not None:
            return run_for_training(self.aggregator, self._standardised(bags, mask), mask, targets)
        logits, attention = self.pool(bags, mask, return_attention)
        return (logits, attention) if return_attention else logits

    def instance_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Each tile alone as a bag of one: (n, F) features -> (n, C) logits (a per-tile class score
        for heatmaps; for attention pooling it is the classifier applied to that tile's embedding)."""
        logits, _ = self.pool(feats.unsqueeze(1), None)
        return logits


def build_mil(cfg: ModelConfig, specs: dict[str, Any], options: dict[str, Any], backbone: nn.Module | None) -> MILClassifier:
    """The MIL model of ``cfg`` from resolved components (``backbone`` already built, or None on features)."""
    on_features = cfg.form.on_features
    in_features = cfg.encoder.num_features if on_features else getattr(backbone, "num_features", None)
    if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features <= 0:
        raise PluginError(f"the MIL model's {'encoder' if on_features else 'backbone'} has no positive "
                          "integer num_features to size the aggregator with")
    aggregator = build_aggregator(cfg.aggregator, options["aggregator"], in_features, cfg.num_classes,
                                  spec=specs["aggregator"])
    return MILClassifier(aggregator, cfg, backbone)


#: ``--standardise`` of ``clotclf evaluate`` / ``predict``: what the user expects of a model
STANDARDISE_CHOICES = ("auto", "on", "off")


def check_standardise_option(model: nn.Module, wanted: str, ref: str) -> None:
    """``--standardise on|off`` at evaluate / predict time asserts what ``model`` does (its stored
    statistics are part of it and always applied; ``auto`` accepts either): a mismatch is one clear error."""
    if wanted == "auto":
        return
    if wanted not in STANDARDISE_CHOICES:
        raise ClotclfError(f"--standardise must be one of {', '.join(STANDARDISE_CHOICES)}, got {wanted!r}")
    form = model.config.form
    if not form.on_features:
        raise ClotclfError(f"--standardise {wanted}: model '{ref}' is {'an end-to-end MIL' if form.is_mil else 'a tile-level'} "
                          "model, which reads tile images, not feature bags: leave --standardise out")
    if wanted == "on" and not model.standardises:
        raise ClotclfError(f"--standardise on: model '{ref}' stores no standardisation statistics (it was trained with "
                          "--standardise off, or by an older clotclf), so its features cannot be standardised the way "
                          "it was trained: leave --standardise out, or train it again with --standardise on")
    if wanted == "off" and model.standardises:
        raise ClotclfError(f"--standardise off: model '{ref}' was trained on standardised features and stores their "
                          "statistics (part of the model, always applied): leave --standardise out, or train a model with "
                          "--standardise off")
