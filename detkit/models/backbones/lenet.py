"""LeNet-5 (LeCun et al., 1998), written here (torchvision has no LeNet), without F6 and the output
layer.

Layers keep the paper's names: ``c1`` (5×5 conv, 6 maps), ``s2`` (2×2 subsampling), ``c3`` (5×5
conv, 16 maps), ``s4`` (subsampling), ``c5`` (5×5 conv, 120 maps), each conv followed by the
activation.

* stem: ``c1, act1, s2`` (6 channels, stride 2)
* stage 0: ``c3, act3, s4`` (16 channels, stride 4)
* stage 1: ``c5, act5`` (120 channels, stride 4)

Choices, and how they differ from the paper:

* ``activation="tanh"`` and ``pool="avg"`` (defaults) are the classic net; ``activation="relu",
  pool="max"`` is the modern variant that trains faster. ``"sigmoid"`` is the d2l course's choice.
* The paper's subsampling layers have a trainable coefficient and bias, and C3 connects to a fixed
  subset of S2's maps; here they are plain pooling and a full convolution (as in every modern
  re-implementation).
* Every conv is padded by 2 (the paper pads the 28×28 digits to 32×32 and then uses unpadded
  convs). With padding the net works at any size ≥ 4 and the map is exactly H/4 (floor), which
  is what a detection head expects; on 32×32 inputs C5 gives an 8×8 map instead of 1×1.
* ``pixel_mean = pixel_std = (0.5, 0.5, 0.5)``: inputs in [-1, 1], zero-centred like the paper's
  (-0.1 background, 1.175 ink) and suited to tanh. Build with ``in_channels=1`` for grey images
  (MNIST); the statistics then become ``(0.5,)``.
* Initialisation: Xavier-uniform for tanh/sigmoid, Kaiming-normal for ReLU, zero biases.

``lenet5_bn_d2l`` is the course's LeNet with batch normalisation (d2l.ai's ``BNLeNet``, section
"Batch Normalization"): two blocks of 5×5 conv (unpadded, as the book's BN-LeNet) -> BatchNorm ->
sigmoid -> 2×2/2 average pool, the convolutional encoder of the book's net (its three dense layers are
the classifier). On the book's 28×28 Fashion-MNIST images the maps are 6×24×24 -> 6×12×12 ->
16×8×8 -> 16×4×4. Stem ``c1, bn1, act1, s2`` (6 channels, stride 2), stage 0 ``c3, bn3, act3, s4``
(16 channels, stride 4; the unpadded convs make the map ``(H - 12) / 4``, use ``feature_sizes``); the
smallest input is 16×16. Statistics as ``lenet5`` (0.5 / 0.5).
"""

from __future__ import annotations

from torch import nn

from detkit.errors import ConfigError
from detkit.models.backbones.base import Layout, Stage, backbone_factory
from detkit.models.backbones.d2l import course_parts

__all__ = ["lenet5", "lenet5_bn_d2l"]

_ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}
_POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}

_LAYOUT = Layout(
    stem=Stage(("c1", "act1", "s2"), 6, 2),
    stages=(Stage(("c3", "act3", "s4"), 16, 4), Stage(("c5", "act5"), 120, 4)),
    first_conv="c1",
    pixel_mean=(0.5, 0.5, 0.5),
    pixel_std=(0.5, 0.5, 0.5),
    min_input_size=4,
)


def _lenet5_parts(activation: str, pool: str) -> tuple[dict, Layout]:
    if activation not in _ACTIVATIONS:
        raise ConfigError(
            f"backbone 'lenet5': activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
        )
    if pool not in _POOLS:
        raise ConfigError(f"backbone 'lenet5': pool must be one of {sorted(_POOLS)}, got {pool!r}")
    act, pooling = _ACTIVATIONS[activation], _POOLS[pool]
    modules = {
        "c1": nn.Conv2d(3, 6, kernel_size=5, padding=2),
        "act1": act(),
        "s2": pooling(kernel_size=2, stride=2),
        "c3": nn.Conv2d(6, 16, kernel_size=5, padding=2),
        "act3": act(),
        "s4": pooling(kernel_size=2, stride=2),
        "c5": nn.Conv2d(16, 120, kernel_size=5, padding=2),
        "act5": act(),
    }
    for module in modules.values():
        if isinstance(module, nn.Conv2d):
            if activation == "relu":
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return modules, _LAYOUT


lenet5 = backbone_factory(
    "lenet5", _lenet5_parts,
    """LeNet-5 trunk (C1-S2-C3-S4-C5): 120 channels at stride 4 (options: see :class:`Backbone`).

    ``activation``: ``"tanh"`` (classic), ``"sigmoid"`` or ``"relu"``; ``pool``: ``"avg"``
    (classic) or ``"max"``.
    """,
    __name__, activation="tanh", pool="avg",
)


def _lenet5_bn_d2l_parts() -> tuple[dict, Layout]:
    modules = {
        "c1": nn.Conv2d(3, 6, kernel_size=5), "bn1": nn.BatchNorm2d(6), "act1": nn.Sigmoid(),
        "s2": nn.AvgPool2d(kernel_size=2, stride=2),
        "c3": nn.Conv2d(6, 16, kernel_size=5), "bn3": nn.BatchNorm2d(16), "act3": nn.Sigmoid(),
        "s4": nn.AvgPool2d(kernel_size=2, stride=2),
    }
    return course_parts(
        modules, Stage(("c1", "bn1", "act1", "s2"), 6, 2), [Stage(("c3", "bn3", "act3", "s4"), 16, 4)],
        "c1", min_input_size=16, pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5),
    )


lenet5_bn_d2l = backbone_factory(
    "lenet5_bn_d2l", _lenet5_bn_d2l_parts,
    "The course's LeNet with batch-norm (d2l.ai's BNLeNet encoder): 16 channels at stride 4 "
    "(options: see :class:`Backbone`).", __name__,
)
