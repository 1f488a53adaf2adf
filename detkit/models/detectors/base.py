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
of range) into clear errors naming the image. Checks that read tensor values (the 0..255 check) are
skipped while ``torch.jit.trace``, ``torch.onnx.export``, ``torch.export`` or ``torch.compile``
capture the model, and under ``torch.jit.trace`` (where sizes are traced values too) so are the shape
checks: a traced check would be frozen into the graph or break the export, and a captured model is
fed by code that has been run, checked, in eager mode.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from detkit import registry
from detkit.errors import ConfigError, DataError
from detkit.registry import Spec
from detkit.structures import boxes_to_original, check_targets

__all__ = ["DetectorBase", "image_name", "is_capturing", "is_tracing"]

# ITU-R BT.601 luma, what PIL's convert("L") computes: the grey a 1-channel detector sees of RGB input.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# The keys boxes_to_original() needs from a meta.
_MAPPING_KEYS = ("orig_size", "scale", "pad")


def is_tracing() -> bool:
    """True inside ``torch.jit.trace`` (and the TorchScript-based ``torch.onnx.export``), where even
    tensor sizes are traced values: a Python check on them would be frozen into the trace."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def is_capturing() -> bool:
    """True while torch.jit.trace, torch.onnx.export, torch.export or torch.compile runs the model:
    reading a tensor's values in Python then breaks the export (or the compiled graph)."""
    return bool(is_tracing() or torch.compiler.is_compiling())


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


class DetectorBase(nn.Module):
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

    # What a backbone must offer this detector (the backbone contract of docs/architecture.md).
    backbone_attributes: tuple[str, ...] = ("out_channels", "pixel_mean", "pixel_std")

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
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"model: num_classes must be a positive integer, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"model: {len(class_names)} class names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names is not None else tuple(
            f"class_{i}" for i in range(num_classes))

        self.backbone = registry.build("backbones", backbone, path="model.backbone")
        for attr in self.backbone_attributes:
            if not hasattr(self.backbone, attr):
                raise ConfigError(f"model.backbone: {type(self.backbone).__name__} has no '{attr}' attribute, "
                                  f"which the backbone contract requires")
        self._set_normalisation()
        self.min_input_size = int(getattr(self.backbone, "min_input_size", 1))

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

    def _set_normalisation(self) -> None:
        mean, std = tuple(self.backbone.pixel_mean), tuple(self.backbone.pixel_std)
        channels = getattr(self.backbone, "in_channels", len(mean))
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
            raise ConfigError(f"model.backbone: detectors take RGB (in_channels=3) or grey (in_channels=1) "
                              f"images; this backbone has in_channels={channels} with {len(mean)} pixel_mean "
                              f"and {len(std)} pixel_std values")
        self.in_channels = channels
        # Not persistent: they belong to the backbone's definition, not to the trained weights.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1),
                             persistent=False)

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

    def normalise(self, images: Tensor) -> Tensor:
        """Images 0..1 -> the backbone's input: grey from RGB for a 1-channel backbone, then
        ``(x - pixel_mean) / pixel_std``."""
        if self.in_channels == 1 and images.shape[1] == 3:
            weights = images.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
            images = (images * weights).sum(dim=1, keepdim=True)
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def features(self, images: Tensor) -> Tensor:
        """Images 0..1 -> the backbone's last feature map (normalised first)."""
        features = self.backbone(self.normalise(images))
        if isinstance(features, (list, tuple)):  # a backbone built with out_indices: use the last map
            features = features[-1]
        return features

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

    def check_images(self, images) -> None:
        """Type, shape, dtype, 0..1 range and minimum size of ``images``."""
        expected = "[N, 3, H, W] RGB" if self.in_channels == 3 else "[N, 1, H, W] grey or [N, 3, H, W] RGB"
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a float tensor {expected}, got {type(images).__name__}")
        if is_tracing():
            return  # sizes are traced values (see is_tracing)
        if images.ndim != 4 or images.shape[1] not in (3, self.in_channels):
            raise ValueError(f"images must be {expected}, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in 0..1, got {images.dtype} (divide uint8 images by 255)")
        # 0..255 input is the classic mistake; it would train, just badly, so stop it here. Reading
        # a value is not possible while the model is captured (see the module docstring); shapes
        # are, and become the export's guards.
        if not is_capturing() and images.numel():
            peak = float(images.detach().amax())
            if peak > 1.5:
                raise ValueError(f"images must be scaled to 0..1, found values up to {peak:.1f} "
                                 f"(divide 0..255 images by 255)")
        h, w = images.shape[-2:]
        if min(h, w) < self.min_input_size:
            raise ValueError(f"input {h}x{w} is smaller than the backbone's minimum {self.min_input_size} px")


def _check_per_image(items, batch_size: int, what: str, allow_none: bool = False) -> None:
    if isinstance(items, Mapping) or not isinstance(items, Sequence):
        raise TypeError(f"{what} must be a list with one dict per image, got {type(items).__name__}")
    if len(items) != batch_size:
        raise ValueError(f"{batch_size} images but {len(items)} {what}")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) and not (allow_none and item is None):
            raise TypeError(f"{what}[{i}] must be a dict, got {type(item).__name__}")
