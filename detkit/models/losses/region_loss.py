"""The Fast R-CNN multi-task loss of the region classifier: cross-entropy + smooth-L1 on foregrounds.

For ``R`` sampled regions with labels ``u`` (0 = background, ``1..C`` = class + 1), class logits
``[R, C + 1]``, class-specific deltas ``[R, C * 4]`` and regression targets ``v`` ``[R, 4]``
(Girshick, Fast R-CNN, equation 1)::

    loss_cls = (1 / R) * sum_i  -log softmax(logits_i)[u_i]
    loss_box = (lambda / R) * sum_{i : u_i >= 1}  sum_{j in x,y,w,h}  smoothL1_beta(t^{u_i}_ij - v_ij)

    smoothL1_beta(x) = 0.5 x^2 / beta   if |x| < beta,   |x| - 0.5 beta   otherwise

* only the deltas of the ground-truth class ``u_i`` of a foreground count (``[u >= 1]``); backgrounds
  have no box term;
* normalisation: the box term is **summed** over foregrounds and coordinates and divided by the
  number of sampled regions ``R`` (foreground + background), as Fast R-CNN's solver and torchvision's
  ``fastrcnn_loss`` do, not by the number of foregrounds: with 25% foregrounds the box term then
  weighs about a quarter of a per-foreground mean, which is the balance the paper's ``lambda = 1`` was
  tuned with;
* ``beta = 1`` is the paper's smooth-L1 (torchvision uses 1/9 with its weights; both are options).

The returned dict holds ``loss_cls`` and ``loss_box`` (summed by the trainer) and detached
statistics that are logged, not summed: ``stat_num_regions`` (sampled regions in the batch),
``stat_fg_fraction`` (their foreground share), ``stat_accuracy`` (class accuracy over all sampled
regions) and ``stat_fg_accuracy`` (over foregrounds; 0 when there are none).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detkit.errors import ConfigError

__all__ = ["RegionLoss"]


class RegionLoss(nn.Module):
    """Fast R-CNN's classification + box regression loss (see the module docstring).

    Args:
        num_classes: C, without background (the detector passes it).
        beta: the smooth-L1 transition point (1.0: Fast R-CNN; 1/9: torchvision; 0: plain L1).
        cls_weight: weight of ``loss_cls``.
        box_weight: ``lambda``, weight of ``loss_box`` (1 in the paper).
    """

    def __init__(self, num_classes: int, beta: float = 1.0, cls_weight: float = 1.0, box_weight: float = 1.0):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"model.loss.num_classes must be a positive integer, got {num_classes!r}")
        for name, value in (("beta", beta), ("cls_weight", cls_weight), ("box_weight", box_weight)):
            if not float(value) >= 0:
                raise ConfigError(f"model.loss.{name} must be >= 0, got {value!r}")
        self.num_classes = num_classes
        self.beta = float(beta)
        self.cls_weight = float(cls_weight)
        self.box_weight = float(box_weight)

    def forward(self, class_logits: Tensor, box_deltas: Tensor, labels: Tensor,
                regression_targets: Tensor) -> dict[str, Tensor]:
        """``class_logits [R, C + 1]``, ``box_deltas [R, C * 4]``, ``labels [R]`` (0 = background),
        ``regression_targets [R, 4]`` (read for foregrounds only). Returns the loss dict."""
        r = labels.shape[0]
        c = self.num_classes
        if class_logits.shape != (r, c + 1) or box_deltas.shape != (r, c * 4):
            raise ValueError(
                f"RegionLoss: expected class_logits [{r}, {c + 1}] and box_deltas [{r}, {c * 4}] for {r} "
                f"regions and {c} classes, got {tuple(class_logits.shape)} and {tuple(box_deltas.shape)}"
            )
        if regression_targets.shape != (r, 4):
            raise ValueError(
                f"RegionLoss: regression_targets must be [{r}, 4], got {tuple(regression_targets.shape)}")
        # Losses in float32 even under autocast (log-softmax and small deltas lose precision in fp16).
        class_logits, box_deltas = class_logits.float(), box_deltas.float()
        labels = labels.to(class_logits.device, torch.int64)
        if r == 0:
            # No region in the whole batch: zero losses that still connect to the graph.
            zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
            return {"loss_cls": zero, "loss_box": zero.clone(), **self._stats(class_logits, labels)}

        loss_cls = F.cross_entropy(class_logits, labels, reduction="mean")
        fg = (labels > 0).nonzero().squeeze(1)
        deltas_of_class = box_deltas.reshape(r, c, 4)[fg, labels[fg] - 1]
        loss_box = F.smooth_l1_loss(deltas_of_class, regression_targets[fg].to(deltas_of_class),
                                    beta=self.beta, reduction="sum") / r
        return {"loss_cls": self.cls_weight * loss_cls, "loss_box": self.box_weight * loss_box,
                **self._stats(class_logits, labels)}

    @staticmethod
    def _stats(class_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            r = labels.shape[0]
            fg = labels > 0
            correct = class_logits.argmax(dim=1) == labels if r else labels.new_zeros(0, dtype=torch.bool)
            num_fg = int(fg.sum())
            device = class_logits.device
            return {
                "stat_num_regions": torch.tensor(float(r), device=device),
                "stat_fg_fraction": torch.tensor(num_fg / r if r else 0.0, device=device),
                "stat_accuracy": correct.float().mean() if r else torch.zeros((), device=device),
                "stat_fg_accuracy": correct[fg].float().mean() if num_fg else torch.zeros((), device=device),
            }
