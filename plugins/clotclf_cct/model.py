"""Compact Convolutional Transformer (Hassani et al., 2021), in plain torch, as a clotclf backbone.

    image -> conv tokenizer -> + position embedding -> transformer layers -> LayerNorm
          -> sequence pooling (softmax attention over tokens) -> features (B, embed_dim)

The layers follow the reference implementation (SHI-Labs/Compact-Transformers) so parameter
counts match the paper's table. There is no class token: sequence pooling weighs every token,
and :meth:`CCT.forward_with_weights` returns those weights as a map over the token grid — a
free, per-tile saliency picture for histology.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .options import POOL_KERNEL, POOL_PADDING, POOL_STRIDE, TOKENIZER_HIDDEN, CCTArch


class ConvTokenizer(nn.Module):
    """``n_conv_layers`` x (Conv2d without bias -> ReLU -> MaxPool 3/2/1); the last conv outputs
    ``embed_dim`` channels, the others 64. Each spatial position becomes one token."""

    def __init__(self, arch: CCTArch, in_chans: int = 3):
        super().__init__()
        chans = [in_chans] + [TOKENIZER_HIDDEN] * (arch.n_conv_layers - 1) + [arch.embed_dim]
        self.conv_layers = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(chans[i], chans[i + 1], arch.kernel_size, arch.stride, arch.padding, bias=False),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(POOL_KERNEL, POOL_STRIDE, POOL_PADDING),
                )
                for i in range(arch.n_conv_layers)
            ]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> tokens (B, h*w, embed_dim) and the grid (h, w) they came from."""
        x = self.conv_layers(x)
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for whole samples with probability p."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Attention(nn.Module):
    """Multi-head self-attention (qkv without bias, as published) via scaled_dot_product_attention,
    which picks a fused kernel on GPU."""

    def __init__(self, dim: int, num_heads: int, attention_dropout: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        p = self.attention_dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class EncoderLayer(nn.Module):
    """One transformer layer exactly as the reference implementation writes it: attention on
    the pre-normed stream, then the stream itself is normalised (``norm1``) and feeds a GELU
    MLP with a residual. Stochastic depth on both branches."""

    def __init__(self, arch: CCTArch, drop_path: float):
        super().__init__()
        d = arch.embed_dim
        self.pre_norm = nn.LayerNorm(d)
        self.self_attn = Attention(d, arch.num_heads, arch.attention_dropout, arch.dropout)
        self.norm1 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, arch.mlp_hidden)
        self.dropout1 = nn.Dropout(arch.dropout)
        self.linear2 = nn.Linear(arch.mlp_hidden, d)
        self.dropout2 = nn.Dropout(arch.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.self_attn(self.pre_norm(x)))
        x = self.norm1(x)
        mlp = self.linear2(self.dropout1(F.gelu(self.linear1(x))))
        return x + self.drop_path(self.dropout2(mlp))


def drop_path_rates(arch: CCTArch) -> list[float]:
    """Stochastic depth per layer, rising linearly from 0 (first layer) to ``drop_path_rate`` (last)."""
    steps = max(arch.num_layers - 1, 1)
    return [arch.drop_path_rate * i / steps for i in range(arch.num_layers)]


def sinusoidal_embedding(length: int, dim: int) -> torch.Tensor:
    """(1, length, dim) fixed embedding: sin on even channels, cos on odd, wavelengths up to 10^4."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    rate = 10000.0 ** (2 * (torch.arange(dim) // 2).float() / dim)
    pe = pos / rate
    pe[:, 0::2] = torch.sin(pe[:, 0::2])
    pe[:, 1::2] = torch.cos(pe[:, 1::2])
    return pe.unsqueeze(0)


class CCT(nn.Module):
    """CCT backbone: images (B, 3, H, W) -> sequence-pooled features (B, embed_dim).

    The position embedding is laid out for ``arch.img_size``: the token grid is measured by
    running the tokenizer on a dummy image (on the meta device: shapes only, no arithmetic).
    Another input size still works — a learnable embedding is resampled bicubically to the new
    grid (as ViTs do at a new resolution) and a sine one recomputed — with a warning, because
    the model learns best at the size it was built for (set ``img_size`` to your tile size).
    """

    def __init__(self, arch: CCTArch):
        super().__init__()
        self.arch = arch
        self.num_features = arch.embed_dim
        self.tokenizer = ConvTokenizer(arch)
        self.grid_size = self._measure_grid(arch.img_size)
        self.sequence_length = self.grid_size[0] * self.grid_size[1]
        n, d = self.sequence_length, arch.embed_dim
        if arch.positional_embedding == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, n, d))
            nn.init.trunc_normal_(self.pos_embed, std=0.2)
        elif arch.positional_embedding == "sine":  # fixed: a buffer, rebuilt from the config, never saved
            self.register_buffer("pos_embed", sinusoidal_embedding(n, d), persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(arch.dropout)
        self.blocks = nn.ModuleList(EncoderLayer(arch, r) for r in drop_path_rates(arch))
        self.norm = nn.LayerNorm(d)
        self.attention_pool = nn.Linear(d, 1)
        for m in [*self.blocks.modules(), self.norm, self.attention_pool]:
            _init_weights(m)
        self._warned_sizes: set[tuple[int, int]] = set()

    def _measure_grid(self, img_size: int) -> tuple[int, int]:
        meta = {k: v.to("meta") for k, v in self.tokenizer.state_dict().items()}
        dummy = torch.zeros(1, 3, img_size, img_size, device="meta")
        _, grid = torch.func.functional_call(self.tokenizer, meta, (dummy,))
        return int(grid[0]), int(grid[1])

    def _pos_embed_for(self, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        if grid == self.grid_size:
            return self.pos_embed
        if grid not in self._warned_sizes:
            self._warned_sizes.add(grid)
            warnings.warn(
                f"cct was built for {self.arch.img_size}x{self.arch.img_size} images ({self.grid_size[0]}x"
                f"{self.grid_size[1]} tokens) but got a {grid[0]}x{grid[1]}-token input; resampling the position "
                f"embedding. Build it for your input size with --backbone-opt img_size=<side>.",
                stacklevel=3,
            )
        if self.arch.positional_embedding == "sine":
            return sinusoidal_embedding(grid[0] * grid[1], self.arch.embed_dim).to(like)
        gh, gw = self.grid_size
        pe = self.pos_embed.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        pe = F.interpolate(pe, size=grid, mode="bicubic", align_corners=False)
        return pe.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, embed_dim) and the sequence-pooling weights as a (B, h, w) map summing to 1."""
        tokens, grid = self.tokenizer(x)
        if self.pos_embed is not None:
            tokens = tokens + self._pos_embed_for(grid, tokens)
        tokens = self.pos_drop(tokens)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        weights = torch.softmax(self.attention_pool(tokens).squeeze(-1), dim=1)  # (B, N)
        features = torch.bmm(weights.unsqueeze(1), tokens).squeeze(1)
        return features, weights.reshape(x.shape[0], *grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_weights(x)[0]


def _init_weights(m: nn.Module) -> None:
    """The reference initialisation: trunc-normal(0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
