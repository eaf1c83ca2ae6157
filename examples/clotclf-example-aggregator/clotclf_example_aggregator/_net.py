"""The ``topk`` module, following the aggregator contract of docs/plugins.md (2.3):
bags (B, N, F) + mask (B, N) -> logits (B, C), and with ``return_attention=True`` (logits, attention (B, N)).

Padded positions change nothing (they rank last and get weight 0), a bag of one tile and a batch of
one bag work (no batch norm), and a bag with no real tile gives the classifier's bias: finite, no
NaN forward or backward (``masked_softmax`` gives it all-zero weights).
"""

from __future__ import annotations

import torch
from torch import nn

from clotclf_core.plugin.masked import masked_softmax


class TopKPool(nn.Module):
    #: the contract: whether forward(..., return_attention=True) gives attention weights
    has_attention = True

    def __init__(self, in_features: int, num_classes: int, k: int, hidden: int):
        super().__init__()
        self.k = k
        self.embed = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.score = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, bags: torch.Tensor, mask: torch.Tensor, return_attention: bool = False):
        h = self.embed(bags)  # (B, N, H)
        scores = self.score(h).squeeze(-1)  # (B, N)
        ranked = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # padded tiles rank last
        chosen = ranked.topk(min(self.k, bags.shape[1]), dim=1).indices  # (B, k)
        # softmax over the chosen real tiles (a short bag's padded picks get 0), scattered back to (B, N):
        # non-negative, 0 where padded, summing to 1 over each bag's real tiles (0 for an empty bag)
        picked = masked_softmax(scores.gather(1, chosen), mask.gather(1, chosen))
        weights = torch.zeros_like(scores).scatter(1, chosen, picked)
        pooled = torch.bmm(weights.unsqueeze(1).to(h.dtype), h).squeeze(1)
        logits = self.classifier(pooled)
        return (logits, weights) if return_attention else logits
