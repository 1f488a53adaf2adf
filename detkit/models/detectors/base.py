"""The flow every detector shares (as torchvision's ``GeneralizedRCNN`` hosts it): building and
checking the backbone, head, loss and postprocessor, the input checks, normalisation, the feature
map, the train / eval dispatch and mapping detections back to the original images.

A detector derives from :class:`DetectorBase` and writes only what is its own::

    class MyDetector(DetectorBase):
        def forward_train(self, images, targets, metas) -> dict[str, Tensor]:   # the loss dict
            return self.loss(self.head(self.features(images)), targets)
        def forward_test(self, images, metas) -> list[dict]:                     # input pixels
            return self.postprocessor(*self.head.decode(self.head(self.features(images))))

Call contract, ``forward(images, targets=None, metas=None)``:

* ``images``: float ``[N, C, H, W]`` in 0..1 with ``C = backbone.in_channels``; a detector whose
  backbone takes one (grey) channel also accepts RGB ``[N, 3, H, W]`` and converts it to luma
  (ITU-R 601, PIL's ``"L"``), so data pipelines, ``Predictor`` and evaluation need no change.
* ``targets`` (training mode only, required there): one dict per image, see
  :func:`detkit.structures.check_targets`. Eval mode refuses them: metas travel in ``metas``.
* ``metas`` (optional): one image meta dict per image (``orig_size``, ``input_size``, ``scale``,
  ``pad``, ``file_name``, ``path``, ``image_id``; see :mod:`detkit.structures`) or ``None`` for an
  image without one. In eval mode detections are mapped to original-image pixels for every image
  that has a meta, else they stay in input pixels. In training mode they default to the targets'
  ``meta`` and only name images in errors (and feed meta-aware proposal generators).

Training mode returns ``dict[str, scalar Tensor]`` (the trainer sums the ``loss_*`` terms), eval
mode ``list[dict(boxes [M, 4] xyxy, scores [M], labels [M] int64)]``.

The checks turn the classic mistakes (0..255 images, a dict instead of a list of targets, labels out
of range) into clear errors naming the image. The class list, the backbone, normalisation, the image
checks and ``features()`` come from :class:`~detkit.models.base.BackboneModel` (shared with the
classifiers); see there for what is skipped while the model is traced or exported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import Tensor

from detkit import registry
from detkit.errors import ConfigError, DataError
from detkit.models.base import LUMA_WEIGHTS, BackboneModel, is_capturing, is_tracing
from detkit.registry import Spec
from detkit.structures import boxes_to_original, check_targets

# is_capturing / is_tracing / LUMA_WEIGHTS live in detkit.models.base; re-exported for existing imports.
__all__ = ["DetectorBase", "LUMA_WEIGHTS", "image_name", "is_capturing", "is_tracing"]

# The keys boxes_to_original() needs from a meta.
_MAPPING_KEYS = ("orig_size", "scale", "pad")


def image_name(meta: Mapping | None, index: int | None = None) -> str:
    """The best name of an image for messages: its path, file name or id (or batch position)."""
    meta = meta or {}
    name = meta.get("path") or meta.get("file_name") or (
        f"id {meta['image_id']}" if meta.get("image_id") is not None else None)
    if name:
        return str(name)
    return f"#{index} of the batch" if index is not None else ""


def target_metas(targets: Sequence[Mapping]) -> list[dict]:
    """The image metas of training targets, with the target's ``image_id`` filled in when the meta
    lacks it (metas name images in errors and key precomputed proposals)."""
    metas = []
    for t in targets:
        meta = dict(t.get("meta") or {})
        if t.get("image_id") is not None:
            meta.setdefault("image_id", t["image_id"])
        metas.append(meta)
    return metas


class DetectorBase(BackboneModel):
    """Backbone + head + loss + postprocessor, and the shared flow (see the module docstring).

    Args:
        backbone: backbone config or module; must have the attributes in ``backbone_attributes``.
        head: head config, built with ``in_channels=backbone.out_channels``, ``num_classes`` and
            :meth:`head_defaults`.
        loss: loss config, built with ``num_classes``.
        postprocessor: config of the batched postprocessor (``dict(type="batched_nms", ...)``).
        num_classes: C; injected by the builder from the class list.
        class_names: names of the C classes, stored for inference and checkpoints.

    Attributes: ``num_classes``, ``class_names``, ``in_channels`` (1 or 3, the backbone's),
    ``min_input_size``, the non-persistent buffers ``pixel_mean`` / ``pixel_std`` ``[1, C, 1, 1]``.
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
        super().__init__(backbone, num_classes, class_names)
        self.head = registry.build("heads", head, path="model.head", in_channels=self.backbone.out_channels,
                                   num_classes=num_classes, **self.head_defaults())
        self.check_head()
        self.loss = registry.build("losses", loss, path="model.loss", num_classes=num_classes)
        if getattr(self.loss, "num_classes", num_classes) != num_classes:
            raise ConfigError(f"model.loss: the loss expects {self.loss.num_classes} classes but the data has "
                              f"{num_classes}; leave num_classes out of the loss config")
        self.postprocessor = registry.build("postprocessors", postprocessor, path="model.postprocessor")

    # -- construction hooks ----------------------------------------------------------------------
    def head_defaults(self) -> dict:
        """Extra values the head is built with (besides ``in_channels`` and ``num_classes``)."""
        return {}

    def check_head(self) -> None:
        """Refuse a head that cannot serve this detector (called right after it is built)."""
        head_classes = getattr(self.head, "num_classes", self.num_classes)
        if head_classes != self.num_classes:
            raise ConfigError(f"model.head: the head predicts {head_classes} classes but the data has "
                              f"{self.num_classes}; leave num_classes out of the head config (it follows the "
                              f"class list)")

    # -- the shared flow ---------------------------------------------------------------------------
    def forward(self, images: Tensor, targets: Sequence[Mapping] | None = None,
                metas: Sequence[Mapping | None] | None = None):
        self.check_inputs(images, targets, metas)
        if self.training:
            return self.forward_train(images, targets, list(metas) if metas is not None else target_metas(targets))
        return self.map_to_original(self.forward_test(images, metas), metas)

    def forward_train(self, images: Tensor, targets: Sequence[Mapping],
                      metas: Sequence[Mapping]) -> dict[str, Tensor]:
        """The loss dict for checked ``images`` and ``targets`` (``metas``: one dict per image)."""
        raise NotImplementedError

    def forward_test(self, images: Tensor, metas: Sequence[Mapping | None] | None) -> list[dict]:
        """Detections in input pixels (the base maps them to the originals afterwards)."""
        raise NotImplementedError

    @staticmethod
    def map_to_original(detections: list[dict], metas: Sequence[Mapping | None] | None) -> list[dict]:
        """Boxes from input pixels to original-image pixels, for every image that has a meta."""
        if metas is None:
            return detections
        for i, (det, meta) in enumerate(zip(detections, metas)):
            if not meta:
                continue
            missing = [key for key in _MAPPING_KEYS if key not in meta]
            if missing:
                raise ValueError(f"metas[{i}] (image {image_name(meta, i)}) has no {', '.join(missing)}: "
                                 f"the meta of a resize / letterbox is needed to map boxes back")
            det["boxes"] = boxes_to_original(det["boxes"], meta)
        return detections

    # -- input checks ------------------------------------------------------------------------------
    def check_inputs(self, images, targets, metas=None) -> None:
        self.check_images(images)
        if is_tracing():
            return  # sizes are traced values (see is_tracing); a trace is fed by code checked in eager mode
        n = images.shape[0]
        if metas is not None:
            _check_per_image(metas, n, "metas", allow_none=True)
        if not self.training:
            if targets is not None:
                raise ValueError(f"{type(self).__name__} in eval mode takes no targets; pass the image metas "
                                 f"as metas=[t['meta'] for t in targets] to get boxes in original pixels")
            return
        if targets is None:
            raise ValueError(f"{type(self).__name__} in training mode needs targets (call model.eval() to detect)")
        _check_per_image(targets, n, "targets")
        try:
            check_targets(targets, self.num_classes)
        except ValueError as exc:
            message = str(exc)
            found = re.match(r"targets\[(\d+)\]", message)
            if found:
                i = int(found.group(1))
                name = image_name(metas[i] if metas is not None else targets[i].get("meta"))
                if name:
                    message += f" (image {name})"
            raise DataError(message) from exc


def _check_per_image(items, batch_size: int, what: str, allow_none: bool = False) -> None:
    if isinstance(items, Mapping) or not isinstance(items, Sequence):
        raise TypeError(f"{what} must be a list with one dict per image, got {type(items).__name__}")
    if len(items) != batch_size:
        raise ValueError(f"{batch_size} images but {len(items)} {what}")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) and not (allow_none and item is None):
            raise TypeError(f"{what}[{i}] must be a dict, got {type(item).__name__}")
