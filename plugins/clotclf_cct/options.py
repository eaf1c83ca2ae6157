"""CCT variants from the paper, the options users type, and the shape arithmetic to check them.

This module is light (pydantic only, no torch) so options are validated before anything is
built: a bad combination — ``embed_dim`` not divisible by ``num_heads``, an ``img_size`` the
tokenizer cannot read — fails with a message naming the options, not a torch shape error.

Variant names follow the paper: ``cct_<layers>_<kernel>x<conv layers>_<image size>``. The
tokenizer settings of each kernel size are the reference implementation's: kernel 7 -> stride 2,
padding 3; kernel 3 -> stride 1, padding 1. Every conv is followed by ReLU and a 3x3 max-pool
with stride 2 and padding 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from clotclf_core.plugin import Options

POOL_KERNEL, POOL_STRIDE, POOL_PADDING = 3, 2, 1
#: channels of the tokenizer's intermediate conv layers (the last one outputs embed_dim)
TOKENIZER_HIDDEN = 64


@dataclass(frozen=True)
class CCTArch:
    """Every number needed to build one CCT (a variant after the user's overrides)."""

    img_size: int
    num_layers: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float
    kernel_size: int
    n_conv_layers: int
    stride: int
    padding: int
    positional_embedding: str = "learnable"
    dropout: float = 0.0
    attention_dropout: float = 0.1
    drop_path_rate: float = 0.1

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


def _variant(layers: int, kernel: int, convs: int, img: int) -> CCTArch:
    """The paper's sizes: CCT-2/4 are 128 wide, CCT-6/7 256, CCT-14 384."""
    embed, heads, ratio = {2: (128, 2, 1.0), 4: (128, 2, 1.0), 6: (256, 4, 2.0), 7: (256, 4, 2.0), 14: (384, 6, 3.0)}[layers]
    stride, padding = (2, 3) if kernel == 7 else (1, 1)
    return CCTArch(img, layers, embed, heads, ratio, kernel, convs, stride, padding)


VARIANTS: dict[str, CCTArch] = {
    "cct_2_3x2_32": _variant(2, 3, 2, 32),
    "cct_4_3x2_32": _variant(4, 3, 2, 32),
    "cct_6_3x1_32": _variant(6, 3, 1, 32),
    "cct_6_3x2_32": _variant(6, 3, 2, 32),
    "cct_7_3x1_32": _variant(7, 3, 1, 32),
    "cct_7_3x2_32": _variant(7, 3, 2, 32),
    "cct_7_7x2_224": _variant(7, 7, 2, 224),
    "cct_14_7x2_224": _variant(14, 7, 2, 224),
    "cct_14_7x2_384": _variant(14, 7, 2, 384),
}
Variant = Literal[tuple(VARIANTS)]  # type: ignore[valid-type]

#: the paper's own small-data, from-scratch, 224-px configuration (its Flowers-102 model); see CCTOptions
DEFAULT_VARIANT = "cct_7_7x2_224"


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def token_grid(arch: CCTArch) -> int:
    """Tokens per side the tokenizer makes from an ``img_size`` square image (the model checks
    this against a real run of its tokenizer). Raises ValueError when the image is too small."""
    side = arch.img_size
    for layer in range(arch.n_conv_layers):
        if side + 2 * arch.padding < arch.kernel_size:
            raise ValueError(
                f"img_size {arch.img_size} is too small for the tokenizer: conv layer {layer + 1} of "
                f"{arch.n_conv_layers} (kernel_size {arch.kernel_size}, padding {arch.padding}) gets a "
                f"{side}-pixel side; use a larger img_size, fewer n_conv_layers or a smaller kernel_size"
            )
        side = _out(_out(side, arch.kernel_size, arch.stride, arch.padding), POOL_KERNEL, POOL_STRIDE, POOL_PADDING)
    return side


class CCTOptions(Options):
    """A named variant, optionally with single numbers overridden (None = the variant's value).

    Default ``cct_7_7x2_224``: no CCT weights are reachable, so the model trains from scratch
    on a small cohort (STRIP AI: 754 slides) — the setting the paper's CCT-7/7x2 was designed
    for (Flowers-102 from scratch at 224 px), at a fifth of CCT-14's 22M parameters.
    """

    variant: Variant = Field(DEFAULT_VARIANT, description="paper variant: cct_<layers>_<kernel>x<convs>_<img size>")
    img_size: int | None = Field(None, ge=1, description="input side the position embedding is laid out for (None: the variant's)")
    num_layers: int | None = Field(None, ge=1, description="transformer layers (None: the variant's)")
    embed_dim: int | None = Field(None, ge=1, description="token width; a multiple of num_heads (None: the variant's)")
    num_heads: int | None = Field(None, ge=1, description="attention heads (None: the variant's)")
    mlp_ratio: float | None = Field(None, gt=0, description="MLP hidden width / embed_dim (None: the variant's)")
    kernel_size: int | None = Field(None, ge=1, description="tokenizer conv kernel (None: the variant's)")
    n_conv_layers: int | None = Field(None, ge=1, description="tokenizer conv layers, each followed by ReLU + max-pool (None: the variant's)")
    stride: int | None = Field(None, ge=1, description="tokenizer conv stride (None: the variant's)")
    padding: int | None = Field(None, ge=0, description="tokenizer conv padding (None: the variant's, or kernel_size // 2 if kernel_size is set)")
    positional_embedding: Literal["learnable", "sine", "none"] = Field("learnable", description="learnable (trunc-normal init), fixed sinusoidal, or none")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on tokens, attention output and MLP (paper: 0)")
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on attention weights (paper: 0.1)")
    drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0, description="stochastic depth of the last layer, rising linearly from 0 (paper: 0.1)")

    @model_validator(mode="before")
    @classmethod
    def _no_pretrained(cls, data: Any) -> Any:
        if isinstance(data, dict) and "pretrained" in data:
            raise ValueError(
                "cct has no 'pretrained' option: no published CCT weights are reachable, so it trains from "
                "scratch. Remove the option, or use a backbone with pretrained weights (e.g. poolformer)"
            )
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> "CCTOptions":
        arch = self.resolve()
        if arch.embed_dim % arch.num_heads:
            raise ValueError(
                f"embed_dim {arch.embed_dim}{self._origin('embed_dim')} is not divisible by num_heads "
                f"{arch.num_heads}{self._origin('num_heads')}: set embed_dim to a multiple of num_heads (or change num_heads)"
            )
        if arch.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio {arch.mlp_ratio} x embed_dim {arch.embed_dim} leaves an empty MLP: raise mlp_ratio")
        token_grid(arch)
        return self

    def _origin(self, name: str) -> str:
        """`` (from cct_7_7x2_224)`` when option ``name`` was left to the variant, for messages."""
        return f" (from {self.variant})" if getattr(self, name) is None else ""

    def resolve(self) -> CCTArch:
        """The variant with this object's overrides applied."""
        base = VARIANTS[self.variant]
        kernel = self.kernel_size or base.kernel_size
        if self.padding is not None:
            padding = self.padding
        else:
            padding = kernel // 2 if self.kernel_size is not None else base.padding

        def pick(name: str) -> Any:
            value = getattr(self, name)
            return getattr(base, name) if value is None else value

        return CCTArch(
            img_size=pick("img_size"),
            num_layers=pick("num_layers"),
            embed_dim=pick("embed_dim"),
            num_heads=pick("num_heads"),
            mlp_ratio=pick("mlp_ratio"),
            kernel_size=kernel,
            n_conv_layers=pick("n_conv_layers"),
            stride=pick("stride"),
            padding=padding,
            positional_embedding=self.positional_embedding,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            drop_path_rate=self.drop_path_rate,
        )
