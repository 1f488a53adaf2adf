"""YOLOv1: backbone -> YOLOv1 head (S x S grid) -> sum-squared loss / decoding + postprocessor.

Build it from a config (``detkit.models.builder.build_detector`` injects ``num_classes`` and
``class_names`` from the data's class list)::

    model = dict(type="yolov1", backbone=dict(type="resnet18"),
                 head=dict(type="yolov1", grid_size=7, num_boxes=2, mode="fc"),
                 loss=dict(type="yolov1_loss"), postprocessor=dict(type="batched_nms"))

``forward(images, targets=None)``: ``images`` float ``[N, 3, H, W]`` RGB in 0..1 (normalised here with
the backbone's ``pixel_mean`` / ``pixel_std``).

* training mode: ``targets`` required; returns the loss dict of
  :class:`~detkit.models.losses.yolov1_loss.YOLOv1Loss` (``loss_*`` terms plus detached ``stat_*``
  values that are logged, not summed).
* eval mode: returns ``list[dict(boxes, scores, labels)]``. Every one of the ``S*S*B`` boxes is scored
  ``conf * Pr(class | object)`` for every class and handed to the postprocessor (which applies the
  score threshold and NMS). Boxes are in input pixels, or in original-image pixels when ``targets``
  carry a ``meta`` (letterbox / resize record, see :func:`detkit.structures.boxes_to_original`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from detkit import registry
from detkit.errors import ConfigError
from detkit.models.detectors.base import DetectorBase
from detkit.registry import Spec

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

    def __init__(
        self,
        backbone: Spec,
        head: Spec,
        loss: Spec,
        postprocessor: Spec,
        num_classes: int,
        class_names: Sequence[str] | None = None,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"model: num_classes must be a positive integer, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"model: {len(class_names)} class names for num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names is not None else tuple(
            f"class_{i}" for i in range(num_classes))

        self.backbone = registry.build("backbones", backbone, path="model.backbone")
        for attr in ("out_channels", "pixel_mean", "pixel_std"):
            if not hasattr(self.backbone, attr):
                raise ConfigError(
                    f"model.backbone: {type(self.backbone).__name__} has no '{attr}' attribute, "
                    f"which the backbone contract requires"
                )
        self.head = registry.build(
            "heads", head, path="model.head",
            in_channels=self.backbone.out_channels, num_classes=num_classes,
        )
        head_classes = getattr(self.head, "num_classes", num_classes)
        if head_classes != num_classes:
            raise ConfigError(
                f"model.head: the head predicts {head_classes} classes but the data has {num_classes}; "
                f"leave num_classes out of the head config (it follows the class list)"
            )
        self.loss = registry.build(
            "losses", loss, path="model.loss",
            num_classes=num_classes,
        )
        if getattr(self.loss, "num_classes", num_classes) != num_classes:
            raise ConfigError(
                f"model.loss: the loss expects {self.loss.num_classes} classes but the data has "
                f"{num_classes}; leave num_classes out of the loss config"
            )
        self.postprocessor = registry.build("postprocessors", postprocessor, path="model.postprocessor")
        # Not persistent: they belong to the backbone's definition, not to the trained weights.
        self.register_buffer("pixel_mean", torch.tensor(self.backbone.pixel_mean,
                                                        dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.backbone.pixel_std,
                                                       dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.min_input_size = int(getattr(self.backbone, "min_input_size", 1))

    @property
    def grid_size(self) -> int:
        return self.head.grid_size

    @property
    def num_boxes(self) -> int:
        return self.head.num_boxes

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, targets: Sequence[Mapping] | None = None,
                metas: Sequence[Mapping] | None = None):
        targets = self.targets_from_metas(targets, metas)
        self.check_inputs(images, targets)
        predictions = self.predict_grid(images)
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        if self.training:
            return self.loss(predictions, targets, image_size)
        return self.postprocess(predictions, image_size, targets)

    def predict_grid(self, images: torch.Tensor) -> torch.Tensor:
        """Images 0..1 -> head predictions ``[N, S, S, B*5 + C]`` (layout in detkit.models.heads.yolov1)."""
        x = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        features = self.backbone(x)
        if isinstance(features, (list, tuple)):  # a backbone built with out_indices: use the last map
            features = features[-1]
        return self.head(features)

    @torch.no_grad()
    def postprocess(self, predictions: torch.Tensor, image_size: tuple[int, int],
                    targets: Sequence[Mapping] | None = None) -> list[dict]:
        """Decode the grid, run the postprocessor, map boxes back to original pixels when metas are given."""
        boxes, scores = self.head.decode(predictions, image_size)
        return self.map_to_original(self.postprocessor(boxes, scores), targets)
