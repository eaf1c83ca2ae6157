"""The self-supervised methods of ``clotclf pretrain``, assembled from lightly's heads, losses and
momentum helpers (no hand-written DINO or NT-Xent loss): DINO, MoCo v3 and SimCLR.

Each is one :class:`torch.nn.Module` whose ``forward(views)`` returns the loss of a batch — every
forward a step needs in one call, so DistributedDataParallel sees one forward per backward — and
whose state dict is everything a bit-identical resume needs (student, teacher / key encoder,
heads, DINO's centre). What the shared loop cannot know is two methods:
``update_teacher(step, total_steps)`` (the momentum encoder, before each step's forward) and
``after_backward(epoch)`` (DINO keeps its head's last layer frozen for the first epoch(s)).
``backbone`` is the student: what the run saves.

- **DINO** (Caron et al. 2021): student and teacher start equal; teacher = EMA of the student,
  momentum raised from ``momentum`` to 1 by a cosine over the run; the teacher sees the 2 global
  views, the student every view; ``lightly.loss.DINOLoss`` (centre and sharpening).
- **MoCo v3** (Chen, Xie, He 2021): lightly ships no MoCo v3 loss; its contrastive term is the
  paper's ``ctr(q, k) = CE(q kᵀ / τ, arange) · 2τ`` over the batch's other keys, symmetrised, with
  lightly's 3-layer BN projector (``MoCoProjectionHead``) and 2-layer predictor (``BYOLPredictionHead``).
  Keys come from this process's batch (no all-gather under DDP, and plain BatchNorm, not SyncBN).
- **SimCLR** (Chen et al. 2020): ``lightly.loss.NTXentLoss`` (gathered across processes under DDP).
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.training.pretrain_settings import PretrainSettings


def _lightly():
    """lightly's pieces; one clear line when the extra is not installed."""
    try:
        import lightly.loss
        import lightly.models.modules
        import lightly.models.utils
        import lightly.utils.scheduler
    except ImportError as exc:
        from clotclf_core.plugin.errors import ClotclfError

        raise ClotclfError(f"`clotclf pretrain` uses the lightly library, which is not installed ({exc.name}): "
                           "pip install 'clotclf[ssl]'") from None
    return lightly


class SSLMethod(torch.nn.Module):
    """What every method shares: the student ``backbone`` and the momentum schedule."""

    momentum: float | None = None

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone
        self.epoch = 0

    def momentum_at(self, step: int, total_steps: int) -> float:
        return _lightly().utils.scheduler.cosine_schedule(step, max(total_steps, 1), self.momentum, 1.0)

    def update_teacher(self, step: int, total_steps: int) -> None:
        """Move the momentum encoder towards the student (before the step's forward)."""

    def after_backward(self, epoch: int) -> None:
        """Between backward and the optimizer step."""

    def state_for_validation(self) -> dict[str, torch.Tensor]:
        """Buffers a validation forward changes (DINO's centre), to put back after it."""
        return {}


def _frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(module)
    _lightly().models.utils.deactivate_requires_grad(twin)
    return twin


class DINO(SSLMethod):
    def __init__(self, backbone: torch.nn.Module, dim: int, s: "PretrainSettings"):
        super().__init__(backbone)
        lightly = _lightly()
        heads = lightly.models.modules
        with warnings.catch_warnings():  # lightly's head uses torch's deprecated weight_norm
            warnings.simplefilter("ignore", FutureWarning)
            sizes = (dim, s.head_hidden_dim, s.head_bottleneck_dim, s.head_output_dim)
            self.head = heads.DINOProjectionHead(*sizes, freeze_last_layer=s.freeze_last_layer_epochs)
            self.teacher_head = heads.DINOProjectionHead(*sizes)  # weight_norm cannot be deep-copied: load instead
        self.teacher_head.load_state_dict(self.head.state_dict())  # the teacher starts as the student
        lightly.models.utils.deactivate_requires_grad(self.teacher_head)
        self.teacher_backbone = _frozen_copy(backbone)
        self.criterion = lightly.loss.DINOLoss(output_dim=s.head_output_dim, warmup_teacher_temp=s.teacher_temperature,
                                               teacher_temp=s.teacher_temperature, student_temp=s.temperature)
        self.momentum = s.momentum

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
        student = [self.head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student, epoch=self.epoch)

    def update_teacher(self, step: int, total_steps: int) -> None:
        utils = _lightly().models.utils
        m = self.momentum_at(step, total_steps)
        utils.update_momentum(self.backbone, self.teacher_backbone, m=m)
        utils.update_momentum(self.head, self.teacher_head, m=m)

    def after_backward(self, epoch: int) -> None:
        self.head.cancel_last_layer_gradients(current_epoch=epoch)

    def state_for_validation(self) -> dict[str, torch.Tensor]:
        return {"center": self.criterion.center.detach().clone()}


def moco_v3_contrast(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's ``ctr(q, k)``: each query against every key of the batch, its own view's key the
    positive; scaled by 2τ as in the paper's pseudocode."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    logits = q @ k.T / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device)) * 2 * temperature


class MoCoV3(SSLMethod):
    def __init__(self, backbone: torch.nn.Module, dim: int, s: "PretrainSettings"):
        super().__init__(backbone)
        heads = _lightly().models.modules
        self.projection = heads.MoCoProjectionHead(dim, s.head_hidden_dim, s.head_output_dim, num_layers=3, batch_norm=True)
        self.prediction = heads.BYOLPredictionHead(s.head_output_dim, s.head_hidden_dim, s.head_output_dim)
        self.backbone_momentum = _frozen_copy(backbone)
        self.projection_momentum = _frozen_copy(self.projection)
        self.temperature, self.momentum = s.temperature, s.momentum

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x0, x1 = views[0], views[1]
        q0, q1 = (self.prediction(self.projection(self.backbone(x))) for x in (x0, x1))
        with torch.no_grad():
            k0, k1 = (self.projection_momentum(self.backbone_momentum(x)) for x in (x0, x1))
        return moco_v3_contrast(q0, k1, self.temperature) + moco_v3_contrast(q1, k0, self.temperature)

    def update_teacher(self, step: int, total_steps: int) -> None:
        utils = _lightly().models.utils
        m = self.momentum_at(step, total_steps)
        utils.update_momentum(self.backbone, self.backbone_momentum, m=m)
        utils.update_momentum(self.projection, self.projection_momentum, m=m)


class SimCLR(SSLMethod):
    def __init__(self, backbone: torch.nn.Module, dim: int, s: "PretrainSettings", distributed: bool = False):
        super().__init__(backbone)
        lightly = _lightly()
        self.head = lightly.models.modules.SimCLRProjectionHead(dim, s.head_hidden_dim, s.head_output_dim)
        self.criterion = lightly.loss.NTXentLoss(temperature=s.temperature, gather_distributed=distributed)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.head(self.backbone(x)) for x in views[:2])
        return self.criterion(z0, z1)


def build_method(method: str, backbone: torch.nn.Module, dim: int, s: "PretrainSettings",
                 distributed: bool = False) -> SSLMethod:
    if method == "dino":
        return DINO(backbone, dim, s)
    if method == "mocov3":
        return MoCoV3(backbone, dim, s)
    return SimCLR(backbone, dim, s, distributed)
