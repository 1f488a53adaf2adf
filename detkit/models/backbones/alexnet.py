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
"""

from __future__ import annotations


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

__all__ = ["alexnet"]

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
