"""The data contracts between detkit's parts (targets, detections, image metas) and their checks.

Boxes are ``xyxy`` (corners ``x1, y1, x2, y2``) in pixels everywhere inside detkit; other formats
(COCO's ``xywh``, YOLO's normalised ``cxcywh``) exist only in files, converted by the code that reads
or writes them.

Contracts (see docs/architecture.md):

* images entering a model: float32 ``[N, 3, H, W]``, RGB, values 0..1; the detector normalises.
* targets (training): ``list[dict(boxes=FloatTensor[K, 4] xyxy pixels, labels=LongTensor[K])]`` with
  labels ``0..C-1`` (no background index in the data); optional ``difficult`` / ``iscrowd`` bool[K].
* image metas: how each input image was made from its original (below); a detector given them
  returns detections in original-image pixels.
* detections (inference): ``list[dict(boxes=FloatTensor[M, 4] xyxy pixels, scores=FloatTensor[M],
  labels=LongTensor[M])]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = [
    "check_targets",
    "check_detections",
    "identity_meta",
    "boxes_to_original",
]

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


# ----------------------------------------------------------------------------------------------
# Image meta: how an original image became the tensor the model saw
# ----------------------------------------------------------------------------------------------
# Every resize / letterbox records ``meta = dict(orig_size=(H0, W0), input_size=(H, W),
# scale=(sx, sy), pad=(left, top))`` so that  x_input = x_orig * sx + left,  y_input = y_orig * sy + top;
# datasets add ``file_name``, ``path`` and ``image_id``. The data pipeline writes it into
# ``target["meta"]``; detectors decode in input pixels and map back with boxes_to_original() for every
# image whose meta the caller passes (``model(images, metas=...)``).


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

