"""The YOLOv1 loss: target encoding on the S x S grid and the paper's sum-squared terms.

Target encoding (:func:`encode_targets`), per image:

* Each ground-truth box (xyxy input pixels, clipped to the image) is assigned to the cell holding its
  centre. ``x, y`` are the centre's offsets inside that cell (0..1); ``w, h`` are relative to the
  input image; the cell gets the one-hot class vector of that object.
* A cell holds one object (the paper's grid can only have one class per cell). When several object
  centres fall into the same cell, the **largest box (by area) is kept**; equal areas keep the one
  listed first. The others are not trained on for that image and are counted in
  ``stat_dropped_same_cell``.
* Boxes flagged ``difficult`` (VOC) or ``iscrowd`` (COCO) are left out of training by default, like
  darknet's VOC labels and mmdetection's ignore boxes; they are counted in ``stat_skipped_flagged``.

The loss (:class:`YOLOv1Loss`), exactly the paper's equation (3), with ``1obj_ij`` marking the
responsible predictor ``j`` of a cell ``i`` holding an object, i.e. the predictor whose box has the
highest IoU with the object (ties: the lowest ``j``)::

    loss_xy    = l_coord * sum 1obj_ij [(x - x^)^2 + (y - y^)^2]
    loss_wh    = l_coord * sum 1obj_ij [(sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2]
    loss_obj   = l_obj   * sum 1obj_ij (C - IoU(pred, truth))^2      (target detached; 1 if rescore=False)
    loss_noobj = l_noobj * sum (1 - 1obj_ij) C^2                      (every other predictor, incl. the
                                                                       non-responsible one in an object cell)
    loss_cls   = l_cls   * sum_i 1obj_i sum_c (p(c) - p^(c))^2

each divided by the batch size. The predictions are the head's outputs in its documented layout
(``[x, y, sqrt w, sqrt h, conf] * B`` then ``C`` class probabilities), after its output activation, so
the loss is the same for the sigmoid and the linear head.

The returned dict also carries statistics for logging, detached and **not** prefixed ``loss_`` (the
trainer sums only ``loss_*`` keys): ``stat_objects`` (objects assigned to a cell in this batch),
``stat_dropped_same_cell``, ``stat_skipped_flagged`` and ``stat_mean_iou`` (mean IoU of the
responsible predictors with their objects, 0 when the batch has no object).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from detkit.models.heads.yolov1 import grid_boxes_normalised

__all__ = ["YOLOv1Loss", "GridTargets", "encode_targets"]


@dataclass
class GridTargets:
    """Encoded targets of a batch on an ``S x S`` grid."""

    object_mask: torch.Tensor  # bool [N, S, S]: the cell holds an object
    boxes: torch.Tensor  # float [N, S, S, 4]: (x offset in cell, y offset, w / W, h / H)
    boxes_xyxy: torch.Tensor  # float [N, S, S, 4]: the object's box, xyxy in 0..1 image units
    classes: torch.Tensor  # float [N, S, S, C]: one-hot class of the cell's object
    num_objects: int  # objects assigned to a cell
    dropped_same_cell: int  # objects lost to a larger object centred in the same cell
    skipped_flagged: int  # difficult / crowd objects left out


def encode_targets(
    targets: Sequence[Mapping],
    grid_size: int,
    num_classes: int,
    image_size: tuple[int, int],
    *,
    skip_difficult: bool = True,
    skip_crowd: bool = True,
    device: torch.device | str | None = None,
) -> GridTargets:
    """Encode a batch of targets (boxes xyxy in input pixels) on the grid; see the module docstring.

    Vectorised over all boxes of the batch: no Python loop over images, boxes or cells.
    """
    n, s = len(targets), grid_size
    height, width = image_size
    device = torch.device(device) if device is not None else (
        targets[0]["boxes"].device if n else torch.device("cpu"))
    counts = [len(t["boxes"]) for t in targets]
    total = sum(counts)
    cells = n * s * s

    boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets]).to(device, torch.float32) \
        if total else torch.zeros((0, 4), device=device)
    labels = torch.cat([t["labels"].reshape(-1) for t in targets]).to(device, torch.int64) \
        if total else torch.zeros((0,), dtype=torch.int64, device=device)
    image_index = torch.repeat_interleave(
        torch.arange(n, device=device), torch.as_tensor(counts, device=device, dtype=torch.int64))

    if total and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"target labels must lie in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}"
        )

    keep_flagged = torch.ones(total, dtype=torch.bool, device=device)
    for key, skip in (("difficult", skip_difficult), ("iscrowd", skip_crowd)):
        if skip and total and any(key in t for t in targets):
            parts = []
            for i, (t, c) in enumerate(zip(targets, counts)):
                # A target without the flag has none of its boxes flagged.
                flag = (torch.as_tensor(t[key], device=device).reshape(-1).bool() if key in t
                        else torch.zeros(c, dtype=torch.bool, device=device))
                if flag.numel() != c:
                    raise ValueError(f"targets[{i}]['{key}'] has {flag.numel()} entries for {c} boxes")
                parts.append(flag)
            keep_flagged &= ~torch.cat(parts)
    skipped = total - int(keep_flagged.sum())
    if skipped:
        boxes, labels, image_index = boxes[keep_flagged], labels[keep_flagged], image_index[keep_flagged]

    # Clip to the image so every centre lies in a cell and no size exceeds the image.
    scale = boxes.new_tensor([width, height, width, height])
    clipped = torch.minimum(boxes.clamp(min=0), scale)
    # Areas in pixels: exact for integer coordinates, so equal boxes really tie (normalised sizes
    # can differ in the last bit and would break the "first listed wins" rule).
    area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    norm = clipped / scale
    # Centres in grid units, computed from pixel sums so that a centre exactly on a cell border
    # (integer grid coordinate) is exact and lands in the cell to its right/below.
    gx = (clipped[:, 0] + clipped[:, 2]) * (s / 2) / width
    gy = (clipped[:, 1] + clipped[:, 3]) * (s / 2) / height
    w, h = norm[:, 2] - norm[:, 0], norm[:, 3] - norm[:, 1]
    # A centre on the right/bottom image edge belongs to the last cell, with offset 1.
    col = gx.floor().clamp(0, s - 1).long()
    row = gy.floor().clamp(0, s - 1).long()
    cell = (image_index * s + row) * s + col

    # One object per cell: sort by area (largest first, stable so ties keep annotation order), then
    # stably by cell; the first entry of each cell wins. Deterministic on every device, unlike a
    # scatter with repeated indices.
    order = torch.argsort(area, descending=True, stable=True)
    order = order[torch.argsort(cell[order], stable=True)]
    sorted_cells = cell[order]
    first = torch.ones_like(sorted_cells, dtype=torch.bool)
    first[1:] = sorted_cells[1:] != sorted_cells[:-1]
    keep = order[first]
    kept_cells = cell[keep]

    object_mask = torch.zeros(cells, dtype=torch.bool, device=device)
    object_mask[kept_cells] = True
    cell_boxes = torch.zeros((cells, 4), device=device)
    cell_boxes[kept_cells] = torch.stack(
        (gx[keep] - col[keep], gy[keep] - row[keep], w[keep], h[keep]), dim=-1)
    cell_xyxy = torch.zeros((cells, 4), device=device)
    cell_xyxy[kept_cells] = norm[keep]
    classes = torch.zeros((cells, num_classes), device=device)
    classes[kept_cells, labels[keep]] = 1.0

    return GridTargets(
        object_mask=object_mask.view(n, s, s),
        boxes=cell_boxes.view(n, s, s, 4),
        boxes_xyxy=cell_xyxy.view(n, s, s, 4),
        classes=classes.view(n, s, s, num_classes),
        num_objects=int(keep.numel()),
        dropped_same_cell=int(order.numel() - keep.numel()),
        skipped_flagged=skipped,
    )


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes paired element-wise (broadcasting); 0 where the union is empty."""
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny),
                       torch.zeros_like(union))


class YOLOv1Loss(nn.Module):
    """The YOLOv1 sum-squared loss (see the module docstring).

    Args:
        num_classes: C (the detector passes it). B is read from the prediction shape.
        lambda_coord: weight of the x, y and sqrt w, sqrt h terms (5 in the paper).
        lambda_noobj: weight of the confidence of predictors without an object (0.5 in the paper).
        lambda_obj: weight of the confidence of responsible predictors (1 in the paper).
        lambda_cls: weight of the class-probability term (1 in the paper).
        rescore: confidence target of a responsible predictor is its IoU with the object (the paper;
            darknet's ``rescore=1``); ``False`` uses 1.
        skip_difficult, skip_crowd: leave ``difficult`` / ``iscrowd`` objects out of training.
    """

    def __init__(
        self,
        num_classes: int,
        lambda_coord: float = 5.0,
        lambda_noobj: float = 0.5,
        lambda_obj: float = 1.0,
        lambda_cls: float = 1.0,
        rescore: bool = True,
        skip_difficult: bool = True,
        skip_crowd: bool = True,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        for name, value in (("lambda_coord", lambda_coord), ("lambda_noobj", lambda_noobj),
                            ("lambda_obj", lambda_obj), ("lambda_cls", lambda_cls)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.num_classes = num_classes
        self.lambda_coord = float(lambda_coord)
        self.lambda_noobj = float(lambda_noobj)
        self.lambda_obj = float(lambda_obj)
        self.lambda_cls = float(lambda_cls)
        self.rescore = rescore
        self.skip_difficult = skip_difficult
        self.skip_crowd = skip_crowd

    def forward(self, predictions: torch.Tensor, targets: Sequence[Mapping],
                image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """``predictions`` ``[N, S, S, B*5 + C]`` (head output), ``targets`` per image (boxes xyxy in
        input pixels, labels), ``image_size`` ``(H, W)`` of the input. Returns the loss dict."""
        if predictions.ndim != 4 or predictions.shape[1] != predictions.shape[2]:
            raise ValueError(f"predictions must be [N, S, S, B*5 + C], got {tuple(predictions.shape)}")
        n, s, _, dim = predictions.shape
        num_boxes, rest = divmod(dim - self.num_classes, 5)
        if rest or num_boxes < 1:
            raise ValueError(
                f"predictions have {dim} values per cell, which is not B*5 + C for C={self.num_classes}"
            )
        if len(targets) != n:
            raise ValueError(f"{n} predictions but {len(targets)} targets")
        # Sum-squared terms in float32 even under autocast: fp16 would underflow small squared errors.
        predictions = predictions.float()
        enc = encode_targets(targets, s, self.num_classes, image_size, device=predictions.device,
                             skip_difficult=self.skip_difficult, skip_crowd=self.skip_crowd)

        box_pred = predictions[..., : num_boxes * 5].reshape(n, s, s, num_boxes, 5)
        class_pred = predictions[..., num_boxes * 5:]
        conf = box_pred[..., 4]

        with torch.no_grad():
            iou = paired_iou(grid_boxes_normalised(box_pred[..., :4]), enc.boxes_xyxy.unsqueeze(3))
            # argmax returns the first maximum: ties go to the lowest predictor index.
            best = iou.argmax(dim=-1)
            responsible = nn.functional.one_hot(best, num_boxes).bool() & enc.object_mask.unsqueeze(-1)
        resp = responsible.to(predictions.dtype)

        target_xy = enc.boxes[..., :2].unsqueeze(3)
        target_sqrt_wh = enc.boxes[..., 2:].sqrt().unsqueeze(3)
        xy_err = (box_pred[..., :2] - target_xy).square().sum(-1)
        wh_err = (box_pred[..., 2:4] - target_sqrt_wh).square().sum(-1)
        conf_target = iou if self.rescore else torch.ones_like(iou)
        obj_err = (conf - conf_target).square()
        noobj_err = conf.square()
        cls_err = (class_pred - enc.classes).square().sum(-1)

        losses = {
            "loss_xy": self.lambda_coord * (resp * xy_err).sum() / n,
            "loss_wh": self.lambda_coord * (resp * wh_err).sum() / n,
            "loss_obj": self.lambda_obj * (resp * obj_err).sum() / n,
            "loss_noobj": self.lambda_noobj * ((1.0 - resp) * noobj_err).sum() / n,
            "loss_cls": self.lambda_cls * (enc.object_mask.to(cls_err.dtype) * cls_err).sum() / n,
        }
        device = predictions.device
        mean_iou = (iou * resp).sum() / max(enc.num_objects, 1)
        losses.update(
            stat_objects=torch.tensor(float(enc.num_objects), device=device),
            stat_dropped_same_cell=torch.tensor(float(enc.dropped_same_cell), device=device),
            stat_skipped_flagged=torch.tensor(float(enc.skipped_flagged), device=device),
            stat_mean_iou=mean_iou.detach(),
        )
        return losses
