"""More multiple-instance aggregators, through torchmil (Apache-2.0): ``transmil``, ``dsmil``, ``clam-sb``.

torchmil's models have bugs with padded bags (checked by running it, torchmil 1.0.2), so each is
wrapped or fixed to meet clotclf's aggregator contract (padding changes nothing, an empty bag gives
finite logits, attention >= 0 summing to 1 over the real tiles):

- ``dsmil`` (Li, Li & Eliceiri, CVPR 2021): torchmil's ``DSMIL`` layers (instance classifier, query /
  value networks, bag classifier) with the forward pass written again, because torchmil picks the
  critical instance among padded positions too. Prediction: the mean of the bag score and the
  critical instance's score (the paper's and torchmil's ``predict``); the critical-instance score
  also gets its own loss (``auxiliary_loss``, weighted by ``max_instance_weight``).
- ``clam-sb`` (Lu et al., Nat. Biomed. Eng. 2021): torchmil's ``CLAM_SB`` (attention pooling and
  the two instance classifiers) behind CLAM's 1-layer projection (``hidden``, dropout), with the
  instance-clustering loss written again (torchmil's ignores the mask, and its default smooth-SVM
  loss gets wrong-shaped targets and raises on confident logits): the ``k_sample`` most- and
  least-attended real tiles, cross entropy (CLAM's ``--inst_loss ce``), in- and out-of-class
  classifiers as CLAM does for subtyping (CE vs LAA is a subtyping task). Its loss enters training
  through ``auxiliary_loss``.
- ``transmil`` (Shao et al., NeurIPS 2021): written from the paper, with torchmil's ``PPEG`` (the
  pyramid position encoding). torchmil's ``TransMIL`` takes no mask (padding a bag changes its
  output) and its Nyström attention costs more than exact attention on bags of a few hundred
  tiles (1.1 s per 64-tile bag forward + backward at 512 wide on this CPU): here each bag is squared
  as in the paper (its first tiles repeated up to the next square), the bags are padded and
  attention is exact with a key mask, so a bag's result does not depend on its batch.

All three are binary (one score per bag, the class probability its sigmoid): they refuse a run with
other than two labels. Importing this module imports no torch; the factories do.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from clotclf_core.plugin import ComponentSpec, ConfigError, Options, hookimpl

CLOTCLF_PLUGIN_API = ">=2.1,<3"


class TransMILOptions(Options):
    dim: int = Field(512, ge=8, le=4096, description="width of the tile embedding and the transformer (the paper: 512)")
    heads: int = Field(8, ge=1, le=64, description="attention heads (must divide dim)")
    layers: int = Field(2, ge=2, le=12, description="transformer layers; the position encoding sits after the first")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout in attention and on the tile embedding")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self


class DSMILOptions(Options):
    attention_dim: int = Field(128, ge=1, le=4096, description="width of the queries")
    nonlinear_q: bool = Field(True, description="query network Linear-ReLU-Linear-Tanh (the paper's); false: one linear layer")
    nonlinear_v: bool = Field(False, description="value network Dropout-Linear-ReLU; false: the features themselves (the paper's default)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout of the value network (with nonlinear_v)")
    max_instance_weight: float = Field(0.5, ge=0.0, le=10.0, description="weight of the critical instance's own loss added in training (0: none)")


class CLAMOptions(Options):
    hidden: int = Field(512, ge=1, le=4096, description="width of CLAM's tile projection (Linear-ReLU-Dropout)")
    attention_dim: int = Field(256, ge=1, le=4096, description="width of the attention network")
    gated: bool = Field(True, description="gated attention (CLAM's default)")
    dropout: float = Field(0.25, ge=0.0, lt=1.0, description="dropout after the tile projection")
    k_sample: int = Field(8, ge=1, le=512, description="most- and least-attended tiles per bag for the instance loss (fewer in a smaller bag)")
    bag_weight: float = Field(0.7, gt=0.0, le=1.0, description="CLAM's weight of the bag loss against the instance loss: "
                                                                 "the instance loss is added times (1 - bag_weight) / bag_weight")


def _binary(name: str, num_classes: int) -> None:
    if num_classes != 2:
        raise ConfigError(f"aggregator '{name}' (torchmil) predicts two classes, one score per bag; this run has "
                          f"{num_classes} labels: use abmil or mean, or two labels")


def build_transmil(opts: TransMILOptions, in_features: int, num_classes: int):
    _binary("transmil", num_classes)
    from ._transmil import TransMIL

    return TransMIL(in_features, opts)


def build_dsmil(opts: DSMILOptions, in_features: int, num_classes: int):
    _binary("dsmil", num_classes)
    from ._nets import DSMILAggregator

    return DSMILAggregator(in_features, opts)


def build_clam(opts: CLAMOptions, in_features: int, num_classes: int):
    _binary("clam-sb", num_classes)
    from ._nets import CLAMAggregator

    return CLAMAggregator(in_features, opts)


@hookimpl
def clotclf_aggregators():
    return [
        ComponentSpec("aggregator", "transmil", "TransMIL (Shao et al. 2021): transformer over the tiles with a position "
                      "encoding, exact masked attention; class-token attention for heatmaps", TransMILOptions, build_transmil),
        ComponentSpec("aggregator", "dsmil", "DSMIL (Li et al. 2021, torchmil layers): critical instance + attention to it; "
                      "the critical instance's own loss in training", DSMILOptions, build_dsmil),
        ComponentSpec("aggregator", "clam-sb", "CLAM single-branch (Lu et al. 2021, torchmil layers): gated attention + "
                      "instance-clustering loss in training", CLAMOptions, build_clam),
    ]
