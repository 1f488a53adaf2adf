"""MobileNetV2 (Sandler et al., 2018) from torchvision, without its classifier.

The trunk is torchvision's ``features`` (19 modules), cut at the resolution changes:

* stem: ``features.0-1`` (stride-2 conv and the first inverted residual; 16 channels, stride 2)
* stage 0: ``features.2-3``  (24 channels, stride 4)
* stage 1: ``features.4-6``  (32 channels, stride 8)
* stage 2: ``features.7-13`` (96 channels, stride 16)
* stage 3: ``features.14-18`` (160 → 320 inverted residuals and the 1×1 conv to 1280; stride 32)

State-dict keys are torchvision's minus ``classifier.*``. Every layer is padded, so any input size
works (``min_input_size`` 1) and a multiple of 32 gives exactly H/32.
"""

from __future__ import annotations


from torchvision.models.mobilenetv2 import mobilenet_v2 as tv_mobilenet_v2

from detkit.models.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_factory,
    Layout,
    Stage,
    sequential_names,
)

__all__ = ["mobilenet_v2"]

_LAYOUT = Layout(
    stem=Stage(sequential_names("features", 0, 2), 16, 2),
    stages=(
        Stage(sequential_names("features", 2, 4), 24, 4),
        Stage(sequential_names("features", 4, 7), 32, 8),
        Stage(sequential_names("features", 7, 14), 96, 16),
        Stage(sequential_names("features", 14, 19), 1280, 32),
    ),
    first_conv="features.0.0",
    pixel_mean=IMAGENET_MEAN,
    pixel_std=IMAGENET_STD,
    min_input_size=1,
    classifier_keys=("classifier.",),
    published_weights="mobilenet_v2",
)


def _mobilenet_v2_parts() -> tuple[dict, Layout]:
    net = tv_mobilenet_v2(weights=None)
    return {"features": net.features}, _LAYOUT


mobilenet_v2 = backbone_factory("mobilenet_v2", _mobilenet_v2_parts, "MobileNetV2 trunk (width 1.0): 1280 channels at stride 32 (options: see :class:`Backbone`).", __name__)
