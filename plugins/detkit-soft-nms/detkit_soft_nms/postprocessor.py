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
``list[dict(boxes=[K, 4], scores=[K], labels=[K])]``, highest score first.

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

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

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
        boxes_list, scores_list = _per_image(boxes, scores)
        return [self.single(b, s) for b, s in zip(boxes_list, scores_list)]

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


def _per_image(boxes, scores) -> tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]:
    """Split the batch into per-image tensors and check their shapes against each other."""
    if isinstance(boxes, torch.Tensor) and boxes.dim() in (3, 4):
        boxes = list(boxes.unbind(0))
    if isinstance(scores, torch.Tensor) and scores.dim() == 3:
        scores = list(scores.unbind(0))
    if not isinstance(boxes, (list, tuple)) or not isinstance(scores, (list, tuple)):
        raise ValueError(
            "soft_nms expects boxes [N, M, 4] or [N, M, C, 4] and scores [N, M, C] (or lists of per-image "
            f"tensors), got boxes {_describe(boxes)} and scores {_describe(scores)}")
    if len(boxes) != len(scores):
        raise ValueError(f"soft_nms: {len(boxes)} images of boxes but {len(scores)} of scores")
    for i, (b, s) in enumerate(zip(boxes, scores)):
        ok = (isinstance(b, torch.Tensor) and isinstance(s, torch.Tensor) and s.dim() == 2
              and ((b.dim() == 2 and b.shape == (s.shape[0], 4))
                   or (b.dim() == 3 and b.shape == (s.shape[0], s.shape[1], 4))))
        if not ok:
            raise ValueError(
                f"soft_nms: image {i}: boxes must be [M, 4] or [M, C, 4] for scores [M, C], got boxes "
                f"{_describe(b)} and scores {_describe(s)}")
    return boxes, scores


def _describe(x) -> str:
    return f"{tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
