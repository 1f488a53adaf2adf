"""YOLOv1: backbone -> YOLOv1 head (S x S grid) -> sum-squared loss / decoding + postprocessor.

Build it from a config (``detkit.models.builder.build_detector`` injects ``num_classes`` and
``class_names`` from the data's class list)::

    model = dict(type="yolov1", backbone=dict(type="resnet18"),
                 head=dict(type="yolov1", grid_size=7, num_boxes=2, mode="fc"),
                 loss=dict(type="yolov1_loss"), postprocessor=dict(type="batched_nms"))

``forward(images, targets=None, metas=None)`` follows the detector contract of
:mod:`detkit.models.detectors.base` (construction, input checks, normalisation and the mapping of
boxes to original pixels live there):

* training mode: returns the loss dict of :class:`~detkit.models.losses.yolov1_loss.YOLOv1Loss`
  (``loss_*`` terms plus detached ``stat_*`` values that are logged, not summed).
* eval mode: returns ``list[dict(boxes, scores, labels)]``. Every one of the ``S*S*B`` boxes is scored
  ``conf * Pr(class | object)`` for every class and handed to the postprocessor (which applies the
  score threshold and NMS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from detkit.models.detectors.base import DetectorBase

__all__ = ["YOLOv1"]


class YOLOv1(DetectorBase):
    """The YOLOv1 detector.

    Args:
        backbone: backbone config (needs ``out_channels``, ``pixel_mean``, ``pixel_std``).
        head: head config (``dict(type="yolov1", ...)``), built with
            ``in_channels=backbone.out_channels`` and ``num_classes``.
        loss: loss config (``dict(type="yolov1_loss", ...)``), built with ``num_classes``.
        postprocessor: config of the batched postprocessor (``dict(type="batched_nms", ...)``).
        num_classes: C; injected by the builder from the class list.
        class_names: names of the C classes, stored for inference and checkpoints.

    Each component argument may also be an already-built module (Python use).
    """

    @property
    def grid_size(self) -> int:
        return self.head.grid_size

    @property
    def num_boxes(self) -> int:
        return self.head.num_boxes

    def forward_train(self, images: torch.Tensor, targets: Sequence[Mapping], metas) -> dict[str, torch.Tensor]:
        return self.loss(self.predict_grid(images), targets, _size(images))

    def forward_test(self, images: torch.Tensor, metas) -> list[dict]:
        return self.postprocess(self.predict_grid(images), _size(images))

    def predict_grid(self, images: torch.Tensor) -> torch.Tensor:
        """Images 0..1 -> head predictions ``[N, S, S, B*5 + C]`` (layout in detkit.models.heads.yolov1)."""
        return self.head(self.features(images))

    @torch.no_grad()
    def postprocess(self, predictions: torch.Tensor, image_size: tuple[int, int]) -> list[dict]:
        """Decode the grid and run the postprocessor: detections in input pixels."""
        boxes, scores = self.head.decode(predictions, image_size)
        return self.postprocessor(boxes, scores)


def _size(images: torch.Tensor) -> tuple[int, int]:
    return int(images.shape[-2]), int(images.shape[-1])
