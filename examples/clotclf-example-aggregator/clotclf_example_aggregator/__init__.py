"""Example third-party aggregator: ``topk`` multiple-instance pooling, written from docs/plugins.md alone.

This module is what the entry point names (docs/plugins.md, 2.1). It stays light — no torch import —
because clotclf imports it at start-up to list plugins; the module itself is built by :func:`build`
from ``_net.py`` (2.2). It imports only the public plugin API, ``clotclf_core.plugin``.
"""

from __future__ import annotations

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl

#: the clotclf plugin-API versions this plugin was written for (docs/plugins.md, 2.6)
CLOTCLF_PLUGIN_API = ">=2.0,<3"


class TopKOptions(Options):
    # bounded: a config.json from someone else's model is validated by this model too (2.2)
    k: int = Field(4, ge=1, le=10_000, description="tiles pooled per bag (all real tiles when a bag has fewer)")
    hidden: int = Field(128, gt=0, le=4096, description="width of the per-tile embedding")


def build(opts: TopKOptions, in_features: int, num_classes: int):
    """The aggregator factory: ``(opts, in_features, num_classes) -> torch.nn.Module`` (2.3)."""
    from ._net import TopKPool

    return TopKPool(in_features, num_classes, opts.k, opts.hidden)


@hookimpl
def clotclf_aggregators():
    return [
        ComponentSpec(
            "aggregator", "topk", "Softmax-weighted mean of the k best-scoring tiles (example third-party plugin)",
            TopKOptions, build,
        )
    ]
