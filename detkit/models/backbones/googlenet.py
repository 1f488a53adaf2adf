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
"""

from __future__ import annotations


from torchvision.models.googlenet import googlenet as tv_googlenet

from detkit.models.backbones.base import Layout, Stage, backbone_factory

__all__ = ["googlenet"]

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
)


def _googlenet_parts() -> tuple[dict, Layout]:
    # init_weights=True is torchvision's default, spelled out to skip its FutureWarning.
    net = tv_googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=True)
    modules = {n: getattr(net, n) for n in (*_STEM, *(m for stage in _STAGES for m in stage))}
    return modules, _LAYOUT


googlenet = backbone_factory("googlenet", _googlenet_parts, "GoogLeNet trunk: 1024 channels at stride 32 (options: see :class:`Backbone`).", __name__)
