"""Soft-NMS (Bodla et al., "Soft-NMS -- Improving Object Detection With One Line of Code", ICCV 2017).

Hard NMS deletes every box that overlaps a higher-scoring one by more than a threshold, so of two
overlapping objects of the same class only one survives. Soft-NMS instead *decays* the scores of the
overlapping boxes and keeps going (the paper's Algorithm 1):

    while candidates remain:
        M = the candidate with the highest (current) score;  move M to the output
        for every remaining candidate b:   s_b = s_b * f(IoU(M, b))

    linear:    f = 1 - IoU  if IoU >= N_t  else 1      (N_t = ``iou_threshold``)
    gaussian:  f = exp(-IoU^2 / sigma)

and finally drops the boxes whose decayed score fell to ``score_threshold`` or below.

This module honours detkit's postprocessor contract (the same as the built-in ``batched_nms``):
``__call__(boxes, scores)`` on a whole batch, ``boxes`` ``[N, M, 4]`` (shared by the classes) or
``[N, M, C, 4]`` (per class), ``scores`` ``[N, M, C]``, or lists of per-image tensors; returns
``list[dict(boxes=[K, 4], scores=[K], labels=[K])]``, highest score first. detkit's
``normalise_batch`` checks both layouts and splits the batch into images, with the same error
messages as the built-in postprocessor.

Implementation notes:

* classes are independent: every (box, class) pair is a candidate, and the boxes of different classes
  are moved apart (offset by ``label * (max coordinate + 1)``) so they never overlap; one pass then
  equals one pass per class;
* scores only decrease, so the boxes leave the loop in the order of their final scores: the loop stops
  after ``max_per_image`` selections (exactly the top ``max_per_image`` of the full algorithm) or when
  no remaining score is above ``score_threshold``;
* each step computes the IoU of the selected box with the remaining ones only, O(K) memory.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from detkit.ops.postprocess import normalise_batch

__all__ = ["SoftNMS", "soft_nms", "METHODS"]

METHODS = ("linear", "gaussian")


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    max_det: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS over one image's candidates.

    Args:
        boxes: ``[K, 4]`` xyxy. scores: ``[K]``. labels: ``[K]`` class of each candidate (boxes of
            different classes do not affect each other), or ``None`` for one class.

    Returns ``(keep, new_scores)``: indices into the candidates in selection order (final score
    descending) and their decayed scores. Candidates scoring ``<= score_threshold`` are dropped.
    """
    if method not in METHODS:
        raise ValueError(f"soft_nms: method must be 'linear' or 'gaussian', got {method!r}")
    num = boxes.shape[0]
    empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
    if num == 0:
        return empty, scores.new_zeros(0)
    boxes = boxes.float()
    if labels is not None:
        # Move each class to its own region of the plane: IoU across classes becomes exactly 0.
        span = boxes.max() - torch.clamp(boxes.min(), max=0) + 1
        boxes = boxes + (labels.to(boxes) * span)[:, None]
    current = scores.float().clone()
    alive = current > score_threshold
    limit = num if max_det is None else min(num, int(max_det))
    keep, kept_scores = [], []
    for _ in range(limit):
        masked = torch.where(alive, current, torch.full_like(current, -1.0))
        best = int(torch.argmax(masked))
        if not bool(alive[best]):
            break
        keep.append(best)
        kept_scores.append(current[best])
        alive[best] = False
        iou = torch.nan_to_num(box_iou(boxes[best : best + 1], boxes)[0], nan=0.0)  # 0/0 for empty boxes
        if method == "linear":
            weight = torch.where(iou >= iou_threshold, 1.0 - iou, torch.ones_like(iou))
        else:
            weight = torch.exp(-(iou * iou) / sigma)
        current = torch.where(alive, current * weight, current)
        alive &= current > score_threshold
    if not keep:
        return empty, scores.new_zeros(0)
    return torch.tensor(keep, dtype=torch.long, device=boxes.device), torch.stack(kept_scores)


class SoftNMS:
    """Batched Soft-NMS postprocessor (registered as ``soft_nms``).

    Args:
        method: ``"gaussian"`` (the paper's recommended variant) or ``"linear"``.
        sigma: Gaussian width (paper: 0.5). Small values approach hard NMS that removes every overlap.
        iou_threshold: the linear variant's N_t (paper: 0.3); unused by the Gaussian one.
        score_threshold: candidates must score above this, before and after decay (paper: 0.001).
        max_per_image: detections kept per image (the highest final scores).
        pre_nms_topk: consider only this many highest-scoring candidates per image (speed); ``None``: all.
        class_agnostic: let boxes of different classes decay each other.
    """

    def __init__(
        self,
        method: str = "gaussian",
        sigma: float = 0.5,
        iou_threshold: float = 0.3,
        score_threshold: float = 0.001,
        max_per_image: int = 100,
        pre_nms_topk: int | None = None,
        class_agnostic: bool = False,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be 'linear' or 'gaussian', got {method!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        if score_threshold < 0:
            raise ValueError(f"score_threshold must be >= 0, got {score_threshold}")
        if int(max_per_image) < 1:
            raise ValueError(f"max_per_image must be >= 1, got {max_per_image}")
        if pre_nms_topk is not None and int(pre_nms_topk) < 1:
            raise ValueError(f"pre_nms_topk must be >= 1 or None, got {pre_nms_topk}")
        self.method = method
        self.sigma = float(sigma)
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)
        self.max_per_image = int(max_per_image)
        self.pre_nms_topk = None if pre_nms_topk is None else int(pre_nms_topk)
        self.class_agnostic = bool(class_agnostic)

    def __call__(self, boxes, scores) -> list[dict[str, torch.Tensor]]:
        return [self.single(b, s) for b, s in normalise_batch(boxes, scores, who="soft_nms").images()]

    def single(self, boxes: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """One image: ``boxes`` ``[M, 4]`` or ``[M, C, 4]``, ``scores`` ``[M, C]``."""
        num_classes = scores.shape[1]
        # Every (box, class) pair is a candidate, in box-major order.
        candidate_boxes = boxes.reshape(-1, 4) if boxes.dim() == 3 else (
            boxes[:, None, :].expand(-1, num_classes, 4).reshape(-1, 4))
        flat_scores = scores.reshape(-1)
        labels = torch.arange(num_classes, device=scores.device).repeat(boxes.shape[0])
        candidates = torch.nonzero(flat_scores > self.score_threshold).squeeze(1)
        if self.pre_nms_topk is not None and candidates.numel() > self.pre_nms_topk:
            top = flat_scores[candidates].topk(self.pre_nms_topk).indices
            candidates = candidates[top.sort().values]  # keep the original order: ties stay stable
        keep, new_scores = soft_nms(
            candidate_boxes[candidates], flat_scores[candidates],
            None if self.class_agnostic else labels[candidates],
            method=self.method, sigma=self.sigma, iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold, max_det=self.max_per_image,
        )
        chosen = candidates[keep]
        return dict(boxes=candidate_boxes[chosen].float(), scores=new_scores.to(scores.dtype),
                    labels=labels[chosen].long())

    def __repr__(self):
        extra = f", sigma={self.sigma}" if self.method == "gaussian" else f", iou_threshold={self.iou_threshold}"
        return (f"SoftNMS(method={self.method!r}{extra}, score_threshold={self.score_threshold}, "
                f"max_per_image={self.max_per_image})")
