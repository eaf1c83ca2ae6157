"""CCT backbone: Compact Convolutional Transformer (Hassani et al., 2021, "Escaping the Big
Data Paradigm with Compact Transformers"), written in plain torch.

A convolutional tokenizer replaces ViT's patch embedding and sequence pooling replaces the
class token, which lets a transformer train from scratch on small data sets — the situation of
clot histology, where no CCT weights are available. Variants and options: :mod:`.options`;
the network: :mod:`.model`. Importing this module imports no torch; :func:`build` does.
"""

from __future__ import annotations

from clotclf_core.plugin import ComponentSpec, hookimpl

from .options import DEFAULT_VARIANT, VARIANTS, CCTArch, CCTOptions

__all__ = ["CCTArch", "CCTOptions", "DEFAULT_VARIANT", "VARIANTS", "build"]


def build(opts: CCTOptions):
    """The backbone for validated ``opts``: a :class:`clotclf_cct.model.CCT` returning (B, embed_dim)."""
    from .model import CCT

    return CCT(opts.resolve())


@hookimpl
def clotclf_backbones():
    return [
        ComponentSpec(
            "backbone",
            "cct",
            "Compact Convolutional Transformer (conv tokenizer + sequence pooling), trained from scratch",
            CCTOptions,
            build,
        )
    ]
