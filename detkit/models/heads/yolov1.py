"""The YOLOv1 head (Redmon et al., "You Only Look Once", CVPR 2016) and the decoding of its grid.

The head turns any backbone feature map into an ``S x S`` grid of predictions, shape
``[N, S, S, B*5 + C]`` (``S=7, B=2, C=20`` gives the paper's 7x7x30 for VOC).

Per-cell layout of the last dimension (``b`` = predictor ``0..B-1``)::

    [ x_b, y_b, sqrt(w_b), sqrt(h_b), conf_b ] for b in 0..B-1,  then  p_0 .. p_{C-1}

* ``x, y``: the box centre as an offset inside its cell, 0..1 (0 = the cell's left/top edge).
* ``sqrt(w), sqrt(h)``: square roots of the box size relative to the whole input image. Like the
  paper, the head regresses the square root so that an error on a small box costs more than the same
  error on a large one; decoding squares it (negative values, possible with the linear output,
  decode to an empty box).
* ``conf``: the box confidence, trained towards ``IoU(box, object)`` (0 for predictors that are not
  responsible for an object).
* ``p_c``: one class distribution per cell, ``Pr(class_c | object)``, shared by the B predictors.

Output activation (``activation=``):

* ``"sigmoid"`` (default): sigmoid on the ``5B`` box/confidence values and softmax on the ``C`` class
  values, so every output already lies in its target range. Sum-squared training is then far more
  stable on short CPU schedules (no exploding early predictions, no negative sizes).
* ``"linear"``: the paper's linear final layer; the raw values are the predictions above.

``size_activation="linear"`` keeps the sigmoid on ``x, y, conf`` but leaves ``sqrt(w), sqrt(h)``
linear (as in the paper); the linear size outputs start at 0.5, where the sigmoid starts. The idea:
objects that fill most of the image have ``sqrt(h)`` near 1, where the sigmoid is flat (slope 0.04 at
0.96, 0.01 at 0.99, against 0.25 at 0.5), so their size error barely moves the weights. Measured on
raccoon folds (README "Judging a recipe") it trained worse, not better (higher training loss on every
fold, xy included), likely because AdamW moves every weight by about the learning rate whatever the
sigmoid's slope, so the unsquashed outputs moved more and shook the shared features. The sigmoid
stays the default.

Either way the head returns predictions in the parametrisation above, so the loss
(:class:`detkit.models.losses.yolov1_loss.YOLOv1Loss`) and the decoder need not know which was used.

Two bodies (``mode=``), both ending in adaptive average pooling to ``S x S`` so any input size the
backbone accepts works:

* ``"fc"`` (the paper): ``num_convs`` 3x3 convs -> pool to SxS -> flatten -> FC ``hidden_dim`` ->
  LeakyReLU(0.1) -> dropout -> FC ``S*S*(5B+C)``. The default ``conv_channels=256`` keeps the first FC
  layer at ``S*S*256*4096`` (51M) weights instead of the paper's 205M.
* ``"conv"`` (lighter): ``num_convs`` 3x3 convs -> pool to SxS -> 1x1 conv to ``5B+C`` channels. Each
  cell then only sees its own receptive field instead of the whole image; far fewer parameters.
  When the feature map is smaller than SxS (input below ``S * backbone.stride``), pooling repeats
  features across neighbouring cells, which the conv head cannot tell apart; the fc head can.

The paper's head exactly (on the 20-layer darknet backbone, whose map is 14x14x1024 at 448): the four
detection convs of Figure 3, ``num_convs=4, conv_channels=1024, conv_strides=(1, 2, 1, 1)`` (the
second halves the map to 7x7, so the pooling to SxS does nothing at 448), ``norm=False`` (no
batch-norm in YOLOv1), ``mode="fc", hidden_dim=4096, dropout=0.5`` and ``activation="linear"``;
``configs/_base_/models/yolov1_darknet.py`` states them. The defaults (``num_convs=2``,
``conv_channels=256``, ``norm=True``, ``activation="sigmoid"``) are the lighter, easier-to-train head
the ResNet configs use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["YOLOv1Head", "decode_grid"]

MODES = ("fc", "conv")
ACTIVATIONS = ("sigmoid", "linear")


class YOLOv1Head(nn.Module):
    """Feature map ``[N, in_channels, h, w]`` -> grid predictions ``[N, S, S, B*5 + C]``.

    Args:
        in_channels: channels of the backbone feature map (the detector passes ``backbone.out_channels``).
        num_classes: C (the detector passes it from the data's class list).
        grid_size: S, cells per side.
        num_boxes: B, boxes predicted per cell.
        mode: ``"fc"`` (paper) or ``"conv"`` (lighter); see the module docstring.
        hidden_dim: width of the first fully-connected layer (``fc`` only).
        dropout: dropout after the first fully-connected layer (``fc`` only, as in the paper).
        conv_channels: channels of the 3x3 convs before pooling.
        num_convs: how many 3x3 convs (0 = pool the backbone features directly).
        conv_strides: stride of each of those convs (``None``: all 1); the paper's four are
            ``(1, 2, 1, 1)``.
        norm: batch norm after each conv (YOLOv2 added it; the paper had none).
        activation: ``"sigmoid"`` or ``"linear"``; see the module docstring.
        size_activation: the activation of ``sqrt(w), sqrt(h)`` only (``None``: ``activation``'s);
            ``"linear"`` under a ``"sigmoid"`` head: see the module docstring.
        negative_slope: slope of the LeakyReLU activations (0.1 in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        grid_size: int = 7,
        num_boxes: int = 2,
        mode: str = "fc",
        hidden_dim: int = 4096,
        dropout: float = 0.5,
        conv_channels: int = 256,
        num_convs: int = 2,
        conv_strides: Sequence[int] | None = None,
        norm: bool = True,
        activation: str = "sigmoid",
        negative_slope: float = 0.1,
        size_activation: str | None = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if size_activation is not None and size_activation not in ACTIVATIONS:
            raise ValueError(f"size_activation must be None or one of {ACTIVATIONS}, got {size_activation!r}")
        if activation == "linear" and size_activation == "sigmoid":
            raise ValueError("size_activation='sigmoid' needs activation='sigmoid' (a linear head has no "
                             "sigmoid to keep on its sizes)")
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("grid_size", grid_size), ("num_boxes", num_boxes),
                            ("hidden_dim", hidden_dim), ("conv_channels", conv_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(num_convs, int) or num_convs < 0:
            raise ValueError(f"num_convs must be a non-negative integer, got {num_convs!r}")
        strides = [1] * num_convs if conv_strides is None else list(conv_strides)
        if len(strides) != num_convs or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in strides):
            raise ValueError(
                f"conv_strides must hold one positive integer per conv (num_convs={num_convs}), "
                f"got {conv_strides!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.grid_size = grid_size
        self.num_boxes = num_boxes
        self.mode = mode
        self.activation = activation
        self.size_activation = activation if size_activation is None else size_activation
        self.cell_dim = num_boxes * 5 + num_classes

        layers: list[nn.Module] = []
        channels = in_channels
        for stride in strides:
            layers.append(nn.Conv2d(channels, conv_channels, 3, stride=stride, padding=1, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(conv_channels))
            layers.append(nn.LeakyReLU(negative_slope, inplace=True))
            channels = conv_channels
        self.convs = nn.Sequential(*layers)
        # Pooling to exactly S x S is what makes the head independent of the input size.
        self.pool = nn.AdaptiveAvgPool2d(grid_size)

        if mode == "fc":
            self.predictor = nn.Sequential(
                nn.Flatten(),
                nn.Linear(channels * grid_size * grid_size, hidden_dim),
                nn.LeakyReLU(negative_slope, inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, grid_size * grid_size * self.cell_dim),
            )
        else:
            self.predictor = nn.Conv2d(channels, self.cell_dim, 1)
        self._init_weights(negative_slope)

    def _init_weights(self, negative_slope: float) -> None:
        for m in self.convs.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=negative_slope, mode="fan_out",
                                        nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # A small last layer starts every output near its neutral value (0.5 after the sigmoid,
        # uniform class probabilities), so the first sum-squared gradients are moderate.
        last = self.predictor[-1] if isinstance(self.predictor, nn.Sequential) else self.predictor
        nn.init.normal_(last.weight, std=0.01)
        nn.init.zeros_(last.bias)
        if self.activation == "sigmoid" and self.size_activation == "linear":
            # start the linear sizes where the sigmoid ones start (sigmoid(0) = 0.5), not at empty boxes
            # (the fc predictor's bias holds one cell_dim block per cell, the conv one a single block)
            with torch.no_grad():
                cells = last.bias.view(-1, self.cell_dim)[:, : self.num_boxes * 5]
                cells.view(-1, self.num_boxes, 5)[..., 2:4] = 0.5

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"YOLOv1Head expects features [N, {self.in_channels}, h, w], got {tuple(features.shape)}"
            )
        x = self.pool(self.convs(features))
        n, s = x.shape[0], self.grid_size
        if self.mode == "fc":
            grid = self.predictor(x).view(n, s, s, self.cell_dim)
        else:
            grid = self.predictor(x).permute(0, 2, 3, 1)
        return self.activate(grid)

    def activate(self, grid: torch.Tensor) -> torch.Tensor:
        """Apply the output activation to raw grid values (identity for ``"linear"``)."""
        if self.activation == "linear":
            return grid.contiguous()
        split = self.num_boxes * 5
        if self.size_activation == "linear":
            per_box = grid[..., :split].unflatten(-1, (self.num_boxes, 5))
            boxes = torch.cat((per_box[..., :2].sigmoid(), per_box[..., 2:4], per_box[..., 4:].sigmoid()), dim=-1)
            return torch.cat((boxes.flatten(-2), grid[..., split:].softmax(-1)), dim=-1)
        return torch.cat((grid[..., :split].sigmoid(), grid[..., split:].softmax(-1)), dim=-1)

    def decode(self, predictions: torch.Tensor, image_size: tuple[int, int]):
        """Grid predictions -> ``(boxes [N, S*S*B, 4] xyxy input pixels, scores [N, S*S*B, C])``.

        See :func:`decode_grid`.
        """
        return decode_grid(predictions, self.num_boxes, self.num_classes, image_size)


def grid_boxes_normalised(box_predictions: torch.Tensor) -> torch.Tensor:
    """``[N, S, S, B, 4]`` cell parametrisation ``(x, y, sqrt w, sqrt h)`` -> ``xyxy`` in 0..1 image units.

    Cell ``(row, col)`` is dimension 1 and 2; the centre is ``((col + x) / S, (row + y) / S)``. Shared
    by the decoder and the loss (which needs the boxes for the IoU that picks the responsible predictor).
    """
    s_rows, s_cols = box_predictions.shape[1], box_predictions.shape[2]
    device, dtype = box_predictions.device, box_predictions.dtype
    cols = torch.arange(s_cols, device=device, dtype=dtype).view(1, 1, s_cols, 1)
    rows = torch.arange(s_rows, device=device, dtype=dtype).view(1, s_rows, 1, 1)
    cx = (cols + box_predictions[..., 0]) / s_cols
    cy = (rows + box_predictions[..., 1]) / s_rows
    w = box_predictions[..., 2].clamp(min=0).square()
    h = box_predictions[..., 3].clamp(min=0).square()
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def decode_grid(predictions: torch.Tensor, num_boxes: int, num_classes: int, image_size):
    """Decode YOLOv1 grid predictions into candidates for a postprocessor.

    Args:
        predictions: ``[N, S, S, B*5 + C]`` in the layout of the module docstring.
        image_size: ``(H, W)`` of the model input; boxes come out in those pixels, clipped to it.

    Returns:
        ``boxes`` ``[N, S*S*B, 4]`` xyxy and ``scores`` ``[N, S*S*B, C]`` with the paper's class-specific
        score ``conf * Pr(class | object)``. Candidates are ordered by row, then column, then predictor.
        Confidence and class probabilities are clamped to 0..1 (a no-op for the sigmoid/softmax output).
    """
    predictions = predictions.float()  # decoding in bf16/fp16 would cost whole pixels at 448 px
    n, s_rows, s_cols, dim = predictions.shape
    if dim != num_boxes * 5 + num_classes:
        raise ValueError(
            f"predictions have {dim} values per cell; B={num_boxes}, C={num_classes} needs "
            f"{num_boxes * 5 + num_classes}"
        )
    height, width = image_size
    boxes_part = predictions[..., : num_boxes * 5].reshape(n, s_rows, s_cols, num_boxes, 5)
    boxes = grid_boxes_normalised(boxes_part[..., :4])
    boxes = boxes * boxes.new_tensor([width, height, width, height])
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
    conf = boxes_part[..., 4].clamp(0, 1)
    class_prob = predictions[..., num_boxes * 5:].clamp(0, 1)
    scores = conf.unsqueeze(-1) * class_prob.unsqueeze(3)  # [N, S, S, B, C]
    m = s_rows * s_cols * num_boxes
    return boxes.reshape(n, m, 4), scores.reshape(n, m, num_classes)
