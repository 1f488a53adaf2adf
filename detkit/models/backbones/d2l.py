"""What the course's variants of the classic nets share: the conventions of d2l.ai's implementations
(Dive into Deep Learning, chapter "Modern Convolutional Neural Networks"), which the course follows.

The variants live with their families (``alexnet_d2l`` in ``alexnet.py``, ``googlenet_d2l`` in
``googlenet.py``, ``lenet5_bn_d2l`` in ``lenet.py``, ``resnet18_d2l`` in ``resnet.py``) and are
registered under their own names, like ``vgg11_bn`` next to ``vgg11``. Each reproduces the layers,
kernel sizes, paddings and channel counts of the book's code, so its map sizes are the book's
printed layer tables (tested in ``tests/test_course_nets.py``). Where the book writes
``nn.LazyConv2d``, the input channels are spelled out; every conv keeps its bias, as the book's do.

Shared here (:func:`course_parts`, which every variant's build ends with): the book's initialisation,
``d2l.init_cnn`` (:func:`init_cnn`: Xavier-uniform weights of every conv and linear layer, PyTorch's
default biases), which the book applies to all these nets before training; the input statistics (the
book feeds Fashion-MNIST pixels in 0..1 without normalisation; the variants use those of their detkit
counterparts, ImageNet's by default, 0.5 / 0.5 for LeNet, so they sit in a detector like the others);
and no published weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from detkit.models.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Layout, Stage

__all__ = ["init_cnn", "course_parts"]


def init_cnn(modules: Iterable[nn.Module]) -> None:
    """d2l's ``init_cnn``: Xavier-uniform weights for every ``Conv2d`` and ``Linear`` in ``modules``
    (and their children); biases keep PyTorch's default initialisation."""
    for root in modules:
        for module in root.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)


def course_parts(
    modules: Mapping[str, nn.Module],
    stem: Stage,
    stages: Iterable[Stage],
    first_conv: str,
    *,
    min_input_size: int = 1,
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
    pixel_std: tuple[float, float, float] = IMAGENET_STD,
) -> tuple[dict, Layout]:
    """A course variant's ``(modules, layout)`` for :func:`backbone_factory`, its modules initialised
    as the book does."""
    init_cnn(modules.values())
    layout = Layout(stem=stem, stages=tuple(stages), first_conv=first_conv, pixel_mean=pixel_mean,
                    pixel_std=pixel_std, min_input_size=min_input_size)
    return dict(modules), layout
