"""The classification loss: cross-entropy over class logits, with optional label smoothing.

``CrossEntropyLoss(num_classes, label_smoothing=0.0)(logits [N, C], labels [N]) ->
dict(loss_cls, stat_accuracy)``: ``loss_cls`` is ``torch.nn.functional.cross_entropy`` (mean over the
batch; ``label_smoothing`` as torch defines it, the Inception-v3 / timm recipe value is 0.1), summed
by the trainer; ``stat_accuracy`` is the batch's top-1 accuracy, logged and not summed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detkit.errors import ConfigError

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(nn.Module):
    """Cross-entropy of the logits against the labels (see the module docstring)."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"loss_cls": loss, "stat_accuracy": accuracy}
