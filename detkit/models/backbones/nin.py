"""Network in Network (Lin, Chen & Yan, 2013), written here (torchvision has no NiN), without the
classifier block.

An *mlpconv* block is a spatial conv followed by two 1×1 convs ("cascaded cross-channel
parametric pooling", a per-pixel MLP), each with ReLU; the ImageNet NiN (and the d2l course) stacks
three of them, each followed by a 3×3/2 max-pool, then a fourth mlpconv block with one channel per
class and global average pooling: that last block is the classifier and is removed here.
Submodules keep the Caffe model's names (``conv``, ``cccp1``, ``cccp2``).

* stem: ``mlpconv1`` (11×11/4, 96 channels), ``pool1`` (96 channels, stride 8)
* stage 0: ``mlpconv2`` (5×5, 256 channels), ``pool2`` (stride 16)
* stage 1: ``mlpconv3`` (3×3, 384 channels), ``pool3`` (stride 32)

Choices: the first conv is padded by 5 and the pools by 1 (the ImageNet model used none), so every
stride-s layer maps H to ceil(H/s): any input size works and the map is exactly ceil(H/32), as a
detection head expects. ``pixel_mean``/``pixel_std`` are ImageNet's (the net's home data set; there
are no standard pretrained weights). Convs are Kaiming-normal initialised with zero biases.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from detkit.models.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Layout, Stage, backbone_factory

__all__ = ["nin", "mlpconv"]

_LAYOUT = Layout(
    stem=Stage(("mlpconv1", "pool1"), 96, 8),
    stages=(Stage(("mlpconv2", "pool2"), 256, 16), Stage(("mlpconv3", "pool3"), 384, 32)),
    first_conv="mlpconv1.conv",
    pixel_mean=IMAGENET_MEAN,
    pixel_std=IMAGENET_STD,
    min_input_size=1,
)


def mlpconv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
) -> nn.Sequential:
    """One mlpconv block: a ``kernel_size`` conv and two 1×1 convs, each followed by ReLU."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
            relu0=nn.ReLU(inplace=True),
            cccp1=nn.Conv2d(out_channels, out_channels, 1),
            relu1=nn.ReLU(inplace=True),
            cccp2=nn.Conv2d(out_channels, out_channels, 1),
            relu2=nn.ReLU(inplace=True),
        )
    )


def _nin_parts() -> tuple[dict, Layout]:
    modules = {
        "mlpconv1": mlpconv(3, 96, kernel_size=11, stride=4, padding=5),
        "pool1": nn.MaxPool2d(3, stride=2, padding=1),
        "mlpconv2": mlpconv(96, 256, kernel_size=5, stride=1, padding=2),
        "pool2": nn.MaxPool2d(3, stride=2, padding=1),
        "mlpconv3": mlpconv(256, 384, kernel_size=3, stride=1, padding=1),
        "pool3": nn.MaxPool2d(3, stride=2, padding=1),
    }
    for block in (modules["mlpconv1"], modules["mlpconv2"], modules["mlpconv3"]):
        for layer in block:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
    return modules, _LAYOUT


nin = backbone_factory("nin", _nin_parts, "NiN trunk (three mlpconv blocks): 384 channels at stride 32 (options: see :class:`Backbone`).", __name__)
