"""VGG-11/16 with and without BatchNorm (Simonyan & Zisserman, 2014) from torchvision, without
``avgpool`` and ``classifier``.

The trunk is torchvision's ``features``; its five blocks each end in a 2×2 max-pool:

* stem: block 1 (64 channels, stride 2)
* stages 0..3: blocks 2..5 (128/256/512/512 channels, strides 4/8/16/32)

The last map is the output of the fifth pool (512 channels, stride 32), as torchvision's
``features``. State-dict keys are torchvision's minus ``classifier.*``. The unpadded pools need at
least 32×32 inputs; a multiple of 32 gives exactly H/32.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models import vgg as tv_vgg

from detkit.models.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_factory,
    Layout,
    Stage,
    sequential_names,
)

__all__ = ["vgg11", "vgg11_bn", "vgg16", "vgg16_bn"]


def _layout(features: nn.Sequential, model: str) -> Layout:
    """Cut ``features`` after each max-pool: block 1 is the stem, blocks 2-5 the stages."""
    blocks, start, channels, stride = [], 0, 0, 1
    for i, module in enumerate(features):
        if isinstance(module, nn.Conv2d):
            channels = module.out_channels
        elif isinstance(module, nn.MaxPool2d):
            stride *= 2
            blocks.append(Stage(sequential_names("features", start, i + 1), channels, stride))
            start = i + 1
    return Layout(
        stem=blocks[0],
        stages=tuple(blocks[1:]),
        first_conv="features.0",
        pixel_mean=IMAGENET_MEAN,
        pixel_std=IMAGENET_STD,
        min_input_size=32,
        classifier_keys=("classifier.",),
        published_weights=model,
    )


def _vgg_parts(model: str, config: str, batch_norm: bool) -> tuple[dict, Layout]:
    features = tv_vgg.make_layers(tv_vgg.cfgs[config], batch_norm=batch_norm)
    # torchvision's VGG constructor initialises `features` in place (Kaiming, fan-out). Its
    # classifier (~120M parameters, thrown away here) is created on the meta device so building a
    # backbone does not spend a second and 500 MB initialising it.
    with torch.device("meta"):
        tv_vgg.VGG(features, init_weights=True)
    return {"features": features}, _layout(features, model)


vgg11 = backbone_factory(
    "vgg11", partial(_vgg_parts, "vgg11", "A", False),
    "VGG-11 (configuration A) trunk: 512 channels at stride 32 (options: see :class:`Backbone`).", __name__,
)


vgg11_bn = backbone_factory(
    "vgg11_bn", partial(_vgg_parts, "vgg11_bn", "A", True),
    "VGG-11 with BatchNorm after every conv: 512 channels at stride 32.", __name__,
)


vgg16 = backbone_factory(
    "vgg16", partial(_vgg_parts, "vgg16", "D", False),
    "VGG-16 (configuration D) trunk: 512 channels at stride 32 (options: see :class:`Backbone`).", __name__,
)


vgg16_bn = backbone_factory(
    "vgg16_bn", partial(_vgg_parts, "vgg16_bn", "D", True),
    "VGG-16 with BatchNorm after every conv: 512 channels at stride 32.", __name__,
)
