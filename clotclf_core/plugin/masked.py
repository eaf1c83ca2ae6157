"""Masked reductions over bags of tiles for aggregators: padded positions never count, an empty bag
gives zeros (never NaN), in the forward and the backward pass."""

from __future__ import annotations

import torch


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores`` (B, N) over the positions where ``mask`` (B, N) is True.

    Padded positions get exactly 0; a bag with no real tile gets all zeros (never NaN, in the
    forward or the backward pass: masked scores are the dtype's lowest finite value, not -inf).
    """
    low = torch.finfo(scores.dtype).min
    weights = torch.softmax(scores.masked_fill(~mask, low), dim=-1)
    return weights * mask.to(weights.dtype)


def masked_mean(bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tiles of each bag: (B, N, F), (B, N) -> (B, F); zeros for an empty bag."""
    w = mask.to(bags.dtype).unsqueeze(-1)
    return (bags * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
