"""R-CNN / Fast R-CNN: proposals -> a feature per region -> class scores and refined boxes.

Build it from a config (``detkit.models.builder.build_detector`` injects ``num_classes`` and
``class_names`` from the data's class list)::

    model = dict(type="rcnn", backbone=dict(type="resnet18"),
                 proposals=dict(type="sliding_window"),            # or selective_search, precomputed
                 head=dict(type="region_classifier", mode="roi"),   # "warp" = the original R-CNN
                 loss=dict(type="region_loss"),
                 postprocessor=dict(type="batched_nms", iou_threshold=0.3, score_threshold=0.05),
                 num_samples=128, fg_fraction=0.25, fg_iou=0.5, bg_iou=(0.1, 0.5))

The two stages:

1. **Proposals** (:mod:`detkit.models.proposals`) for every image, in the pixels of the *input image
   the model sees*; clipped to it, boxes smaller than ``min_proposal_size`` dropped, the first
   ``max_proposals_train`` / ``max_proposals_test`` kept (generators rank best first).
2. **Region classifier** (:mod:`detkit.models.heads.region_classifier`): ``roi`` mode runs the
   backbone once per image and pools every proposal from its feature map (Fast R-CNN); ``warp``
   mode crops and warps every proposal and runs the backbone on each crop (R-CNN). Either way:
   ``C + 1`` class logits (0 = background) and class-specific box deltas.

Training (``model.train()``, targets required): the ground-truth boxes are added to the proposals,
:class:`~detkit.models.sampler.RegionSampler` draws ``num_samples`` regions per image (at most
``fg_fraction`` foreground with IoU >= ``fg_iou``, backgrounds with IoU in ``bg_iou``, see the sampler
for the fallback), foregrounds get regression targets from the head's box coder (weights
(10, 10, 5, 5)), and the loss (:mod:`detkit.models.losses.region_loss`) returns ``loss_cls`` and
``loss_box`` plus ``stat_*`` values (the trainer sums only ``loss_*``). Objects flagged ``difficult``
(VOC) or ``iscrowd`` (COCO) are left out of the ground truth by default, as py-faster-rcnn does.

Inference (``model.eval()``): softmax scores, class-specific boxes decoded from every proposal and
clipped to the image (:meth:`RCNN.score_regions`: given proposals in, class boxes and scores out, the
part an export holds), then the postprocessor (score threshold, per-class NMS -- IoU 0.3 in the rcnn
configs, R-CNN's value -- and ``max_per_image``). Boxes are in input pixels, or in original-image
pixels for the images whose ``metas`` are passed: the detector contract of
:mod:`detkit.models.detectors.base`, which also hosts construction, input checks and normalisation.

Where proposals come from, and the trade-off. Proposals are generated on the input tensor (turned
back into ``uint8`` RGB for generators that look at pixels). That is the only choice that stays
correct under any training augmentation (flips, crops, affine, colour): the boxes match what the
network sees. The price is paid by expensive, content-dependent generators: selective search on a
freshly augmented image misses the plugin's disk cache every time (seconds per image). The
alternative -- proposals computed once on the original images, as the papers did -- is what
``precomputed`` offers; it needs the geometry from the original to the input, which detkit records
for resize / letterbox only, so it refuses augmented training images. Practical guide:

* ``sliding_window``: depends on the input size only; computed once per size and reused, free.
* ``selective_search``: train without geometric/colour augmentation so every image is identical in
  every epoch and cached after the first; or precompute the cache
  (``detkit_selective_search.precompute``).
* ``precomputed``: original-image boxes from a file, mapped through the resize record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from detkit import registry
from detkit.errors import ConfigError, DataError
from detkit.models.detectors.base import DetectorBase, image_name
from detkit.models.sampler import RegionSampler
from detkit.registry import Spec

__all__ = ["RCNN", "RegionProposals", "images_to_uint8", "proposal_boxes"]


def images_to_uint8(images: Tensor) -> list[np.ndarray]:
    """``[N, 3, H, W]`` float 0..1 -> ``N`` uint8 ``[H, W, 3]`` RGB arrays (what generators take).
    Grey ``[N, 1, H, W]`` images become grey RGB (the generators' contract is three channels)."""
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    as_bytes = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return list(as_bytes.permute(0, 2, 3, 1).contiguous().cpu().numpy())


def proposal_boxes(proposals: Sequence[Tensor] | Tensor) -> Tensor:
    """Every proposal's box ``[R, 4]``, in order: from one ``[P_i, 4]`` tensor per image, or from
    rois ``[R, 5]`` (image index, x1, y1, x2, y2; the form an exported graph takes)."""
    if isinstance(proposals, Tensor):
        return proposals[:, 1:]
    return torch.cat(list(proposals))


class RCNN(DetectorBase):
    """The R-CNN-family detector (see the module docstring).

    Args:
        backbone: backbone config (``out_channels``, ``stride``, ``pixel_mean``, ``pixel_std``).
        head: region classifier config, built with ``in_channels=backbone.out_channels``,
            ``num_classes`` and ``stride=backbone.stride``.
        loss: loss config (``dict(type="region_loss")``), built with ``num_classes``.
        postprocessor: the batched postprocessor (``dict(type="batched_nms", iou_threshold=0.3)``).
        proposals: proposal generator config (``dict(type="sliding_window")``, ...).
        num_classes: C; injected by the builder from the class list.
        class_names: names of the C classes.
        num_samples: regions sampled per training image (128).
        fg_fraction: largest foreground share of the sample (0.25).
        fg_iou: IoU from which a region is foreground (0.5).
        bg_iou: IoU band ``[lo, hi)`` of backgrounds ((0.1, 0.5)).
        bg_fallback: fill missing backgrounds from IoU ``[0, lo)`` (see :mod:`detkit.models.sampler`).
        max_proposals_train: proposals kept per training image (before the ground truth is added).
        max_proposals_test: proposals kept per image at inference.
        min_proposal_size: proposals narrower or lower than this many input pixels are dropped
            (they carry no features and have no defined box deltas).
        skip_difficult, skip_crowd: leave ``difficult`` / ``iscrowd`` objects out of training.

    Each component argument may also be an already-built object (Python use).
    """

    backbone_attributes = ("out_channels", "stride", "pixel_mean", "pixel_std")

    def __init__(
        self,
        backbone: Spec,
        head: Spec,
        loss: Spec,
        postprocessor: Spec,
        proposals: Spec,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        num_samples: int = 128,
        fg_fraction: float = 0.25,
        fg_iou: float = 0.5,
        bg_iou: Sequence[float] = (0.1, 0.5),
        bg_fallback: bool = True,
        max_proposals_train: int = 2000,
        max_proposals_test: int = 1000,
        min_proposal_size: float = 2.0,
        skip_difficult: bool = True,
        skip_crowd: bool = True,
    ):
        for name, value in (("max_proposals_train", max_proposals_train),
                            ("max_proposals_test", max_proposals_test)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if not float(min_proposal_size) >= 0:
            raise ConfigError(f"model.min_proposal_size must be >= 0, got {min_proposal_size!r}")
        super().__init__(backbone, head, loss, postprocessor, num_classes, class_names)
        self.max_proposals_train = max_proposals_train
        self.max_proposals_test = max_proposals_test
        self.min_proposal_size = float(min_proposal_size)
        self.skip_difficult = bool(skip_difficult)
        self.skip_crowd = bool(skip_crowd)
        self.sampler = RegionSampler(num_samples=num_samples, fg_fraction=fg_fraction, fg_iou=fg_iou,
                                     bg_iou=tuple(bg_iou), bg_fallback=bg_fallback)
        self.region_proposals = RegionProposals(registry.build("proposals", proposals, path="model.proposals"),
                                                self.min_proposal_size)

    @property
    def proposal_generator(self):
        return self.region_proposals.generator

    def head_defaults(self) -> dict:
        return {"stride": self.backbone.stride}

    def check_head(self) -> None:
        for attr in ("mode", "encode", "decode"):
            if not hasattr(self.head, attr):
                raise ConfigError(f"model.head: {type(self.head).__name__} is not a region classifier "
                                  f"(no '{attr}'); rcnn needs dict(type='region_classifier', ...)")
        super().check_head()

    @property
    def mode(self) -> str:
        return self.head.mode

    # -- forward ---------------------------------------------------------------------------------
    def head_inputs(self, images: Tensor) -> tuple[Tensor, torch.nn.Module | None]:
        """What the head reads besides the regions: the feature map (``roi``), or the normalised
        images and the backbone to run on their warped crops (``warp``)."""
        if self.head.mode == "warp":
            return self.normalise(images), self.backbone
        return self.features(images), None

    def region_features(self, images: Tensor, regions: Sequence[Tensor]) -> Tensor:
        """The region feature ``[R, D]`` of every region of all images, in order (the head's input:
        roi-pooled from the image's feature map, or the backbone's output on the warped crop)."""
        x, backbone = self.head_inputs(images)
        return self.head.region_features(x, regions, backbone=backbone)

    def classify_regions(self, images: Tensor, regions: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Run the backbone and the head: ``(class_logits [R, C + 1], box_deltas [R, C * 4])`` for the
        regions of all images, in order."""
        x, backbone = self.head_inputs(images)
        return self.head(x, regions, backbone=backbone)

    def forward_train(self, images: Tensor, targets: Sequence[Mapping],
                      metas: Sequence[Mapping]) -> dict[str, Tensor]:
        proposals = self.generate_proposals(images, metas, self.max_proposals_train)
        regions, labels, regression_targets = [], [], []
        skipped = 0
        for boxes, target in zip(proposals, targets):
            gt_boxes, gt_labels, flagged = self._training_ground_truth(target, images.device)
            skipped += flagged
            # Fast R-CNN and torchvision add the ground truth to the proposals: every object then has
            # at least one perfect foreground, also when the generator missed it.
            candidates = torch.cat((boxes, gt_boxes))
            sample = self.sampler(candidates, gt_boxes, gt_labels)
            chosen = candidates[sample.index]
            deltas = torch.zeros_like(chosen)
            if sample.num_fg:
                fg_gt = gt_boxes[sample.matched_gt[: sample.num_fg]]
                deltas[: sample.num_fg] = self.head.encode(fg_gt, chosen[: sample.num_fg]).to(deltas)
            regions.append(chosen)
            labels.append(sample.labels)
            regression_targets.append(deltas)
        class_logits, box_deltas = self.classify_regions(images, regions)
        losses = self.loss(class_logits, box_deltas, torch.cat(labels), torch.cat(regression_targets))
        device = images.device
        losses["stat_proposals"] = torch.tensor(sum(len(p) for p in proposals) / len(proposals), device=device)
        losses["stat_skipped_flagged"] = torch.tensor(float(skipped), device=device)
        return losses

    def forward_test(self, images: Tensor, metas: Sequence[Mapping | None] | None) -> list[dict]:
        return self.detect(images, self.generate_proposals(images, metas, self.max_proposals_test))

    @torch.no_grad()
    def detect(self, images: Tensor, proposals: list[Tensor]) -> list[dict]:
        """Detections in input pixels from given proposals (one ``[P_i, 4]`` tensor per image)."""
        boxes, scores = self.score_regions(images, proposals)
        counts = [len(p) for p in proposals]
        return self.postprocessor(list(boxes.split(counts)), list(scores.split(counts)))

    def score_regions(self, images: Tensor, proposals: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Score given proposals: class-specific boxes ``[R, C, 4]`` (input pixels, clipped to the
        image) and per-class scores ``[R, C]`` for the proposals of all images, in order -- everything
        before the postprocessor. This is the part of the detector an export holds (proposal
        generators are not graph code); every R-CNN-family detector answers it (``rcnn_classic``
        with its SVMs and box regressors)."""
        class_logits, box_deltas = self.classify_regions(images, proposals)
        # Sizes as they are (traced values under export), as the graph's other consumers take them.
        image_size = (images.shape[-2], images.shape[-1])
        return self.head.decode(class_logits, box_deltas, proposal_boxes(proposals), image_size)

    # -- proposals -------------------------------------------------------------------------------
    def generate_proposals(self, images: Tensor, metas: Sequence[Mapping | None] | None, cap: int) -> list[Tensor]:
        """Proposals of every image in input pixels (see :class:`RegionProposals`)."""
        return self.region_proposals(images, metas, cap)

    def _training_ground_truth(self, target: Mapping, device) -> tuple[Tensor, Tensor, int]:
        boxes = target["boxes"].to(device, torch.float32).reshape(-1, 4)
        labels = target["labels"].to(device, torch.int64).reshape(-1)
        keep = torch.ones(len(boxes), dtype=torch.bool, device=device)
        for key, skip in (("difficult", self.skip_difficult), ("iscrowd", self.skip_crowd)):
            if skip and target.get(key) is not None:
                keep &= ~torch.as_tensor(target[key], device=device).reshape(-1).bool()
        # Degenerate boxes cannot be regression targets (log of a zero size).
        keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep], labels[keep], int((~keep).sum())


class RegionProposals:
    """The proposal stage: a generator's boxes for every image in input pixels, cleaned. Shared by
    :class:`RCNN` and the runtimes of exported R-CNN graphs (:mod:`detkit.deploy.backends`), which
    take the proposals as an input.

    ``__call__(images, metas, cap)``: float32 ``[P_i, 4]`` per image on the images' device, clipped,
    without boxes below ``min_size``, at most ``cap``. ``metas`` (one per image, or ``None``) are handed
    to generators that use them (``uses_meta``).
    """

    def __init__(self, generator, min_size: float):
        if not callable(generator):
            raise ConfigError(f"model.proposals: {type(generator).__name__} is not callable")
        self.generator = generator
        self.min_size = float(min_size)
        self._size_proposals: dict[tuple, Tensor] = {}  # size-only generators: (H, W, device) -> boxes

    def __call__(self, images: Tensor, metas: Sequence[Mapping | None] | None, cap: int) -> list[Tensor]:
        n, _, height, width = images.shape
        generator = self.generator
        size_only = getattr(generator, "depends_only_on_size", False) and hasattr(generator, "for_size")
        if size_only:
            key = (height, width, images.device)
            if key not in self._size_proposals:
                raw = generator.for_size(height, width)
                # One entry: a run uses one input size at a time, so older sizes are not kept.
                self._size_proposals = {key: self._clean(raw, height, width, images.device, "")}
            shared = self._size_proposals[key][:cap]
            return [shared] * n
        arrays = images_to_uint8(images)
        uses_meta = getattr(generator, "uses_meta", False)
        out = []
        for i, image in enumerate(arrays):
            meta = dict((metas[i] if metas is not None else None) or {})
            raw = generator(image, meta=meta) if uses_meta else generator(image)
            out.append(self._clean(raw, height, width, images.device, image_name(meta, i))[:cap])
        return out

    def _clean(self, raw, height: int, width: int, device, name: str) -> Tensor:
        array = np.asarray(raw, dtype=np.float32)
        if array.size == 0:
            return torch.zeros((0, 4), device=device)
        if array.ndim != 2 or array.shape[1] != 4 or not np.isfinite(array).all():
            problem = (f"shape {tuple(array.shape)}" if array.ndim != 2 or array.shape[1] != 4
                       else "NaN or infinite coordinates")
            raise DataError(f"model.proposals: {type(self.generator).__name__} returned {problem} "
                            f"for image {name or '?'}; the contract is float32 [P, 4] xyxy boxes")
        boxes = torch.tensor(array, device=device)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_size) & (
            (boxes[:, 3] - boxes[:, 1]) >= self.min_size)
        # Also drops empty boxes when min_size is 0: no deltas are defined for them.
        keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep]
