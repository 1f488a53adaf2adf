"""The classification head: a feature map -> class logits, as a global-pool + linear layer or as the
course's fully connected classifiers.

``ClassificationHead(in_channels, num_classes, pool_size=1, hidden_dims=(), activation="relu",
norm=False, dropout=0.0)`` (registered as ``cls_head``):

1. ``AdaptiveAvgPool2d(pool_size)``: ``1`` is global average pooling (ResNet, GoogLeNet, MobileNetV2,
   NiN's own global pooling); ``6`` / ``7`` keep AlexNet's / VGG's spatial grid as torchvision's
   ``avgpool`` does; a map already of that size passes unchanged (d2l's BN-LeNet flattens its 16x4x4
   map: ``pool_size=4`` at 28x28 input is exactly that flatten);
2. flatten, then for each width in ``hidden_dims``: ``Linear -> BatchNorm1d (norm=True) -> activation
   -> Dropout(dropout)``;
3. the output ``Linear`` to ``num_classes`` logits; with no hidden layer, ``Dropout(dropout)`` comes
   before it (GoogLeNet's 0.4, MobileNetV2's 0.2).

The course's classifiers in these terms (see configs/classify_*.py):

* global pool + linear (ResNet-18, GoogLeNet, MobileNetV2, and detkit's default): ``dict(type="cls_head")``;
* LeNet-5 (F6 with 84 units, tanh): ``pool_size=1, hidden_dims=[84], activation="tanh"`` (the paper's C5
  is 1x1 at 32x32; detkit's padded C5 keeps a map, averaged here);
* d2l's BN-LeNet: ``pool_size=4, hidden_dims=[120, 84], norm=True, activation="sigmoid"``;
* AlexNet / VGG (fc6, fc7): ``pool_size=6`` (VGG: 7), ``hidden_dims=[4096, 4096], dropout=0.5``.

NiN's own classifier is a last mlpconv block with one channel per class before the global pool; here it
is a global pool + linear layer (no trained layer of its own at the map's resolution).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detkit.errors import ConfigError

__all__ = ["ClassificationHead"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class ClassificationHead(nn.Module):
    """Pool, optional hidden fully connected layers, linear classifier (see the module docstring).

    ``forward(features [N, C, H, W]) -> logits [N, num_classes]``.
    """

    def __init__(self, in_channels: int, num_classes: int, pool_size: int = 1, hidden_dims: Sequence[int] = (),
                 activation: str = "relu", norm: bool = False, dropout: float = 0.0):
        super().__init__()
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError(f"pool_size must be a positive integer, got {pool_size!r}")
        if isinstance(hidden_dims, (str, bytes)) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in hidden_dims):
            raise ConfigError(f"hidden_dims must be a list of positive integers, got {hidden_dims!r}")
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        layers: list[nn.Module] = []
        width = in_channels * pool_size * pool_size
        for hidden in hidden_dims:
            layers.append(nn.Linear(width, hidden))
            if norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(_ACTIVATIONS[activation]())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = hidden
        if dropout and not hidden_dims:
            layers.append(nn.Dropout(dropout))
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.hidden(self.pool(features).flatten(1)))
