"""Box formats and the data contracts every detkit component honours.

Box formats (all in the last dimension of a tensor or array, ``[..., 4]``):

* ``xyxy``   – corners ``x1, y1, x2, y2`` in pixels (the internal format everywhere)
* ``xywh``   – top-left corner and size ``x, y, w, h`` (COCO JSON)
* ``cxcywh`` – centre and size ``cx, cy, w, h`` (YOLO)
* ``normalised=True`` variants divide x by the image width and y by the height.

Contracts (see docs/architecture.md):

* images entering a model: float32 ``[N, 3, H, W]``, RGB, values 0..1; the detector normalises.
* targets (training): ``list[dict(boxes=FloatTensor[K, 4] xyxy pixels, labels=LongTensor[K])]`` with
  labels ``0..C-1`` (no background index in the data); optional ``difficult`` / ``iscrowd`` bool[K].
* detections (inference): ``list[dict(boxes=FloatTensor[M, 4] xyxy pixels of the original image,
  scores=FloatTensor[M], labels=LongTensor[M])]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "BOX_FORMATS",
    "convert_boxes",
    "normalise_boxes",
    "denormalise_boxes",
    "box_area",
    "check_targets",
    "check_detections",
    "empty_detections",
    "identity_meta",
    "boxes_to_original",
    "boxes_to_input",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _split(boxes):
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def _stack(a, b, c, d, like):
    if isinstance(like, torch.Tensor):
        return torch.stack((a, b, c, d), dim=-1)
    return np.stack((a, b, c, d), axis=-1)


def convert_boxes(boxes, src: str, dst: str):
    """Convert boxes between ``xyxy``, ``xywh`` and ``cxcywh`` (tensor or numpy, any leading shape)."""
    for fmt in (src, dst):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"unknown box format '{fmt}'; use one of {BOX_FORMATS}")
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 values in the last dimension, got shape {tuple(boxes.shape)}")
    if src == dst:
        return boxes.clone() if isinstance(boxes, torch.Tensor) else boxes.copy()
    a, b, c, d = _split(boxes)
    if src == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif src == "cxcywh":
        x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    else:
        x1, y1, x2, y2 = a, b, c, d
    if dst == "xyxy":
        return _stack(x1, y1, x2, y2, boxes)
    if dst == "xywh":
        return _stack(x1, y1, x2 - x1, y2 - y1, boxes)
    return _stack((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, boxes)


def normalise_boxes(boxes, width: float, height: float):
    """Divide x coordinates by ``width`` and y by ``height`` (any of the three formats)."""
    scale = [width, height, width, height]
    if isinstance(boxes, torch.Tensor):
        return boxes / torch.as_tensor(scale, dtype=boxes.dtype, device=boxes.device)
    return boxes / np.asarray(scale, dtype=boxes.dtype)


def denormalise_boxes(boxes, width: float, height: float):
    """Inverse of :func:`normalise_boxes`."""
    scale = [width, height, width, height]
    if isinstance(boxes, torch.Tensor):
        return boxes * torch.as_tensor(scale, dtype=boxes.dtype, device=boxes.device)
    return boxes * np.asarray(scale, dtype=boxes.dtype)


def box_area(boxes):
    """Area of ``xyxy`` boxes; inverted boxes have area 0."""
    x1, y1, x2, y2 = _split(boxes)
    if isinstance(boxes, torch.Tensor):
        return (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    return (x2 - x1).clip(min=0) * (y2 - y1).clip(min=0)


def _check_list(items, kind: str) -> None:
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise TypeError(f"{kind} must be a list with one dict per image, got {type(items).__name__}")


def check_targets(targets, num_classes: int | None = None) -> None:
    """Raise ``ValueError`` naming the image index when ``targets`` break the training contract."""
    _check_list(targets, "targets")
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}] must be a dict with 'boxes' and 'labels'")
        boxes, labels = t["boxes"], t["labels"]
        if not (isinstance(boxes, torch.Tensor) and boxes.is_floating_point()):
            raise ValueError(f"targets[{i}]['boxes'] must be a float tensor")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must have shape [K, 4], got {tuple(boxes.shape)}")
        if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64):
            raise ValueError(f"targets[{i}]['labels'] must be an int64 tensor")
        if labels.shape != (boxes.shape[0],):
            raise ValueError(
                f"targets[{i}]: {boxes.shape[0]} boxes but labels of shape {tuple(labels.shape)}"
            )
        if boxes.numel() and bool(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any()):
            raise ValueError(f"targets[{i}]['boxes'] has boxes with x2 < x1 or y2 < y1 (not xyxy?)")
        if labels.numel() and num_classes is not None:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= num_classes:
                raise ValueError(
                    f"targets[{i}]['labels'] must lie in 0..{num_classes - 1}, found {lo}..{hi}"
                )


def check_detections(detections) -> None:
    """Raise ``ValueError`` naming the image index when ``detections`` break the inference contract."""
    _check_list(detections, "detections")
    for i, d in enumerate(detections):
        if not isinstance(d, Mapping) or not {"boxes", "scores", "labels"} <= set(d):
            raise ValueError(f"detections[{i}] must be a dict with 'boxes', 'scores' and 'labels'")
        m = d["boxes"].shape[0]
        if d["boxes"].shape != (m, 4) or d["scores"].shape != (m,) or d["labels"].shape != (m,):
            raise ValueError(
                f"detections[{i}]: shapes boxes {tuple(d['boxes'].shape)}, scores "
                f"{tuple(d['scores'].shape)}, labels {tuple(d['labels'].shape)} do not agree"
            )
        if d["labels"].dtype != torch.int64:
            raise ValueError(f"detections[{i}]['labels'] must be int64")


def empty_detections(device=None) -> dict:
    return {
        "boxes": torch.zeros((0, 4), device=device),
        "scores": torch.zeros((0,), device=device),
        "labels": torch.zeros((0,), dtype=torch.int64, device=device),
    }


# ----------------------------------------------------------------------------------------------
# Image meta: how an original image became the tensor the model saw
# ----------------------------------------------------------------------------------------------
# Every resize / letterbox records ``meta = dict(orig_size=(H0, W0), input_size=(H, W),
# scale=(sx, sy), pad=(left, top))`` so that  x_input = x_orig * sx + left,  y_input = y_orig * sy + top.
# The data pipeline writes it into ``target["meta"]``; detectors decode in input pixels and map back
# with boxes_to_original() whenever a meta is given, so detections are in original-image pixels.


def identity_meta(height: int, width: int) -> dict:
    return {"orig_size": (int(height), int(width)), "input_size": (int(height), int(width)),
            "scale": (1.0, 1.0), "pad": (0.0, 0.0)}


def boxes_to_original(boxes: torch.Tensor, meta: Mapping) -> torch.Tensor:
    """Map ``xyxy`` boxes from model-input pixels back to the original image, clipped to it."""
    sx, sy = meta["scale"]
    left, top = meta["pad"]
    h0, w0 = meta["orig_size"]
    offset = boxes.new_tensor([left, top, left, top])
    scale = boxes.new_tensor([sx, sy, sx, sy])
    out = (boxes - offset) / scale
    out[..., 0::2] = out[..., 0::2].clamp(0, w0)
    out[..., 1::2] = out[..., 1::2].clamp(0, h0)
    return out


def boxes_to_input(boxes: torch.Tensor, meta: Mapping) -> torch.Tensor:
    """Map ``xyxy`` boxes from original-image pixels to model-input pixels."""
    sx, sy = meta["scale"]
    left, top = meta["pad"]
    return boxes * boxes.new_tensor([sx, sy, sx, sy]) + boxes.new_tensor([left, top, left, top])
