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

import os
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import vgg as tv_vgg

from detkit.models.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    Layout,
    Stage,
    sequential_names,
)

__all__ = ["vgg11", "vgg11_bn", "vgg16", "vgg16_bn"]


def _layout(features: nn.Sequential) -> Layout:
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
    )


def _vgg(name: str, config: str, batch_norm: bool, **options) -> Backbone:
    features = tv_vgg.make_layers(tv_vgg.cfgs[config], batch_norm=batch_norm)
    # torchvision's VGG constructor initialises `features` in place (Kaiming, fan-out). Its
    # classifier (~120M parameters, thrown away here) is created on the meta device so building a
    # backbone does not spend a second and 500 MB initialising it.
    with torch.device("meta"):
        tv_vgg.VGG(features, init_weights=True)
    return Backbone(name, {"features": features}, _layout(features), **options)


def vgg11(
    *,
    pretrained: str | os.PathLike | None = None,
    strict: bool = True,
    in_channels: int = 3,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    out_indices: Sequence[int] | None = None,
) -> Backbone:
    """VGG-11 (configuration A) trunk: 512 channels at stride 32 (options: see :class:`Backbone`)."""
    return _vgg(
        "vgg11", "A", False, pretrained=pretrained, strict=strict, in_channels=in_channels,
        frozen_stages=frozen_stages, norm_eval=norm_eval, out_indices=out_indices,
    )


def vgg11_bn(
    *,
    pretrained: str | os.PathLike | None = None,
    strict: bool = True,
    in_channels: int = 3,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    out_indices: Sequence[int] | None = None,
) -> Backbone:
    """VGG-11 with BatchNorm after every conv: 512 channels at stride 32."""
    return _vgg(
        "vgg11_bn", "A", True, pretrained=pretrained, strict=strict, in_channels=in_channels,
        frozen_stages=frozen_stages, norm_eval=norm_eval, out_indices=out_indices,
    )


def vgg16(
    *,
    pretrained: str | os.PathLike | None = None,
    strict: bool = True,
    in_channels: int = 3,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    out_indices: Sequence[int] | None = None,
) -> Backbone:
    """VGG-16 (configuration D) trunk: 512 channels at stride 32 (options: see :class:`Backbone`)."""
    return _vgg(
        "vgg16", "D", False, pretrained=pretrained, strict=strict, in_channels=in_channels,
        frozen_stages=frozen_stages, norm_eval=norm_eval, out_indices=out_indices,
    )


def vgg16_bn(
    *,
    pretrained: str | os.PathLike | None = None,
    strict: bool = True,
    in_channels: int = 3,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    out_indices: Sequence[int] | None = None,
) -> Backbone:
    """VGG-16 with BatchNorm after every conv: 512 channels at stride 32."""
    return _vgg(
        "vgg16_bn", "D", True, pretrained=pretrained, strict=strict, in_channels=in_channels,
        frozen_stages=frozen_stages, norm_eval=norm_eval, out_indices=out_indices,
    )
