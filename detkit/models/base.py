"""What every detkit model built on a backbone shares, detectors and classifiers alike: the class list,
building and checking the backbone, the input normalisation (grey from RGB for a 1-channel
backbone), the image checks and ``features()``.

:class:`~detkit.models.detectors.base.DetectorBase` and
:class:`~detkit.models.classifiers.image_classifier.ImageClassifier` derive from :class:`BackboneModel`
and add only what is their own (head, loss, postprocessor, targets). That is what makes a classifier's
backbone weights the same tensors under the same names as a detector's (``backbone.*``), so a
classification checkpoint is a detector's ``backbone.pretrained``.

Checks that read tensor values (the 0..255 check) are skipped while ``torch.jit.trace``,
``torch.onnx.export``, ``torch.export`` or ``torch.compile`` capture the model, and under
``torch.jit.trace`` (where sizes are traced values too) so are the shape checks: a traced check would
be frozen into the graph or break the export, and a captured model is fed by code that has been run,
checked, in eager mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit import registry
from detkit.errors import ConfigError
from detkit.registry import Spec

__all__ = ["BackboneModel", "LUMA_WEIGHTS", "is_capturing", "is_tracing"]

# ITU-R BT.601 luma, what PIL's convert("L") computes: the grey a 1-channel model sees of RGB input.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def is_tracing() -> bool:
    """True inside ``torch.jit.trace`` (and the TorchScript-based ``torch.onnx.export``), where even
    tensor sizes are traced values: a Python check on them would be frozen into the trace."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def is_capturing() -> bool:
    """True while torch.jit.trace, torch.onnx.export, torch.export or torch.compile runs the model:
    reading a tensor's values in Python then breaks the export (or the compiled graph)."""
    return bool(is_tracing() or torch.compiler.is_compiling())


class BackboneModel(nn.Module):
    """The class list and the backbone of a model, and the way images reach the backbone.

    Args:
        backbone: backbone config or module; must have the attributes in ``backbone_attributes``.
        num_classes: C; injected by the builder from the class list.
        class_names: names of the C classes, stored for inference and checkpoints.

    Attributes: ``num_classes``, ``class_names``, ``backbone``, ``in_channels`` (1 or 3, the
    backbone's), ``min_input_size``, the non-persistent buffers ``pixel_mean`` / ``pixel_std``
    ``[1, C, 1, 1]``.
    """

    # What a backbone must offer this model (the backbone contract of docs/architecture.md).
    backbone_attributes: tuple[str, ...] = ("out_channels", "pixel_mean", "pixel_std")

    def __init__(self, backbone: Spec, num_classes: int, class_names: Sequence[str] | None = None):
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

    def _set_normalisation(self) -> None:
        mean, std = tuple(self.backbone.pixel_mean), tuple(self.backbone.pixel_std)
        channels = getattr(self.backbone, "in_channels", len(mean))
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
            raise ConfigError(f"model.backbone: models take RGB (in_channels=3) or grey (in_channels=1) "
                              f"images; this backbone has in_channels={channels} with {len(mean)} pixel_mean "
                              f"and {len(std)} pixel_std values")
        self.in_channels = channels
        # Not persistent: they belong to the backbone's definition, not to the trained weights.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1),
                             persistent=False)

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
