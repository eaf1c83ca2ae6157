"""TransMIL (Shao et al., "TransMIL: Transformer based Correlated Multiple Instance Learning for
Whole Slide Image Classification", NeurIPS 2021), Algorithm 2, with exact masked attention.

Per bag of n real tiles: h = ReLU(W x) (n, d); squared to s = ceil(sqrt(n)) x s tokens by repeating
its first s*s - n tokens (the paper's and torchmil's rule); a class token in front; a transformer
layer; torchmil's PPEG (7x7, 5x5, 3x3 depth-wise convolutions over the s x s grid, per bag); the
other layers; LayerNorm; the class token's score. Bags of a batch are padded to the longest
squared sequence and attention ignores the padding (a key mask), so each bag's result is what it
would be alone. A layer is pre-norm self-attention with a residual, as TransMIL's ``TransLayer``
(the paper uses Nyström attention to approximate exactly this; at a few hundred tiles the exact one
is cheaper).

Attention for heatmaps: the last layer's class-token attention, averaged over heads, on the tile
tokens (a repeated tile's two tokens added), renormalised to sum to 1 over the bag's real tiles.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor, pad: torch.Tensor, weights: bool = False):
        y = self.norm(x)
        out, att = self.attn(y, y, y, key_padding_mask=pad, need_weights=weights, average_attn_weights=True)
        return x + out, att


class TransMIL(nn.Module):
    has_attention = True

    def __init__(self, in_features: int, opts):
        super().__init__()
        from torchmil.models.transmil import PPEG

        self.embed = nn.Sequential(nn.Linear(in_features, opts.dim), nn.ReLU(), nn.Dropout(opts.dropout))
        self.cls_token = nn.Parameter(torch.randn(1, 1, opts.dim))
        self.layers = nn.ModuleList(_Layer(opts.dim, opts.heads, opts.dropout) for _ in range(opts.layers))
        self.ppeg = PPEG(dim=opts.dim)
        self.norm = nn.LayerNorm(opts.dim)
        self.classifier = nn.Linear(opts.dim, 1)

    def forward(self, bags: torch.Tensor, mask: torch.Tensor, return_attention: bool = False):
        b, n, _ = bags.shape
        h = self.embed(bags)  # (B, N, d)
        counts = mask.sum(dim=1).tolist()
        sides = [math.ceil(math.sqrt(c)) for c in counts]
        length = 1 + max(s * s for s in sides)
        seq = h.new_zeros(b, length, h.shape[-1])
        pad = torch.ones(b, length, dtype=torch.bool, device=h.device)
        source = []  # per bag: the tile position (0..N-1) of each of its tokens
        for i, (c, s) in enumerate(zip(counts, sides)):
            real = mask[i].nonzero().squeeze(1)
            order = torch.cat([real, real[:s * s - c]]) if c else real
            seq[i, 1:1 + len(order)] = h[i, order]
            pad[i, :1 + len(order)] = False
            source.append(order)
        seq[:, 0] = self.cls_token[0, 0]
        x, _ = self.layers[0](seq, pad)
        x = torch.cat([x[:, :1], self._position(x, sides)], dim=1)
        for layer in self.layers[1:-1]:
            x, _ = layer(x, pad)
        x, att = self.layers[-1](x, pad, weights=return_attention)
        score = self.classifier(self.norm(x[:, 0])).squeeze(-1)
        logits = torch.stack([torch.zeros_like(score), score], dim=1)
        if not return_attention:
            return logits
        attention = bags.new_zeros(b, n, dtype=torch.float32)
        for i, order in enumerate(source):
            if len(order):
                attention[i].index_add_(0, order, att[i, 0, 1:1 + len(order)].float())
        attention = attention / attention.sum(dim=1, keepdim=True).clamp(min=1e-12)
        return logits, attention

    def _position(self, x: torch.Tensor, sides: list[int]) -> torch.Tensor:
        """The PPEG of each bag on its own s x s grid (tokens 1..s*s); padding tokens left as they are."""
        tokens = x[:, 1:].clone()
        for s in sorted(set(sides)):
            if s == 0:
                continue
            rows = [i for i, si in enumerate(sides) if si == s]
            part = x[rows, :1 + s * s]
            tokens[rows, :s * s] = self.ppeg(part, s, s)[:, 1:]
        return tokens
