"""AlexNet (Krizhevsky et al., 2012; torchvision's one-GPU variant) without ``avgpool`` and
``classifier``.

The trunk is torchvision's ``features``:

* stem: ``features.0-2`` (conv 11×11/4, ReLU, max-pool 3/2; 64 channels, stride 8)
* stage 0: ``features.3-5`` (conv 5×5, ReLU, max-pool; 192 channels, stride 16)
* stage 1: ``features.6-12`` (three 3×3 convs, max-pool; 256 channels, stride 32)

Map size: the first conv (padding 2 for an 11×11 kernel) and the unpadded 3×3 max-pools lose
border cells, so the map is one cell smaller than H/32 on a multiple of 32 (224 → 6, 448 → 13);
use :meth:`Backbone.feature_sizes` rather than H // stride. The smallest input is 63×63.
State-dict keys are torchvision's minus ``classifier.*``.

``alexnet_d2l`` is the course's AlexNet (d2l.ai, section "Deep Convolutional Neural Networks"): the
paper's 96/256/384/384/256 channels (torchvision's one-GPU variant has 64/192/384/256/256), the
first conv padded by 1 (224 -> 54 -> 26 -> 12 -> 5, the book's table), every conv with its bias, and
``lrn=True`` (default) the paper's local response normalisation, which d2l leaves out: after the
ReLU of conv1 and conv2, before their max-pools ("Response-normalization layers follow the first and
second convolutional layers"), with the paper's ``k=2, n=5, alpha=1e-4, beta=0.75``. ``lrn=False`` is
d2l's code exactly. Modules are named ``conv1, relu1, lrn1, pool1, ...``; stem ``conv1..pool1`` (96
channels, stride 8), stage 0 ``conv2..pool2`` (256, 16), stage 1 ``conv3..pool5`` (256, 32). The
smallest input is 65x65. No published weights.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.alexnet import AlexNet

from detkit.models.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_factory,
    Layout,
    Stage,
    sequential_names,
)
from detkit.models.backbones.d2l import course_parts

__all__ = ["alexnet", "alexnet_d2l", "paper_lrn"]

_LAYOUT = Layout(
    stem=Stage(sequential_names("features", 0, 3), 64, 8),
    stages=(
        Stage(sequential_names("features", 3, 6), 192, 16),
        Stage(sequential_names("features", 6, 13), 256, 32),
    ),
    first_conv="features.0",
    pixel_mean=IMAGENET_MEAN,
    pixel_std=IMAGENET_STD,
    min_input_size=63,
    classifier_keys=("classifier.",),
    published_weights="alexnet",
)


def _alexnet_parts() -> tuple[dict, Layout]:
    # The classifier (~58M parameters, thrown away) is never materialised: the net is built on the
    # meta device and only `features` is given real storage. torchvision's AlexNet has no init
    # code of its own, so reset_parameters() gives exactly its (PyTorch default) initialisation.
    with torch.device("meta"):
        net = AlexNet()
    features = net.features.to_empty(device=torch.empty(0).device)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return {"features": features}, _LAYOUT


alexnet = backbone_factory("alexnet", _alexnet_parts, "AlexNet trunk: 256 channels at stride 32 (options: see :class:`Backbone`).", __name__)


def paper_lrn() -> nn.LocalResponseNorm:
    """The AlexNet paper's response normalisation, ``b = a / (k + alpha * sum a^2)^beta`` over ``n=5``
    neighbouring maps with ``k=2, alpha=1e-4, beta=0.75``. PyTorch (like Caffe) divides ``alpha`` by
    ``n``, so the paper's alpha is passed as ``5 * 1e-4``."""
    return nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)


def _alexnet_d2l_parts(lrn: bool) -> tuple[dict, Layout]:
    def block(index: int, conv: nn.Conv2d, normalise: bool = False, pool: bool = False) -> list[str]:
        """conv -> ReLU [-> LRN] [-> max-pool 3/2], added to ``modules``; returns their names."""
        layers = {f"conv{index}": conv, f"relu{index}": nn.ReLU(inplace=True)}
        if normalise:
            layers[f"lrn{index}"] = paper_lrn()
        if pool:
            layers[f"pool{index}"] = nn.MaxPool2d(kernel_size=3, stride=2)
        modules.update(layers)
        return list(layers)

    modules: OrderedDict[str, nn.Module] = OrderedDict()
    stem = block(1, nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=1), normalise=lrn, pool=True)
    stage0 = block(2, nn.Conv2d(96, 256, kernel_size=5, padding=2), normalise=lrn, pool=True)
    stage1 = (block(3, nn.Conv2d(256, 384, kernel_size=3, padding=1))
              + block(4, nn.Conv2d(384, 384, kernel_size=3, padding=1))
              + block(5, nn.Conv2d(384, 256, kernel_size=3, padding=1), pool=True))
    stages = (Stage(tuple(stage0), 256, 16), Stage(tuple(stage1), 256, 32))
    return course_parts(modules, Stage(tuple(stem), 96, 8), stages, "conv1", min_input_size=65)


alexnet_d2l = backbone_factory(
    "alexnet_d2l", _alexnet_d2l_parts,
    """The course's AlexNet (d2l.ai's, 96/256/384/384/256 channels) trunk: 256 channels at stride 32.

    ``lrn``: the paper's local response normalisation after conv1 and conv2 (``False``: d2l's code
    exactly). Other options: see :class:`Backbone`.
    """,
    __name__, lrn=True,
)
