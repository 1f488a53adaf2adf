"""The region classifier of the R-CNN family: a feature per proposal, then class scores and boxes.

For every proposal the head predicts ``C + 1`` class logits (**index 0 is background**, then the data
set's classes ``0..C-1`` at ``1..C``, as in Fast R-CNN and torchvision) and class-specific box deltas
``[C * 4]`` (class ``c`` at ``4c .. 4c+3``; background has no box). Deltas are the
``(dx, dy, dw, dh)`` of :class:`detkit.ops.boxes.BoxCoder` relative to the proposal, with Fast
R-CNN's weights ``(10, 10, 5, 5)`` (configurable) and ``dw, dh`` clamped before ``exp`` when decoding.

How a proposal becomes a feature vector (``mode=``):

* ``"roi"`` (Fast R-CNN, Girshick 2015): the backbone runs **once per image**; every proposal is
  pooled from the last feature map with :func:`torchvision.ops.roi_align`
  (``spatial_scale = 1 / backbone.stride``, ``sampling_ratio``, ``aligned=True``) to
  ``pool_size x pool_size``, flattened, then ``num_fc`` fully-connected layers (``hidden_dim``, ReLU).
* ``"warp"`` (R-CNN, Girshick et al. 2014): every proposal is **cropped from the image and warped**
  to ``warp_size x warp_size`` (the backbone's input size), ignoring its aspect ratio, after dilating
  it so that ``context`` pixels of the warped frame are image context around the box (the paper:
  16 px at 227). The crops go through the backbone in chunks of ``warp_chunk`` (bounding memory),
  each crop's feature map becomes a vector (``warp_pool``), then the same fully-connected layers:

  - ``"avg"``: global average (one value per channel: cheap, but the spatial layout is gone);
  - ``"grid"``: adaptive average pooling to ``pool_size x pool_size``, flattened: the paper's pool5
    -> fc6 path. For AlexNet at 224 px the map already is 6 x 6, so ``pool_size=6`` flattens pool5
    itself (9216 values), exactly as torchvision's AlexNet feeds its classifier.

  The crop-and-resize is :func:`torchvision.ops.roi_align` on the (normalised) image itself with
  ``spatial_scale=1``, ``aligned=True``: one vectorised bilinear resampling of all proposals of the
  batch, no Python loop per box. With ``warp_sampling_ratio=1`` each output pixel is one bilinear
  sample at its centre, which is exactly ``F.interpolate(crop, mode="bilinear",
  align_corners=False)`` of the box; larger values average ``r x r`` samples per output pixel
  (antialiasing when shrinking a large box). Where the dilated box leaves the image, roi_align reads
  zeros, i.e. the mean pixel after normalisation: R-CNN's own padding with the image mean.

The detector calls :meth:`RegionClassifierHead.forward` with the feature maps (``roi``) or the
normalised images and the backbone (``warp``); :meth:`encode` / :meth:`decode` convert between boxes
and the deltas this head predicts. :meth:`layer_features` names the per-region activations R-CNN's
SVMs and box regressors read (``pool5``: the region feature; ``fc6``, ``fc7``: after each
fully-connected layer's ReLU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import roi_align

from detkit.errors import ConfigError
from detkit.ops.nms import exporting
from detkit.ops.boxes import BoxCoder, clip_boxes

__all__ = ["RegionClassifierHead", "dilate_for_context"]

MODES = ("roi", "warp")
WARP_POOLS = ("avg", "grid")
# The name of the region feature and of the hidden layers after it, as in R-CNN's AlexNet (pool5,
# fc6, fc7); a head with more fully-connected layers names them fc8, fc9, ...
POOL_LAYER = "pool5"
FIRST_FC = 6
# Fast R-CNN / torchvision's target normalisation of (dx, dy, dw, dh).
DEFAULT_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def dilate_for_context(boxes: Tensor, warp_size: int, context: float) -> Tensor:
    """Grow ``boxes`` about their centres so that, warped to ``warp_size``, the original box fills the
    central ``warp_size - 2 * context`` pixels (R-CNN's context padding)."""
    if context <= 0:
        return boxes
    factor = warp_size / (warp_size - 2.0 * context)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    return torch.cat((centre - half, centre + half), dim=1)


def _to_rois(boxes: list[Tensor], like: Tensor) -> Tensor:
    """Per-image ``[P_i, 4]`` boxes -> rois ``[R, 5]`` with the image index in the first column."""
    index = torch.cat([torch.full((len(b), 1), i, dtype=like.dtype, device=like.device) for i, b in enumerate(boxes)])
    return torch.cat((index, torch.cat(boxes)), dim=1)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model.head.{name} must be a positive integer, got {value!r}")
    return value


class RegionClassifierHead(nn.Module):
    """Per-proposal class logits ``[R, C + 1]`` and class-specific deltas ``[R, C * 4]``.

    Args:
        in_channels: channels of the backbone's feature map (the detector passes ``out_channels``).
        num_classes: C, without background (the detector passes it).
        mode: ``"roi"`` or ``"warp"`` (module docstring).
        stride: the backbone's total stride (the detector passes it; ``roi`` pools with
            ``spatial_scale = 1 / stride``).
        pool_size: roi_align output side (``roi``; 7 in Fast R-CNN).
        sampling_ratio: roi_align samples per bin side (``roi``; 2 like torchvision, <= 0 adaptive).
        warp_size: side of the warped crops (``warp``; the backbone's input size, 227 in R-CNN).
        warp_pool: how a crop's feature map becomes a vector (``warp``): ``"avg"`` global average,
            ``"grid"`` pooled to ``pool_size x pool_size`` and flattened (R-CNN's pool5; module docstring).
        context: pixels of context around the box in the warped frame (``warp``; 16 in R-CNN).
        warp_sampling_ratio: samples per output pixel side when warping (``warp``).
        warp_chunk: crops per backbone call (``warp``; bounds memory).
        hidden_dim: width of the fully-connected layers (4096 in the papers' VGG16, 1024 in torchvision).
        num_fc: fully-connected layers before the two outputs (2: fc6, fc7).
        dropout: dropout after each fully-connected layer (0.5 in the papers' VGG16).
        box_weights: ``(wx, wy, ww, wh)`` of the box coder.
        box_clamp: largest ``dw``/``dh`` fed to ``exp`` when decoding (default log(1000/16)).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mode: str = "roi",
        stride: int | None = None,
        pool_size: int = 7,
        sampling_ratio: int = 2,
        warp_size: int = 224,
        warp_pool: str = "avg",
        context: float = 16.0,
        warp_sampling_ratio: int = 2,
        warp_chunk: int = 256,
        hidden_dim: int = 1024,
        num_fc: int = 2,
        dropout: float = 0.0,
        box_weights: Sequence[float] = DEFAULT_BOX_WEIGHTS,
        box_clamp: float = math.log(1000.0 / 16),
    ):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"model.head.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if warp_pool not in WARP_POOLS:
            raise ConfigError(f"model.head.warp_pool must be one of {', '.join(WARP_POOLS)}, got {warp_pool!r}")
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("pool_size", pool_size), ("warp_size", warp_size), ("warp_chunk", warp_chunk),
                            ("hidden_dim", hidden_dim)):
            _positive_int(name, value)
        if isinstance(num_fc, bool) or not isinstance(num_fc, int) or num_fc < 0:
            raise ConfigError(f"model.head.num_fc must be a non-negative integer, got {num_fc!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"model.head.dropout must lie in [0, 1), got {dropout!r}")
        if mode == "roi":
            if stride is None:
                raise ConfigError("model.head: roi mode needs the backbone's stride (the rcnn detector passes it)")
            _positive_int("stride", stride)
        if mode == "warp" and not 0.0 <= float(context) < warp_size / 2:
            raise ConfigError(
                f"model.head.context must lie in [0, warp_size / 2) = [0, {warp_size / 2:g}), got {context!r}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.mode = mode
        self.stride = stride
        self.pool_size = pool_size
        self.sampling_ratio = int(sampling_ratio)
        self.warp_size = warp_size
        self.warp_pool = warp_pool
        self.context = float(context)
        self.warp_sampling_ratio = int(warp_sampling_ratio)
        self.warp_chunk = warp_chunk
        self.box_coder = BoxCoder(weights=tuple(float(w) for w in box_weights), clamp=float(box_clamp))

        grid = mode == "roi" or warp_pool == "grid"
        features = in_channels * pool_size * pool_size if grid else in_channels
        self.feature_dim = features  # D of region_features (R-CNN's pool5)
        layers: list[nn.Module] = []
        for _ in range(num_fc):
            layers += [nn.Linear(features, hidden_dim), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = hidden_dim
        self.fc = nn.Sequential(*layers)
        self.cls_score = nn.Linear(features, num_classes + 1)
        self.bbox_pred = nn.Linear(features, num_classes * 4)
        # Fast R-CNN's initialisation of the two outputs: small, so training starts from uniform
        # class scores and near-zero deltas (the proposals themselves).
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def extra_repr(self) -> str:
        if self.mode == "roi":
            where = f"pool_size={self.pool_size}, stride={self.stride}, sampling_ratio={self.sampling_ratio}"
        else:
            where = (f"warp_size={self.warp_size}, warp_pool={self.warp_pool!r}, context={self.context:g}, "
                     f"warp_chunk={self.warp_chunk}")
        return f"mode={self.mode!r}, {where}, num_classes={self.num_classes}"

    # -- region features -------------------------------------------------------------------------
    def region_features(self, x: Tensor, proposals: Sequence[Tensor] | Tensor,
                        backbone: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """One feature vector per proposal, ``[R, D]`` (all images' proposals, in order).

        ``roi``: ``x`` is the backbone's feature map ``[N, C, h, w]``. ``warp``: ``x`` is the batch
        of normalised images ``[N, 3, H, W]`` and ``backbone`` the network run on the crops.
        ``proposals``: one ``[P_i, 4]`` tensor per image, or all of them as rois ``[R, 5]`` (image
        index, x1, y1, x2, y2), the form an exported graph takes (:mod:`detkit.deploy.graphs`).
        """
        if isinstance(proposals, Tensor):
            if proposals.dim() != 2 or proposals.shape[1] != 5:
                raise ValueError(f"rois must be [R, 5] (image index, x1, y1, x2, y2), got {tuple(proposals.shape)}")
            rois = proposals.to(x.dtype)
        else:
            if len(proposals) != x.shape[0]:
                raise ValueError(f"{x.shape[0]} images but proposals for {len(proposals)}")
            rois = _to_rois([p.to(x.dtype) for p in proposals], x)
        if self.mode == "roi":
            pooled = roi_align(x, rois, output_size=self.pool_size, spatial_scale=1.0 / self.stride,
                               sampling_ratio=self.sampling_ratio, aligned=True)
            return pooled.flatten(1)
        if backbone is None:
            raise ValueError("warp mode needs the backbone to run on the warped crops")
        return self._warped_features(x, rois, backbone)

    def warp(self, images: Tensor, rois: Tensor) -> Tensor:
        """Crops of ``rois`` (``[K, 5]``: image index, x1, y1, x2, y2), context-dilated and warped to
        ``[K, 3, warp_size, warp_size]``."""
        dilated = dilate_for_context(rois[:, 1:], self.warp_size, self.context)
        return roi_align(images, torch.cat((rois[:, :1], dilated), dim=1), output_size=self.warp_size,
                         spatial_scale=1.0, sampling_ratio=self.warp_sampling_ratio, aligned=True)

    def _warped_features(self, images: Tensor, rois: Tensor, backbone) -> Tensor:
        # Chunks bound the memory of eager runs; a captured graph takes every crop at once (a loop
        # over a data-dependent count cannot be recorded).
        chunk = rois.shape[0] if exporting() else self.warp_chunk
        pieces = []
        for start in range(0, rois.shape[0], max(1, chunk)):
            crops = self.warp(images, rois[start:start + chunk])
            features = backbone(crops)
            if isinstance(features, (list, tuple)):  # built with out_indices: use the last map
                features = features[-1]
            pieces.append(self._crop_vector(features))
        if not pieces:
            return images.new_zeros((0, self.feature_dim))
        return torch.cat(pieces)

    def _crop_vector(self, features: Tensor) -> Tensor:
        """A crop's feature map ``[K, C, h, w]`` -> ``[K, feature_dim]`` (``warp_pool``)."""
        if self.warp_pool == "grid":
            return F.adaptive_avg_pool2d(features, self.pool_size).flatten(1)
        return features.mean(dim=(2, 3))

    # -- prediction ------------------------------------------------------------------------------
    def layer_names(self) -> tuple[str, ...]:
        """The named activations :meth:`layer_features` can return: ``pool5``, then one per
        fully-connected layer (``fc6``, ``fc7``, ...)."""
        num_fc = sum(isinstance(m, nn.Linear) for m in self.fc)
        return (POOL_LAYER, *(f"fc{FIRST_FC + i}" for i in range(num_fc)))

    def layer_dim(self, name: str) -> int:
        """Length of the vector :meth:`layer_features` returns for layer ``name``."""
        if name not in self.layer_names():
            raise ConfigError(f"{name}: not a layer of this head; it has {', '.join(self.layer_names())}")
        if name == POOL_LAYER:
            return self.feature_dim
        linears = [m for m in self.fc if isinstance(m, nn.Linear)]
        return linears[int(name[2:]) - FIRST_FC].out_features

    def layer_features(self, region_features: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        """The activations ``names`` (see :meth:`layer_names`) for ``[R, D]`` region features: the
        region feature itself (``pool5``) and the output of each fully-connected layer after its ReLU
        (dropout, when configured, runs in training only and is skipped here, as at test time)."""
        unknown = [n for n in names if n not in self.layer_names()]
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: not a layer of this head; it has {', '.join(self.layer_names())}")
        out = {POOL_LAYER: region_features} if POOL_LAYER in names else {}
        x, index = region_features, FIRST_FC
        for module in self.fc:
            if isinstance(module, nn.Dropout):
                continue
            x = module(x)
            if isinstance(module, nn.ReLU):
                if f"fc{index}" in names:
                    out[f"fc{index}"] = x
                index += 1
        return out

    def predict(self, region_features: Tensor) -> tuple[Tensor, Tensor]:
        """``[R, D]`` features -> ``(class_logits [R, C + 1], box_deltas [R, C * 4])``."""
        hidden = self.fc(region_features)
        return self.cls_score(hidden), self.bbox_pred(hidden)

    def forward(self, x: Tensor, proposals: Sequence[Tensor],
                backbone: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        return self.predict(self.region_features(x, proposals, backbone))

    # -- boxes <-> deltas ------------------------------------------------------------------------
    def encode(self, gt_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Regression targets ``[R, 4]`` that take ``proposals`` ``[R, 4]`` to ``gt_boxes`` ``[R, 4]``."""
        return self.box_coder.encode(proposals.float(), gt_boxes.float())

    def decode(self, class_logits: Tensor, box_deltas: Tensor, proposals: Tensor,
               image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Class-specific boxes ``[R, C, 4]`` (clipped to the ``(H, W)`` image) and class
        probabilities ``[R, C]`` (softmax over ``C + 1``, background column dropped)."""
        r = proposals.shape[0]
        scores = torch.softmax(class_logits.float(), dim=-1)[:, 1:]
        deltas = box_deltas.float().reshape(r, self.num_classes, 4)
        boxes = self.box_coder.decode(deltas, proposals.float())  # [R, C, 4]
        return clip_boxes(boxes, image_size), scores
