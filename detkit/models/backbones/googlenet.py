"""GoogLeNet / Inception v1 (Szegedy et al., 2014) from torchvision, without ``avgpool``,
``dropout``, ``fc`` and the auxiliary classifiers.

* stem: ``conv1, maxpool1, conv2, conv3`` (192 channels, stride 4)
* stage 0: ``maxpool2, inception3a, inception3b`` (480 channels, stride 8)
* stage 1: ``maxpool3, inception4a..4e`` (832 channels, stride 16)
* stage 2: ``maxpool4, inception5a, inception5b`` (1024 channels, stride 32)

State-dict keys are torchvision's minus ``fc.*``, ``aux1.*``, ``aux2.*``.

Normalisation: torchvision's ImageNet weights for GoogLeNet (ported from TensorFlow) expect inputs
scaled to [-1, 1]; torchvision builds that model with ``transform_input=True``, which converts
ImageNet-normalised inputs to ``(x - 0.5) / 0.5``. Here the trunk is built with
``transform_input=False`` and ``pixel_mean = pixel_std = (0.5, 0.5, 0.5)``, which is the same input
to ``conv1`` in one step.

The max-pools use ``ceil_mode`` (as torchvision): the smallest input is 15×15 and a multiple of 32
gives exactly H/32.

``googlenet_d2l`` is the course's GoogLeNet (d2l.ai, section "Multi-Branch Networks"): the paper's
inception blocks with a real 5×5 conv in the third branch (torchvision, following its TensorFlow
port, uses 3×3 there) and no batch-norm (torchvision puts one after every conv; the paper has none),
ReLU after every conv, and d2l's padded max-pools (3×3/2, padding 1). Like the book, it leaves out
the paper's local response normalisation in the stem and the auxiliary classifiers. Modules keep the
book's names: blocks ``b1`` ... ``b5``, and in each :class:`Inception` the branches ``b1_1``,
``b2_1, b2_2``, ``b3_1, b3_2``, ``b4_1, b4_2``. The book's blocks end with their max-pool, so its
printed table (at 96×96: 64×24×24, 192×12×12, 480×6×6, 832×3×3, then 1024 channels) is the stage
table here: stem ``b1`` (64 channels, stride 4), stages ``b2`` (192, 8), ``b3`` (480, 16), ``b4``
(832, 32), ``b5`` (1024, 32; without the global pooling). Every layer maps H to ceil(H/stride), so
any input size works. No published weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.googlenet import googlenet as tv_googlenet

from detkit.models.backbones.base import Layout, Stage, backbone_factory
from detkit.models.backbones.d2l import course_parts

__all__ = ["googlenet", "googlenet_d2l", "Inception"]

_STEM = ("conv1", "maxpool1", "conv2", "conv3")
_STAGES = (
    ("maxpool2", "inception3a", "inception3b"),
    ("maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e"),
    ("maxpool4", "inception5a", "inception5b"),
)

_LAYOUT = Layout(
    stem=Stage(_STEM, 192, 4),
    stages=(Stage(_STAGES[0], 480, 8), Stage(_STAGES[1], 832, 16), Stage(_STAGES[2], 1024, 32)),
    first_conv="conv1.conv",
    pixel_mean=(0.5, 0.5, 0.5),
    pixel_std=(0.5, 0.5, 0.5),
    min_input_size=15,
    classifier_keys=("fc.", "aux1.", "aux2."),
    published_weights="googlenet",
)


def _googlenet_parts() -> tuple[dict, Layout]:
    # init_weights=True is torchvision's default, spelled out to skip its FutureWarning.
    net = tv_googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=True)
    modules = {n: getattr(net, n) for n in (*_STEM, *(m for stage in _STAGES for m in stage))}
    return modules, _LAYOUT


googlenet = backbone_factory("googlenet", _googlenet_parts, "GoogLeNet trunk: 1024 channels at stride 32 (options: see :class:`Backbone`).", __name__)


class Inception(nn.Module):
    """d2l's inception block: four branches concatenated along channels.

    ``c1``: 1×1 conv; ``c2 = (reduce, out)``: 1×1 then 3×3; ``c3 = (reduce, out)``: 1×1 then 5×5;
    ``c4``: 3×3/1 max-pool then 1×1. ReLU after every conv; output ``c1 + c2[1] + c3[1] + c4`` channels.
    """

    def __init__(self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int):
        super().__init__()
        self.b1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.b2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.b2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.b3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.b3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.b4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = F.relu(self.b1_1(x))
        b2 = F.relu(self.b2_2(F.relu(self.b2_1(x))))
        b3 = F.relu(self.b3_2(F.relu(self.b3_1(x))))
        b4 = F.relu(self.b4_2(self.b4_1(x)))
        return torch.cat((b1, b2, b3, b4), dim=1)


# d2l's blocks b3-b5: (c1, c2, c3, c4) per inception block, then whether a max-pool closes the block.
_D2L_INCEPTIONS = (
    (((64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64)), True),
    (((192, (96, 208), (16, 48), 64), (160, (112, 224), (24, 64), 64), (128, (128, 256), (24, 64), 64),
      (112, (144, 288), (32, 64), 64), (256, (160, 320), (32, 128), 128)), True),
    (((256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128)), False),
)


def _d2l_pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def _googlenet_d2l_parts() -> tuple[dict, Layout]:
    blocks = {
        "b1": nn.Sequential(nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(), _d2l_pool()),
        "b2": nn.Sequential(nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
                            nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(), _d2l_pool()),
    }
    channels, stride, stages = 192, 8, [Stage(("b2",), 192, 8)]
    for index, (specs, pooled) in enumerate(_D2L_INCEPTIONS, start=3):
        layers = []
        for spec in specs:
            layers.append(Inception(channels, *spec))
            channels = layers[-1].out_channels
        if pooled:
            layers.append(_d2l_pool())
        blocks[f"b{index}"] = nn.Sequential(*layers)
        stride *= 2 if pooled else 1
        stages.append(Stage((f"b{index}",), channels, stride))
    return course_parts(blocks, Stage(("b1",), 64, 4), stages, "b1.0")


googlenet_d2l = backbone_factory(
    "googlenet_d2l", _googlenet_d2l_parts,
    "The course's GoogLeNet (d2l.ai's: 5×5 branches, no batch-norm) trunk: 1024 channels at stride 32 "
    "(options: see :class:`Backbone`).", __name__,
)
