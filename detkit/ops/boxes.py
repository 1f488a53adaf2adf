"""Box utilities on ``xyxy`` tensors: IoU, clipping and the R-CNN box coder.

Where torchvision already does the job (:func:`box_iou`, clipping) we
use it; :class:`BoxCoder` follows :class:`torchvision.models.detection._utils.BoxCoder` op for op
(widths ``x2 - x1``, no ``+1``) so that its results are the same to the bit, with an API for any
leading shape and for class-specific deltas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision.ops
from torch import Tensor

__all__ = ["box_iou", "clip_boxes", "BoxCoder"]

# Pairwise IoU ``[..., N, M]`` of ``[..., N, 4]`` and ``[..., M, 4]`` xyxy boxes. Two empty boxes
# give 0/0 = NaN (torchvision's behaviour); ``torch.nan_to_num`` it where that matters.
box_iou = torchvision.ops.box_iou


def clip_boxes(boxes: Tensor, size_hw: Sequence[float]) -> Tensor:
    """Clamp ``[..., 4]`` xyxy boxes into an image of ``size_hw = (height, width)``: x to
    ``[0, width]``, y to ``[0, height]``. Returns a new tensor."""
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"clip_boxes: boxes must be [..., 4], got shape {tuple(boxes.shape)}")
    if len(size_hw) != 2:
        raise ValueError(f"clip_boxes: size_hw must be (height, width), got {size_hw!r}")
    height, width = (float(v) for v in size_hw)
    # torchvision.ops.clip_boxes_to_image's arithmetic, without its tracing branch, which
    # torch.export's ONNX decomposition cannot take (clamp with a tensor bound).
    x = boxes[..., 0::2].clamp(min=0.0, max=width)
    y = boxes[..., 1::2].clamp(min=0.0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


class BoxCoder:
    """Fast R-CNN box parametrisation: proposal ``P`` + deltas ``(dx, dy, dw, dh)`` -> box ``G``.

    ``dx = wx * (Gx - Px) / Pw``, ``dy = wy * (Gy - Py) / Ph``, ``dw = ww * log(Gw / Pw)``,
    ``dh = wh * log(Gh / Ph)`` with centres ``x1 + 0.5 * w`` and sizes ``x2 - x1`` (torchvision's
    convention, no ``+1``). ``weights = (wx, wy, ww, wh)`` normalise the targets (Fast R-CNN:
    ``(10, 10, 5, 5)``); when decoding, ``dw`` and ``dh`` are clamped to at most ``clamp`` before
    ``exp`` (default ``log(1000 / 16)``, so no box grows more than 62.5x in one step).

    Both methods take any leading shape. ``decode`` also takes class-specific deltas ``[K, C * 4]``
    or ``[K, C, 4]`` with proposals ``[K, 4]`` and returns boxes in the deltas' shape.
    """

    def __init__(self, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0), clamp: float = math.log(1000.0 / 16)):
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4 or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"BoxCoder: weights must be 4 positive numbers (wx, wy, ww, wh), got {weights}")
        if math.isnan(float(clamp)):
            raise ValueError("BoxCoder: clamp must be a number (math.inf for none), got NaN")
        self.weights = weights
        self.clamp = float(clamp)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, clamp={self.clamp:.4f})"

    def encode(self, proposals: Tensor, gt_boxes: Tensor) -> Tensor:
        """Deltas ``[..., 4]`` that take ``proposals`` to ``gt_boxes`` (both ``[..., 4]``, broadcast)."""
        _check_last_dim(proposals, "encode", "proposals")
        _check_last_dim(gt_boxes, "encode", "gt_boxes")
        wx, wy, ww, wh = self.weights
        pw, ph, px, py = _size_and_centre(proposals)
        gw, gh, gx, gy = _size_and_centre(gt_boxes)
        # Same expression order as torchvision's encode_boxes (hence the same rounding).
        dx = wx * (gx - px) / pw
        dy = wy * (gy - py) / ph
        dw = ww * torch.log(gw / pw)
        dh = wh * torch.log(gh / ph)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, proposals: Tensor) -> Tensor:
        """Boxes from ``deltas`` relative to ``proposals``.

        ``deltas`` ``[..., 4]`` with ``proposals`` ``[..., 4]`` (broadcast), or class-specific
        ``[K, C * 4]`` / ``[K, C, 4]`` with ``proposals`` ``[K, 4]``. Returns the shape of ``deltas``.
        """
        _check_last_dim(proposals, "decode", "proposals")
        if deltas.shape[-1:] == (4,) and deltas.ndim == proposals.ndim + 1:
            return self.decode(deltas, proposals.unsqueeze(-2))  # [K, C, 4] with [K, 4]
        if deltas.ndim >= 1 and deltas.shape[-1] != 4:
            if deltas.shape[-1] % 4:
                raise ValueError(
                    f"BoxCoder.decode: deltas must be [..., 4] or [K, C * 4], got shape {tuple(deltas.shape)}")
            per_class = deltas.reshape(*deltas.shape[:-1], deltas.shape[-1] // 4, 4)
            return self.decode(per_class, proposals.unsqueeze(-2)).reshape(deltas.shape)
        _check_last_dim(deltas, "decode", "deltas")
        proposals = proposals.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        pw, ph, px, py = _size_and_centre(proposals)
        dx, dy, dw, dh = deltas.unbind(-1)
        # Same expression order as torchvision's decode_single (hence the same rounding).
        dx, dy = dx / wx, dy / wy
        dw = torch.clamp(dw / ww, max=self.clamp)
        dh = torch.clamp(dh / wh, max=self.clamp)
        cx = dx * pw + px
        cy = dy * ph + py
        half_w = 0.5 * (torch.exp(dw) * pw)
        half_h = 0.5 * (torch.exp(dh) * ph)
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def _size_and_centre(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = x2 - x1, y2 - y1
    return w, h, x1 + 0.5 * w, y1 + 0.5 * h


def _check_last_dim(t: Tensor, method: str, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"BoxCoder.{method}: {name} must be a tensor, got {type(t).__name__}")
    if t.shape[-1:] != (4,):
        raise ValueError(f"BoxCoder.{method}: {name} must be [..., 4], got shape {tuple(t.shape)}")
