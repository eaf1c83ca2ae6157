"""The ``mean`` and ``abmil`` aggregators (torch). Both follow the Aggregator contract:
``forward(bags (B, N, F), mask (B, N) bool, return_attention=False)``."""

from __future__ import annotations

import torch
from torch import nn

from clotclf_core.plugin.masked import masked_mean, masked_softmax


def _embedding(in_features: int, hidden: int, dropout: float) -> nn.Module:
    """Per-tile embedding h_k = ReLU(W x_k + b), the f_psi of Ilse et al."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout))


class MeanPool(nn.Module):
    """z = mean over the bag's real tiles of h_k; logits = W z + b."""

    has_attention = False

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.embed = _embedding(in_features, hidden, dropout) if hidden else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden or in_features, num_classes)

    def forward(self, bags: torch.Tensor, mask: torch.Tensor, return_attention: bool = False):
        pooled = masked_mean(self.embed(bags), mask)
        logits = self.classifier(self.drop(pooled))
        return (logits, None) if return_attention else logits


class GatedAttentionMIL(nn.Module):
    """Attention-based MIL pooling (Ilse, Tomczak & Welling 2018).

    h_k = ReLU(W_e x_k); score_k = w^T (tanh(V h_k) * sigmoid(U h_k))   (gated, eq. 9)
                         or score_k = w^T tanh(V h_k)                      (plain, eq. 8);
    a = softmax over the bag's real tiles of score; z = sum_k a_k h_k; logits = W z + b.
    Padded positions get exactly zero weight (:func:`clotclf_core.plugin.masked.masked_softmax`).
    """

    has_attention = True

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, attention_dim: int = 128,
                 gated: bool = True, dropout: float = 0.1):
        super().__init__()
        self.embed = _embedding(in_features, hidden, dropout)
        self.attention_v = nn.Linear(hidden, attention_dim)  # V
        self.attention_u = nn.Linear(hidden, attention_dim) if gated else None  # U (the gate)
        self.attention_w = nn.Linear(attention_dim, 1)  # w
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, bags: torch.Tensor, mask: torch.Tensor, return_attention: bool = False):
        h = self.embed(bags)  # (B, N, L)
        gate = torch.tanh(self.attention_v(h))
        if self.attention_u is not None:
            gate = gate * torch.sigmoid(self.attention_u(h))
        scores = self.attention_w(gate).squeeze(-1)  # (B, N)
        attention = masked_softmax(scores, mask)
        pooled = torch.bmm(attention.unsqueeze(1).to(h.dtype), h).squeeze(1)  # (B, L)
        logits = self.classifier(self.drop(pooled))
        return (logits, attention) if return_attention else logits
