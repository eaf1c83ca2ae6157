"""Example third-party aggregator: ``topk`` multiple-instance pooling.

This module is what the entry point names. It stays light (no torch import): clotclf imports it
at startup to list plugins. The module is built in :func:`build`.
"""

from __future__ import annotations

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl


class TopKOptions(Options):
    k: int = Field(4, ge=1, description="tiles averaged per bag (all real tiles when a bag has fewer)")
    hidden: int = Field(128, gt=0, description="width of the per-tile embedding")


def build(opts: TopKOptions, in_features: int, num_classes: int):
    from ._net import TopKPool

    return TopKPool(in_features, num_classes, opts.k, opts.hidden)


@hookimpl
def clotclf_aggregators():
    return [ComponentSpec("aggregator", "topk", "Softmax-weighted mean of the k best-scoring tiles (example third-party plugin)", TopKOptions, build)]
