"""ResNet-18/34/50 (He et al., 2015) from torchvision, without ``avgpool`` and ``fc``.

Stem: ``conv1, bn1, relu, maxpool`` (64 channels, stride 4).
Stages (``out_indices``): 0..3 = ``layer1..layer4``, strides 4/8/16/32; channels 64/128/256/512
(ResNet-18/34) or 256/512/1024/2048 (ResNet-50). State-dict keys are torchvision's minus ``fc.*``,
so torchvision's ``.pth`` files load unchanged. Any input size works (``min_input_size`` 1); on a
multiple of 32 the last map is exactly H/32.
"""

from __future__ import annotations

from functools import partial

from torchvision.models import resnet as tv_resnet  # the module (there is no function 'resnet')

from detkit.models.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Layout, Stage, backbone_factory

__all__ = ["resnet18", "resnet34", "resnet50"]

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
