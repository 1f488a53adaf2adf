"""ResNet-18/34/50 (He et al., 2015) from torchvision, without ``avgpool`` and ``fc``.

Stem: ``conv1, bn1, relu, maxpool`` (64 channels, stride 4).
Stages (``out_indices``): 0..3 = ``layer1..layer4``, strides 4/8/16/32; channels 64/128/256/512
(ResNet-18/34) or 256/512/1024/2048 (ResNet-50). State-dict keys are torchvision's minus ``fc.*``,
so torchvision's ``.pth`` files load unchanged. Any input size works (``min_input_size`` 1); on a
multiple of 32 the last map is exactly H/32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torchvision.models import resnet as tv_resnet  # the module (there is no function 'resnet')

from detkit.models.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, Layout, Stage

__all__ = ["resnet18", "resnet34", "resnet50"]

_STEM = ("conv1", "bn1", "relu", "maxpool")


def _resnet(name, constructor, expansion: int, **options) -> Backbone:
    net = constructor(weights=None)
    widths = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    layout = Layout(
        stem=Stage(_STEM, 64, 4),
        stages=tuple(
            Stage((f"layer{i + 1}",), widths[i], 4 * 2**i) for i in range(4)
        ),
        first_conv="conv1",
        pixel_mean=IMAGENET_MEAN,
        pixel_std=IMAGENET_STD,
        min_input_size=1,
        classifier_keys=("fc.",),
    )
    modules = {n: getattr(net, n) for n in (*_STEM, "layer1", "layer2", "layer3", "layer4")}
    return Backbone(name, modules, layout, **options)


def resnet18(
    *,
    pretrained: str | os.PathLike | None = None,
    strict: bool = True,
    in_channels: int = 3,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    out_indices: Sequence[int] | None = None,
) -> Backbone:
    """ResNet-18 trunk: 512 channels at stride 32 (options: see :class:`Backbone`)."""
    return _resnet(
        "resnet18", tv_resnet.resnet18, 1, pretrained=pretrained, strict=strict, in_channels=in_channels,
        frozen_stages=frozen_stages, norm_eval=norm_eval, out_indices=out_indices,
    )


def resnet34(
    *,
    pretrained: str | os.PathLike | None = None,
    strict: bool = True,
    in_channels: int = 3,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    out_indices: Sequence[int] | None = None,
) -> Backbone:
    """ResNet-34 trunk: 512 channels at stride 32 (options: see :class:`Backbone`)."""
    return _resnet(
        "resnet34", tv_resnet.resnet34, 1, pretrained=pretrained, strict=strict, in_channels=in_channels,
        frozen_stages=frozen_stages, norm_eval=norm_eval, out_indices=out_indices,
    )


def resnet50(
    *,
    pretrained: str | os.PathLike | None = None,
    strict: bool = True,
    in_channels: int = 3,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    out_indices: Sequence[int] | None = None,
) -> Backbone:
    """ResNet-50 trunk (bottleneck blocks): 2048 channels at stride 32 (options: see :class:`Backbone`)."""
    return _resnet(
        "resnet50", tv_resnet.resnet50, 4, pretrained=pretrained, strict=strict, in_channels=in_channels,
        frozen_stages=frozen_stages, norm_eval=norm_eval, out_indices=out_indices,
    )
