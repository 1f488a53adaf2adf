"""The exportable graphs: a detector as one ``nn.Module`` whose ``forward`` takes and returns tensors
only, so ``torch.onnx.export`` and ``torch.jit.trace`` capture it whole, for any batch size.

* :class:`YOLOv1Graph`: ``images [N, 3, H, W]`` (RGB, 0..1) -> normalisation, backbone, head, grid
  decoding and, unless ``nms=False``, the postprocessor (:class:`PaddedBatchedNMS`).
* :class:`RCNNGraph`: ``images`` and ``rois [R, 5]`` (image index, x1, y1, x2, y2 in input pixels)
  -> region features, class scores, class-specific boxes and the same postprocessor. The proposals
  are an input: selective search and the other generators are OpenCV / numpy code that no graph
  format holds, so the runtime computes them and the graph scores them.

Outputs with NMS (both detectors), fixed-size per image as TensorRT's ``EfficientNMS`` and mmdeploy
give them, so a batch needs no ragged tensors::

    boxes [N, K, 4] xyxy input pixels, scores [N, K], labels [N, K] int64, num_detections [N] int64

``K`` is the postprocessor's ``max_per_image``; row ``i`` holds ``num_detections[i]`` detections by
descending score, then padding (boxes 0, scores 0, labels -1). Without NMS (raw candidates):
YOLOv1 ``boxes [N, M, 4], scores [N, M, C]``; R-CNN ``boxes [R, C, 4], scores [R, C]`` (one row per
roi). Either way the same numbers as the eager detector (see tests/test_deploy.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detkit.errors import ConfigError
from detkit.ops.nms import batched_nms
from detkit.ops.postprocess import BatchedNMS, vote_boxes

__all__ = ["PaddedBatchedNMS", "DetectorGraph", "YOLOv1Graph", "RCNNGraph", "NMS_OUTPUTS", "build_graph"]

NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
RAW_OUTPUTS = ("boxes", "scores")
# Below any score a candidate can have (scores are probabilities): marks empty slots.
_EMPTY = -1.0


class PaddedBatchedNMS(nn.Module):
    """:class:`~detkit.ops.nms.BatchedNMS` as graph operations with fixed-size outputs.

    The same steps and the same result: candidates with ``score > score_threshold``, optionally the
    ``pre_nms_topk`` best per image, greedy NMS per (image, class) -- or per image when
    ``class_agnostic`` -- then the best ``max_per_image`` per image, by descending score (equal
    scores: lower row, then lower class, as the eager postprocessor orders them), with box voting
    when ``merge_iou`` is set. Written with
    torch operations whose sizes a trace or an export records symbolically (``nonzero``, ``topk``,
    scatter), so one graph serves every batch size and number of rows.
    """

    def __init__(self, score_threshold: float, iou_threshold: float, max_per_image: int,
                 pre_nms_topk: int | None = None, class_agnostic: bool = False, merge_iou: float | None = None):
        super().__init__()
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_per_image = int(max_per_image)
        self.pre_nms_topk = pre_nms_topk
        self.class_agnostic = bool(class_agnostic)
        self.merge_iou = None if merge_iou is None else float(merge_iou)

    @classmethod
    def from_postprocessor(cls, postprocessor) -> PaddedBatchedNMS:
        """The graph version of a detector's postprocessor (a :class:`BatchedNMS`)."""
        if not isinstance(postprocessor, BatchedNMS):
            raise ConfigError(f"model.postprocessor: {type(postprocessor).__name__} has no graph version; "
                              f"export with --no-nms and run it on the raw candidates")
        if postprocessor.max_per_image is None:
            raise ConfigError("model.postprocessor.max_per_image: an exported graph needs a fixed number of "
                              "detections per image; set it (e.g. --max-det 100)")
        return cls(postprocessor.score_threshold, postprocessor.iou_threshold, postprocessor.max_per_image,
                   postprocessor.pre_nms_topk, postprocessor.class_agnostic, postprocessor.merge_iou)

    def forward(self, boxes: Tensor, scores: Tensor, image_of_row: Tensor, num_images):
        """``boxes`` ``[R, 4]`` (shared) or ``[R, C, 4]`` (per class), ``scores`` ``[R, C]``,
        ``image_of_row`` int64 ``[R]``; ``num_images`` N (a size: traced under jit.trace / torch.export)."""
        num_classes = scores.shape[1]
        k = self.max_per_image
        flat = scores.reshape(-1)
        # Candidate c = row * C + class: the eager postprocessor's (image, box, class) order.
        candidates = (flat > self.score_threshold).nonzero().reshape(-1)
        rows = candidates // num_classes
        labels = candidates % num_classes
        images = image_of_row[rows]
        if self.pre_nms_topk is not None:
            chosen = self._best_per_image(candidates, flat[candidates], images, num_images, self.pre_nms_topk)
            candidates = candidates[chosen]
            rows, labels, images = rows[chosen], labels[chosen], images[chosen]
        cand_scores = flat[candidates]
        cand_boxes = boxes[rows, labels] if boxes.dim() == 3 else boxes[rows]
        groups = images if self.class_agnostic else images * num_classes + labels
        keep = batched_nms(cand_boxes, cand_scores, groups, self.iou_threshold)
        # The best k kept per image: scatter into one row per image, then topk (ties: lower index).
        width = flat.shape[0] + k  # >= k, so topk is defined for any number of candidates
        dense = torch.full((num_images, width), _EMPTY, dtype=flat.dtype, device=flat.device)
        dense = dense.reshape(-1).index_put((images[keep] * width + candidates[keep],), cand_scores[keep])
        top_scores, top_index = dense.reshape(-1, width).topk(k, dim=1)
        valid = top_scores > _EMPTY
        top_index = torch.where(valid, top_index, torch.zeros_like(top_index))
        top_rows, top_labels = top_index // num_classes, top_index % num_classes
        if self.merge_iou is not None:
            # voted boxes belong to kept candidates: a [N, width, 4] table at the same positions as dense
            voted = vote_boxes(cand_boxes, cand_scores, groups, keep, self.merge_iou)
            table = torch.zeros((num_images * width, 4), dtype=voted.dtype, device=voted.device)
            table = table.index_put((images[keep] * width + candidates[keep],), voted)
            top_boxes = table.reshape(-1, width, 4).gather(1, top_index[..., None].expand(-1, -1, 4))
        elif boxes.dim() == 3:
            top_boxes = boxes[top_rows, top_labels]
        else:
            top_boxes = boxes[top_rows]
        zero = torch.zeros_like(top_scores)
        return (torch.where(valid[..., None], top_boxes, zero[..., None]),
                torch.where(valid, top_scores, zero),
                torch.where(valid, top_labels, torch.full_like(top_labels, -1)),
                valid.sum(dim=1))

    @staticmethod
    def _best_per_image(candidates: Tensor, cand_scores: Tensor, images: Tensor, num_images,
                        count: int) -> Tensor:
        """Positions (in candidate order) of the ``count`` best-scored candidates of every image."""
        width = candidates.shape[0] + count
        position = torch.arange(candidates.shape[0], device=candidates.device)
        dense = torch.full((num_images, width), _EMPTY, dtype=cand_scores.dtype, device=cand_scores.device)
        dense = dense.reshape(-1).index_put((images * width + position,), cand_scores).reshape(-1, width)
        top_scores, top_index = dense.topk(count, dim=1)
        return top_index[top_scores > _EMPTY].sort().values


class DetectorGraph(nn.Module):
    """A built detector and, unless ``nms=False``, its postprocessor as :class:`PaddedBatchedNMS`."""

    def __init__(self, detector, nms: bool = True):
        super().__init__()
        self.detector = detector
        self.nms = PaddedBatchedNMS.from_postprocessor(detector.postprocessor) if nms else None

    @property
    def output_names(self) -> tuple[str, ...]:
        return NMS_OUTPUTS if self.nms is not None else RAW_OUTPUTS


class YOLOv1Graph(DetectorGraph):
    """A YOLOv1 detector as one graph (see the module docstring)."""

    def forward(self, images: Tensor):
        height, width = images.shape[-2], images.shape[-1]
        grid = self.detector.predict_grid(images)
        boxes, scores = self.detector.head.decode(grid, (height, width))  # [N, M, 4], [N, M, C]
        if self.nms is None:
            return boxes, scores
        n, m = boxes.shape[0], boxes.shape[1]  # traced sizes under jit.trace / torch.export
        image_of_row = torch.arange(n, device=boxes.device).reshape(-1, 1).expand(n, m).reshape(-1)
        return self.nms(boxes.reshape(-1, 4), scores.reshape(-1, scores.shape[-1]), image_of_row, n)


class RCNNGraph(DetectorGraph):
    """An R-CNN detector's region scoring as one graph: proposals in, detections out."""

    def forward(self, images: Tensor, rois: Tensor):
        # The R-CNN family's "score given proposals" (rcnn: softmax + box deltas; rcnn_classic: SVMs
        # + ridge box regression).
        boxes, scores = self.detector.score_regions(images, rois)
        if self.nms is None:
            return boxes, scores
        return self.nms(boxes, scores, rois[:, 0].long(), images.shape[0])


def build_graph(detector, nms: bool = True) -> nn.Module:
    """The graph of a built detector (``yolov1`` or ``rcnn``, or a subclass)."""
    from detkit.models.detectors.rcnn import RCNN
    from detkit.models.detectors.yolov1 import YOLOv1

    if isinstance(detector, YOLOv1):
        return YOLOv1Graph(detector, nms)
    if isinstance(detector, RCNN):
        return RCNNGraph(detector, nms)
    raise ConfigError(f"export: no graph for a {type(detector).__name__} detector (yolov1 and rcnn export)")
