"""Training losses: cross entropy, or the competition metric itself (``--loss weighted_log_loss``).

The STRIP AI metric is the class-balanced log loss: the mean ``-log p(true class)`` within each
class, averaged over the classes with equal weight (:func:`clotclf_core.scoring.metrics.weighted_log_loss`).
:func:`weighted_log_loss` is that formula on a batch, differentiable: every class present in the
batch weighs the same whatever its count, so the 72 % CE majority of STRIP AI cannot dominate the
gradient, and what is minimised is what the headline reports. (``--class-weights balanced``
re-weights cross entropy by the training set's class frequencies instead; the two are not combined.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from clotclf_core.training.settings import TrainSettings


def weighted_log_loss(logits: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
    """Class-balanced log loss of one batch: mean over the classes present of each class's mean
    negative log-likelihood (float32, whatever the logits' dtype)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    onehot = torch.nn.functional.one_hot(targets.long(), logits.shape[1]).to(nll.dtype)
    counts = onehot.sum(dim=0)
    per_class = (onehot * nll.unsqueeze(1)).sum(dim=0) / counts.clamp(min=1)
    return per_class[counts > 0].mean()


def make_loss(s: "TrainSettings", class_weight: "torch.Tensor | None") -> Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]:
    """The loss ``s.loss`` names: ``(logits, targets) -> scalar``."""
    import torch

    if s.loss == "weighted_log_loss":
        return weighted_log_loss
    return torch.nn.CrossEntropyLoss(weight=class_weight, label_smoothing=s.label_smoothing)
