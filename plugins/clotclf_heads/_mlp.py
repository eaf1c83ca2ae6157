"""The published MLP head: Linear -> BatchNorm1d -> activation -> Dropout -> Linear."""

from __future__ import annotations

import torch
from torch import nn

_ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class MLPHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int, activation: str, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.act = _ACT[activation]()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        # BatchNorm cannot estimate batch statistics from one sample; a last batch of one
        # (or a single tile at training time) uses the running statistics instead of crashing.
        if self.training and x.shape[0] == 1:
            x = nn.functional.batch_norm(
                x, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, False, 0.0, self.bn.eps
            )
        else:
            x = self.bn(x)
        return self.fc2(self.drop(self.act(x)))
