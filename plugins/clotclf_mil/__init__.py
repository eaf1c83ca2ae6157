"""Built-in multiple-instance aggregators: ``mean`` and gated-attention ``abmil``.

Both pool a bag of tile features (B, N, F) with a mask (B, N) into slide (or patient) logits
(B, C); see :class:`clotclf_core.plugin.protocols.Aggregator`. ``abmil`` is the gated attention
pooling of Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance Learning" (ICML
2018), written here from the paper's equations; ``mean`` is its mean-pooling baseline with the
same per-tile embedding, so the two differ only in how tiles are weighted.

Importing this module imports no torch; the factories do.
"""

from __future__ import annotations

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl


class MeanOptions(Options):
    hidden: int = Field(256, ge=0, description="width of the per-tile embedding (Linear + ReLU) before the mean; 0: none, a linear layer on the mean feature")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on the tile embeddings and on the pooled feature")


class ABMILOptions(Options):
    hidden: int = Field(256, gt=0, description="width L of the per-tile embedding (Linear + ReLU)")
    attention_dim: int = Field(128, gt=0, description="width D of the attention network")
    gated: bool = Field(True, description="gated attention (tanh x sigmoid, Ilse et al. eq. 9); false: plain tanh attention (eq. 8)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on the tile embeddings and on the pooled feature")


def build_mean(opts: MeanOptions, in_features: int, num_classes: int):
    from ._nets import MeanPool

    return MeanPool(in_features, num_classes, opts.hidden, opts.dropout)


def build_abmil(opts: ABMILOptions, in_features: int, num_classes: int):
    from ._nets import GatedAttentionMIL

    return GatedAttentionMIL(in_features, num_classes, opts.hidden, opts.attention_dim, opts.gated, opts.dropout)


@hookimpl
def clotclf_aggregators():
    return [
        ComponentSpec("aggregator", "mean", "Mean of the tile embeddings, then a linear layer (no attention)", MeanOptions, build_mean),
        ComponentSpec(
            "aggregator", "abmil",
            "Gated attention pooling (Ilse et al. 2018): learnt weight per tile, attention for heatmaps",
            ABMILOptions, build_abmil,
        ),
    ]
