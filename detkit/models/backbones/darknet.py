"""YOLOv1's own networks (Redmon et al., "You Only Look Once", CVPR 2016) as backbones:
``darknet_yolov1``, the detection network of the paper's Figure 3, and ``darknet_yolov1_tiny``, the
9-layer network of Fast YOLO. Written here (torchvision has neither).

**darknet_yolov1** (Figure 3; darknet's ``cfg/yolov1.cfg``): 24 convolutional layers, every one
followed by leaky ReLU (slope 0.1), with 1x1 "reduction" layers between the 3x3 ones (the paper's
answer to GoogLeNet's inception modules) and four 2x2/2 max-pools. ``depth=20`` (default) builds
the first 20 layers, the part the paper pre-trains on ImageNet; the detection network adds four 3x3
convs of 1024 channels (the second with stride 2) and two fully connected layers, which
:class:`~detkit.models.heads.yolov1.YOLOv1Head` builds (``num_convs=4, conv_channels=1024,
conv_strides=(1, 2, 1, 1)``; see ``configs/_base_/models/yolov1_darknet.py``). ``depth=24`` puts those
four convs into the backbone instead (then give the head ``num_convs=0``).

Module names are ``conv1`` ... ``conv24`` (each a ``conv`` / optional ``bn`` / ``act`` sequence) and
``pool1`` ... ``pool4``. Stages (each max-pool after the first starts one, as in GoogLeNet's layout):

* stem: ``conv1`` (7x7/2, 64), ``pool1``, ``conv2`` (3x3, 192): 192 channels, stride 4
* stage 0: ``pool2``, ``conv3-6``: 512 channels, stride 8
* stage 1: ``pool3``, ``conv7-16``: 1024 channels, stride 16
* stage 2: ``pool4``, ``conv17-20``: 1024 channels, stride 32 (14x14 at 448, 7x7 at the 224 of
  pre-training)
* stage 3 (``depth=24`` only): ``conv21-24``: 1024 channels, stride 64 (7x7 at 448)

**darknet_yolov1_tiny** (Fast YOLO): "a neural network with fewer convolutional layers (9 instead of
24) and fewer filters in those layers" (section 2). The paper gives no figure; the layers are those of
darknet's ``cfg/yolo-tiny.cfg`` of the paper's time: nine 3x3 convs of 16, 32, 64, 128, 256, 512,
1024, 1024, 1024 channels with a 2x2/2 max-pool after each of the first six: 1024 channels at stride
64 (7x7 at 448). Stem ``conv1, pool1, conv2`` (32 channels, stride 2); stages ``pool2+conv3`` (64,
4), ``pool3+conv4`` (128, 8), ``pool4+conv5`` (256, 16), ``pool5+conv6`` (512, 32),
``pool6+conv7-9`` (1024, 64). That cfg continues with FC 256 (linear) -> FC 4096 -> dropout ->
FC 1470; detkit's fc head has no 256-unit bottleneck (the closest is ``num_convs=0`` with a small
``hidden_dim``). darknet's later ``yolov1-tiny.cfg`` is a different, 8-layer net with batch-norm.

Where this follows darknet rather than the figure, or chooses:

* **Batch-norm**: the paper does not use it in v1 (it arrived with YOLOv2); darknet's current
  ``yolov1.cfg`` / ``yolov1-tiny.cfg`` put ``batch_normalize=1`` on every conv (the cfgs of the
  paper's time, e.g. ``yolo-tiny.cfg``, have none). ``norm=False`` (default) is the paper;
  ``norm=True`` is darknet's cfg (conv without bias -> BatchNorm -> leaky ReLU), the usual choice
  when training from scratch.
* Padding: darknet's ``pad=1`` means ``kernel // 2`` (so the 1x1 convs are unpadded), and its 2x2
  max-pools produce ``ceil(h / 2)`` (``ceil_mode=True`` here): every layer maps ``h`` to
  ``ceil(h / stride)``, so any input size works and 448 gives exactly the paper's sizes.
* darknet's released ``yolov1.cfg`` replaces the first FC layer by a locally connected layer (3x3,
  256 filters) and predicts 3 boxes per cell (1715 outputs); the paper's FC 4096 and 7x7x30 are what
  detkit's head builds.
* Input: darknet feeds RGB in 0..1 without mean subtraction, hence ``pixel_mean = (0, 0, 0)`` and
  ``pixel_std = (1, 1, 1)``. No ImageNet weights in a PyTorch format exist (darknet's pre-trained
  ``extraction.conv.weights`` is a darknet file), so ``pretrained="imagenet"`` is an error.
* Initialisation: darknet's, ``N(0, 2 / fan_in)`` weights (Kaiming normal) and zero biases.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from detkit.errors import ConfigError
from detkit.models.backbones.base import Layout, Stage, backbone_factory

__all__ = ["darknet_yolov1", "darknet_yolov1_tiny", "YOLOV1_GROUPS", "YOLOV1_DETECTION_GROUP", "TINY_GROUPS"]

POOL = "M"  # a 2x2/2 max-pool
NEGATIVE_SLOPE = 0.1

# Figure 3, one tuple per stem/stage: (kernel, filters, stride) per conv, POOL per max-pool.
YOLOV1_GROUPS = (
    ((7, 64, 2), POOL, (3, 192, 1)),
    (POOL, (1, 128, 1), (3, 256, 1), (1, 256, 1), (3, 512, 1)),
    (POOL, *((1, 256, 1), (3, 512, 1)) * 4, (1, 512, 1), (3, 1024, 1)),
    (POOL, *((1, 512, 1), (3, 1024, 1)) * 2),
)
# The four convs the paper adds for detection (layers 21-24).
YOLOV1_DETECTION_GROUP = ((3, 1024, 1), (3, 1024, 2), (3, 1024, 1), (3, 1024, 1))
# darknet's yolo-tiny.cfg (Fast YOLO).
TINY_GROUPS = (
    ((3, 16, 1), POOL, (3, 32, 1)),
    (POOL, (3, 64, 1)),
    (POOL, (3, 128, 1)),
    (POOL, (3, 256, 1)),
    (POOL, (3, 512, 1)),
    (POOL, (3, 1024, 1), (3, 1024, 1), (3, 1024, 1)),
)


def conv_block(in_channels: int, out_channels: int, kernel: int, stride: int, norm: bool) -> nn.Sequential:
    """darknet's ``[convolutional]`` layer: conv (padding ``kernel // 2``) [-> BatchNorm] -> leaky ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=not norm)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    layers = OrderedDict(conv=conv)
    if norm:
        layers["bn"] = nn.BatchNorm2d(out_channels)
    layers["act"] = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)
    return nn.Sequential(layers)


def _darknet_parts(groups, norm: bool) -> tuple[dict, Layout]:
    modules: dict[str, nn.Module] = {}
    parts: list[Stage] = []
    channels, stride, convs, pools = 3, 1, 0, 0
    for group in groups:
        names = []
        for layer in group:
            if layer == POOL:
                pools += 1
                name = f"pool{pools}"
                modules[name] = nn.MaxPool2d(2, 2, ceil_mode=True)
                stride *= 2
            else:
                kernel, filters, conv_stride = layer
                convs += 1
                name = f"conv{convs}"
                modules[name] = conv_block(channels, filters, kernel, conv_stride, norm)
                channels, stride = filters, stride * conv_stride
            names.append(name)
        parts.append(Stage(tuple(names), channels, stride))
    layout = Layout(
        stem=parts[0],
        stages=tuple(parts[1:]),
        first_conv="conv1.conv",
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(1.0, 1.0, 1.0),
        min_input_size=1,
    )
    return modules, layout


def _yolov1_parts(depth: int, norm: bool) -> tuple[dict, Layout]:
    if depth not in (20, 24):
        raise ConfigError(
            f"backbone 'darknet_yolov1': depth must be 20 (the layers the paper pre-trains) or 24 "
            f"(with the four detection convs), got {depth!r}"
        )
    groups = YOLOV1_GROUPS + ((YOLOV1_DETECTION_GROUP,) if depth == 24 else ())
    return _darknet_parts(groups, norm)


def _tiny_parts(norm: bool) -> tuple[dict, Layout]:
    return _darknet_parts(TINY_GROUPS, norm)


darknet_yolov1 = backbone_factory(
    "darknet_yolov1", _yolov1_parts,
    """YOLOv1's network (the paper's Figure 3): 1024 channels at stride 32 (``depth=20``) or 64
    (``depth=24``).

    ``depth``: 20 (the layers the paper pre-trains on ImageNet) or 24 (plus the four detection
    convs); ``norm``: BatchNorm after every conv (darknet's cfg; the paper has none). Other options:
    see :class:`Backbone`.
    """,
    __name__, depth=20, norm=False,
)

darknet_yolov1_tiny = backbone_factory(
    "darknet_yolov1_tiny", _tiny_parts,
    """Fast YOLO's 9-layer network (darknet's yolo-tiny.cfg): 1024 channels at stride 64.

    ``norm``: BatchNorm after every conv (darknet's later cfgs; the paper has none). Other options:
    see :class:`Backbone`.
    """,
    __name__, norm=False,
)
