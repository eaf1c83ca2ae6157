"""``dsmil`` and ``clam-sb``: torchmil's layers, masked forward passes and instance losses of our own.

Both return logits ``[0, s]`` for a bag score ``s`` (softmax = sigmoid(s) for the second class), and
with ``targets`` (the training step, plugin API 2.1 ``auxiliary_loss``) ``(logits, extra_loss)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from clotclf_core.plugin.masked import masked_softmax


def _two_class(score: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.zeros_like(score), score], dim=1)


class DSMILAggregator(nn.Module):
    """Dual-stream MIL. Stream 1: instance scores c(x_i); the critical instance m = argmax over the
    bag's *real* tiles. Stream 2: attention a_i = softmax_i(q_i . q_m / sqrt(d)) over the real tiles,
    z = sum_i a_i v_i, bag score b = w z. Score = (b + c(x_m)) / 2."""

    has_attention = True
    auxiliary_loss = True

    def __init__(self, in_features: int, opts):
        super().__init__()
        from torchmil.models import DSMIL

        self.net = DSMIL(in_shape=(in_features,), att_dim=opts.attention_dim, nonlinear_q=opts.nonlinear_q,
                         nonlinear_v=opts.nonlinear_v, dropout=opts.dropout)
        self.max_instance_weight = float(opts.max_instance_weight)

    def forward(self, bags: torch.Tensor, mask: torch.Tensor, return_attention: bool = False,
                targets: torch.Tensor | None = None):
        net = self.net
        inst = net.inst_classifier(bags).squeeze(-1)  # (B, N)
        empty = ~mask.any(dim=1)
        inst_real = inst.masked_fill(~mask, float("-inf"))
        crit = inst_real.argmax(dim=1)  # an empty bag: position 0, its result discarded below
        q = net.q_nn(bags)  # (B, N, D)
        q_crit = q[torch.arange(len(q), device=q.device), crit]  # (B, D)
        scores = torch.einsum("bnd,bd->bn", q, q_crit) / math.sqrt(q.shape[-1])
        attention = masked_softmax(scores, mask)  # zero at padded positions and for an empty bag
        v = net.v_nn(bags)
        z = torch.bmm(attention.unsqueeze(1).to(v.dtype), v.masked_fill(~mask[..., None], 0)).squeeze(1)
        bag = net.bag_classifier(z).squeeze(-1)
        top = torch.where(empty, torch.zeros_like(bag), inst_real.max(dim=1).values)
        logits = _two_class(0.5 * (bag + top))
        if targets is not None:
            extra = logits.new_zeros(())
            if self.max_instance_weight and (~empty).any():
                extra = self.max_instance_weight * F.binary_cross_entropy_with_logits(
                    top[~empty].float(), targets[~empty].float())
            return logits, extra
        return (logits, attention) if return_attention else logits


class CLAMAggregator(nn.Module):
    """CLAM-SB: h_i = Dropout(ReLU(W x_i)); gated attention a = softmax over real tiles; score = w sum_i a_i h_i.
    Instance clustering (training): the bag's class classifier learns its k most-attended tiles as 1
    and its k least-attended as 0; the other class's classifier learns the k most-attended as 0."""

    has_attention = True
    auxiliary_loss = True

    def __init__(self, in_features: int, opts):
        super().__init__()
        from torchmil.models import CLAM_SB

        project = nn.Sequential(nn.Linear(in_features, opts.hidden), nn.ReLU(), nn.Dropout(opts.dropout))
        self.net = CLAM_SB(in_shape=(in_features,), att_dim=opts.attention_dim, gated=opts.gated,
                           k_sample=opts.k_sample, inst_loss_name="BCEWithLogitsLoss", feat_ext=project)
        self.k_sample = int(opts.k_sample)
        self.instance_factor = (1.0 - opts.bag_weight) / opts.bag_weight

    def forward(self, bags: torch.Tensor, mask: torch.Tensor, return_attention: bool = False,
                targets: torch.Tensor | None = None):
        empty = ~mask.any(dim=1)
        # torchmil's softmax gives NaN for a bag without a real tile: such a bag is run as one zero tile
        safe_mask = mask.clone()
        safe_mask[empty, 0] = True
        x = bags.masked_fill(~mask[..., None], 0)
        score, raw, emb = self.net(x, safe_mask, return_att=True, return_emb=True)
        attention = masked_softmax(raw, mask)
        logits = _two_class(score)
        if targets is not None:
            return logits, self.instance_factor * self._instance_loss(raw, emb, mask, targets)
        return (logits, attention) if return_attention else logits

    def _instance_loss(self, raw: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = []
        for i in range(len(raw)):
            n = int(mask[i].sum())
            if n == 0:
                continue
            k = min(self.k_sample, n)
            top = torch.topk(raw[i].masked_fill(~mask[i], float("-inf")), k).indices
            bottom = torch.topk(raw[i].masked_fill(~mask[i], float("inf")), k, largest=False).indices
            label = int(targets[i])
            in_cls, out_cls = self.net.inst_classifiers[label], self.net.inst_classifiers[1 - label]
            chosen = torch.cat([emb[i, top], emb[i, bottom]])
            wanted = torch.cat([torch.ones(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)]).to(raw.device)
            loss_in = F.cross_entropy(in_cls(chosen).float(), wanted)
            loss_out = F.cross_entropy(out_cls(emb[i, top]).float(), torch.zeros(k, dtype=torch.long, device=raw.device))
            losses.append(0.5 * (loss_in + loss_out))  # CLAM averages over its classifiers when subtyping
        return torch.stack(losses).mean() if losses else raw.new_zeros((), dtype=torch.float32)
