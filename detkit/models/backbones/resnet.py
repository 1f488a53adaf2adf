"""ResNet-18/34/50 (He et al., 2015) from torchvision, without ``avgpool`` and ``fc``.

Stem: ``conv1, bn1, relu, maxpool`` (64 channels, stride 4).
Stages (``out_indices``): 0..3 = ``layer1..layer4``, strides 4/8/16/32; channels 64/128/256/512
(ResNet-18/34) or 256/512/1024/2048 (ResNet-50). State-dict keys are torchvision's minus ``fc.*``,
so torchvision's ``.pth`` files load unchanged. Any input size works (``min_input_size`` 1); on a
multiple of 32 the last map is exactly H/32.

``resnet18_d2l`` is the course's ResNet-18 (d2l.ai, section "Residual Networks"). Its residual block
(:class:`Residual`) is the book's: conv 3×3 (with bias) -> BN -> ReLU -> conv 3×3 -> BN, plus the
input or, when the block changes width or resolution, a 1×1 conv of the input (with bias and *no*
BatchNorm; torchvision's shortcut is conv without bias + BN); ReLU after the sum. Stages ``layer1``
... ``layer4`` hold two blocks each (64/128/256/512 channels; the first block of layers 2-4 has
stride 2 and the 1×1 shortcut). Two stems, both the book's (``stem=``):

* ``"small"`` (default): ``d2l.resnet18``, the ResNet-18 the book trains on its small images
  (Fashion-MNIST, CIFAR-10): conv 3×3/1 (64) -> BN -> ReLU, no max-pool. Stride 1, so the stages are
  at strides 1/2/4/8 (a 28×28 image gives 28, 28, 14, 7, 4): sixteen times the compute of the
  ImageNet stem at the same input size.
* ``"imagenet"``: the book's ``ResNet18`` class: conv 7×7/2 (64) -> BN -> ReLU -> max-pool 3×3/2,
  strides 4/8/16/32 like torchvision's (its table at 96×96: 24, 24, 12, 6, 3).

Modules: ``conv1, bn1, relu`` (+ ``maxpool``), then ``layer1..4`` (blocks with the book's names
``conv1, bn1, conv2, bn2, conv3``). No published weights.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import resnet as tv_resnet  # the module (there is no function 'resnet')

from detkit.errors import ConfigError
from detkit.models.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Layout, Stage, backbone_factory
from detkit.models.backbones.d2l import course_parts

__all__ = ["resnet18", "resnet34", "resnet50", "resnet18_d2l", "Residual"]

_STEM = ("conv1", "bn1", "relu", "maxpool")


def _resnet_parts(constructor, expansion: int) -> tuple[dict, Layout]:
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
        published_weights=constructor.__name__,
    )
    modules = {n: getattr(net, n) for n in (*_STEM, "layer1", "layer2", "layer3", "layer4")}
    return modules, layout


resnet18 = backbone_factory(
    "resnet18", partial(_resnet_parts, tv_resnet.resnet18, 1),
    "ResNet-18 trunk: 512 channels at stride 32 (options: see :class:`Backbone`).", __name__,
)


resnet34 = backbone_factory(
    "resnet34", partial(_resnet_parts, tv_resnet.resnet34, 1),
    "ResNet-34 trunk: 512 channels at stride 32 (options: see :class:`Backbone`).", __name__,
)


resnet50 = backbone_factory(
    "resnet50", partial(_resnet_parts, tv_resnet.resnet50, 4),
    "ResNet-50 trunk (bottleneck blocks): 2048 channels at stride 32 (options: see :class:`Backbone`).", __name__,
)


class Residual(nn.Module):
    """d2l's residual block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, where the
    shortcut is ``x`` or, with ``use_1x1conv``, the 1×1 conv ``conv3`` (stride ``stride``, no BN)."""

    def __init__(self, in_channels: int, channels: int, use_1x1conv: bool = False, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride) if use_1x1conv else None
        self.bn1 = nn.BatchNorm2d(channels)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return F.relu(y + x)


_D2L_STEMS = ("small", "imagenet")


def _resnet18_d2l_parts(stem: str) -> tuple[dict, Layout]:
    if stem not in _D2L_STEMS:
        raise ConfigError(f"backbone 'resnet18_d2l': stem must be one of {list(_D2L_STEMS)}, got {stem!r}")
    if stem == "small":  # d2l.resnet18: "a smaller convolution kernel, stride, and padding", no max-pool
        modules = {"conv1": nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1)}
    else:  # d2l's ResNet.b1
        modules = {"conv1": nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3)}
    modules.update(bn1=nn.BatchNorm2d(64), relu=nn.ReLU())
    if stem == "imagenet":
        modules["maxpool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    stem_stage = Stage(tuple(modules), 64, 1 if stem == "small" else 4)

    stages, channels, stride = [], 64, stem_stage.stride
    for index, width in enumerate((64, 128, 256, 512), start=1):
        first = index == 1  # the first stage keeps width and resolution: plain identity shortcuts
        modules[f"layer{index}"] = nn.Sequential(
            Residual(channels, width, use_1x1conv=not first, stride=1 if first else 2),
            Residual(width, width),
        )
        channels, stride = width, stride if first else stride * 2
        stages.append(Stage((f"layer{index}",), width, stride))
    return course_parts(modules, stem_stage, stages, "conv1")


resnet18_d2l = backbone_factory(
    "resnet18_d2l", _resnet18_d2l_parts,
    """The course's ResNet-18 (d2l.ai's residual blocks): 512 channels at stride 8 (``stem="small"``,
    default) or 32 (``stem="imagenet"``).

    ``stem``: ``"small"`` (d2l.resnet18: conv 3×3/1, no max-pool) or ``"imagenet"`` (conv 7×7/2 and
    max-pool). Other options: see :class:`Backbone`.
    """,
    __name__, stem="small",
)
