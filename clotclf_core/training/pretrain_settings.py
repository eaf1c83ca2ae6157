"""Every setting of ``clotclf pretrain``: :class:`PretrainSettings`, with each method's published
defaults filled in where the user gave none (:data:`METHOD_DEFAULTS`), so what a run records is
what it ran with.

The fields the shared training loop reads (:class:`clotclf_core.training.loop.Trainer`: ``lr``,
``weight_decay``, ``schedule``, ``warmup_epochs``, ``min_lr``, ``epochs``, ``grad_clip``,
``patience``, ``min_delta``, ``monitor``, ``seed``, ``compile``) have the names and meaning they
have in ``clotclf train``. Light: pydantic only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from clotclf_core.config import StrictModel, load_yaml
from clotclf_core.plugin.errors import ConfigError
from clotclf_core.plugin.spec import format_validation_error

#: each method's recipe (the papers' ViT recipes, with heads sized by these fields): DINO (Caron et
#: al. 2021: lr 5e-4 per 256 images, weight decay 0.04, teacher momentum 0.996 -> 1, student / teacher
#: temperature 0.1 / 0.04, a 65,536-way head with a 256-d bottleneck, gradient clip 3), MoCo v3 (Chen
#: et al. 2021: lr 1.5e-4 per 256, weight decay 0.1, momentum 0.99 -> 1, temperature 0.2, 4,096-wide
#: 3-layer projector and 2-layer predictor to 256), SimCLR (Chen et al. 2020: temperature 0.1 in the
#: paper's large batches; 0.2 here for the small batches of one machine, a 2-layer 2,048 -> 128 head)
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "dino": {"lr": 5e-4, "weight_decay": 0.04, "momentum": 0.996, "temperature": 0.1, "head_hidden_dim": 2048,
             "head_output_dim": 65536, "grad_clip": 3.0},
    "mocov3": {"lr": 1.5e-4, "weight_decay": 0.1, "momentum": 0.99, "temperature": 0.2, "head_hidden_dim": 4096,
               "head_output_dim": 256, "grad_clip": 0.0},
    "simclr": {"lr": 3e-4, "weight_decay": 1e-6, "momentum": None, "temperature": 0.2, "head_hidden_dim": 2048,
               "head_output_dim": 128, "grad_clip": 0.0},
}


class PretrainSettings(StrictModel):
    """Every setting of a pre-training run: a ``clotclf pretrain`` option or a field of its ``--config``."""

    # -- data
    # (not called `tiles`: the shared loop's settings record reads `tiles` as one path)
    tilesets: list[str] = Field(..., min_length=1, description=(
        "TileSets to pre-train on (--tiles, repeatable; labelled or not: labels are never read); one geometry"))
    out: str | None = Field(None, description="run directory (default: runs/pretrain-<method>-<backbone>-<date>-<time>)")
    max_tiles_per_slide: int | None = Field(None, ge=1, description="use at most this many tiles per slide (seeded choice)")
    val_tiles: int = Field(256, ge=0, description=(
        "tiles held out to measure the self-supervised loss each epoch on fixed views (0: none)"))
    # -- model
    backbone: str = Field("timm", description="backbone to pre-train (`clotclf list-plugins --kind backbone`, or run:PATH to continue)")
    backbone_options: dict[str, Any] = Field(default_factory=dict, description="backbone options (`clotclf show-plugin NAME`)")
    input_size: int | None = Field(None, ge=8, description="side of the views in pixels (default: the tiles' side)")
    method: Literal["dino", "mocov3", "simclr"] = Field("dino", description="the self-supervised method (lightly)")
    head_hidden_dim: int | None = Field(None, ge=8, le=65536, description="width of the projection head (default: the method's)")
    head_output_dim: int | None = Field(None, ge=8, le=262144, description="output of the projection head (default: the method's)")
    head_bottleneck_dim: int = Field(256, ge=8, le=4096, description="DINO: bottleneck before the last layer")
    temperature: float | None = Field(None, gt=0, le=10, description="softmax temperature (DINO: the student's; default: the method's)")
    teacher_temperature: float = Field(0.04, gt=0, le=10, description="DINO: the teacher's temperature")
    momentum: float | None = Field(None, ge=0, le=1, description="teacher / key encoder momentum, raised to 1 by a cosine (DINO, MoCo v3)")
    local_views: int = Field(2, ge=0, le=16, description="DINO: small local crops per tile besides the 2 global ones")
    min_scale: float = Field(0.2, gt=0, le=1, description="smallest share of a tile a random crop keeps (DINO: of a global crop)")
    freeze_last_layer_epochs: int = Field(1, ge=0, description="DINO: epochs the head's last layer stays frozen")
    # -- optimisation (the shared loop's names)
    epochs: int = Field(10, ge=1, description="epochs over the tiles")
    batch_size: int = Field(64, ge=2, description="tiles per step (per process under DDP); each gives 2 views (DINO: 2 + local)")
    lr: float | None = Field(None, gt=0, description="AdamW peak learning rate (default: the method's)")
    weight_decay: float | None = Field(None, ge=0, description="AdamW weight decay (default: the method's)")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="LR schedule: cosine with warm-up, or constant")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up length")
    min_lr: float = Field(1e-6, ge=0, description="floor of the cosine schedule")
    grad_clip: float | None = Field(None, ge=0, description="clip the gradient norm to this (0: off; default: the method's)")
    patience: int = Field(0, ge=0, le=0, description="pre-training never stops early; it keeps the last epoch")
    min_delta: float = Field(0.0, ge=0, description="(unused: the last epoch is kept)")
    monitor: Literal["ssl_loss"] = Field("ssl_loss", description="what the history's val_loss is: the self-supervised loss on the held-out tiles")
    # -- runtime
    seed: int = Field(0, description="the one seed everything random is derived from (views, init, order)")
    workers: int = Field(2, ge=0, description="data-loader worker processes (results do not depend on it)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA if available")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    channels_last: bool | Literal["auto"] = Field("auto", description="channels-last memory format (auto: on CUDA)")
    compile: bool = Field(False, description="torch.compile the model for training")

    @model_validator(mode="after")
    def _method_defaults(self) -> "PretrainSettings":
        for key, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, key) is None and value is not None:
                object.__setattr__(self, key, value)
        # (a settings file written by clotclf holds every field, the default local_views too: only another value is refused)
        if self.method != "dino" and self.local_views != type(self).model_fields["local_views"].default:
            raise ValueError(f"local_views is a DINO setting; {self.method} uses two views of each tile")
        return self


def resolve_pretrain_settings(config: str | None = None, overrides: dict[str, Any] | None = None) -> PretrainSettings:
    """YAML fields (``--config``) overridden by the command-line values that were given; the
    TileSet paths made absolute (so ``--resume`` from another folder compares the same folders)."""
    data = load_yaml(config) if config else {}
    data |= {k: v for k, v in (overrides or {}).items() if v is not None and v != ()}
    source = f"config file '{config}'" if config else "pre-training settings"
    try:
        s = PretrainSettings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source) + ". The fields are listed by `clotclf pretrain --help`") from None
    return s.model_copy(update={"tilesets": [str(Path(t).expanduser().resolve()) for t in s.tilesets]})
