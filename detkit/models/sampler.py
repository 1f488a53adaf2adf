"""Matching proposals to ground truth and sampling the regions a two-stage detector trains on.

:class:`RegionSampler` is the minibatch sampling of Fast R-CNN (Girshick, ICCV 2015, section 2.3),
which the R-CNN family and torchvision's ``RoIHeads`` share. Per image:

1. every proposal is matched to the ground-truth box of highest IoU (ties: the first box);
2. **foreground**: IoU >= ``fg_iou`` (0.5); it takes that box's class and regresses towards it;
3. **background** (class 0): IoU in ``[bg_iou[0], bg_iou[1])`` = [0.1, 0.5). The lower bound makes
   the backgrounds "hard": they touch an object, the cue for hard-example mining in the paper;
4. ``num_samples`` (128) regions are drawn at random without replacement: at most
   ``fg_fraction * num_samples`` (25%, i.e. 32) foregrounds, the rest backgrounds. When there are
   fewer foregrounds, more backgrounds are taken (the paper's rule), so the sample stays full while
   candidates last.

Fallback for backgrounds (``bg_fallback=True``, the default). An image may hold fewer proposals in
the background band than needed (no object at all: every IoU is 0, or few proposals). Then the
remaining backgrounds are drawn from ``[0, bg_iou[0])``, i.e. the band widens to ``[0, bg_iou[1])``
only by as much as needed, and band members are always taken first. Detectron later made
``[0, 0.5)`` its default (``BG_THRESH_LO = 0.0``) for the same reason. With ``bg_fallback=False``
such an image simply contributes fewer regions.

Proposals with ``bg_iou[1] <= IoU < fg_iou`` (only when the two thresholds differ) are ignored.

The sample is vectorised: a random permutation of the proposals, then one stable sort by category
(foreground / band background / fallback background / ignored); the first entries of each category
are the sample. Randomness comes from ``generator`` (a ``torch.Generator``) when
given, else from torch's global generator, so a global seed (``train.seed``) reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detkit.errors import ConfigError
from detkit.ops.boxes import box_iou

__all__ = ["RegionSampler", "SampledRegions", "match_proposals"]

# Sort categories (foreground first, then the background band, then the fallback, then ignored).
_FG, _BG_BAND, _BG_FALLBACK, _IGNORED = 0, 1, 2, 3


@dataclass
class SampledRegions:
    """The regions sampled from one image (``S`` of them: foregrounds first, then backgrounds)."""

    index: Tensor  # int64 [S]: position in the proposals given to the sampler
    labels: Tensor  # int64 [S]: 0 = background, 1..C = ground-truth class + 1
    matched_gt: Tensor  # int64 [S]: index of the matched ground-truth box (only meaningful for fg)
    iou: Tensor  # float [S]: IoU with that box
    num_fg: int
    num_bg: int


def match_proposals(proposals: Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Best ground-truth box of every proposal: ``(max IoU [P], index [P])``; IoU 0 and index 0 when
    there is no ground truth. Degenerate (zero-area) pairs count as IoU 0."""
    num = proposals.shape[0]
    if gt_boxes.shape[0] == 0:
        return proposals.new_zeros(num), torch.zeros(num, dtype=torch.int64, device=proposals.device)
    iou = torch.nan_to_num(box_iou(proposals, gt_boxes), nan=0.0)
    return iou.max(dim=1)  # first maximum on ties


class RegionSampler:
    """Fast R-CNN's foreground / background minibatch sampling (see the module docstring).

    Args:
        num_samples: regions per image (128 in Fast R-CNN; R-CNN fine-tuned on 32 fg + 96 bg).
        fg_fraction: the largest share of foregrounds (0.25).
        fg_iou: the IoU from which a proposal is foreground (0.5).
        bg_iou: ``(lo, hi)``: the IoU band ``[lo, hi)`` of backgrounds ((0.1, 0.5)).
        bg_fallback: fill missing backgrounds from ``[0, lo)`` (see the module docstring).
    """

    def __init__(self, num_samples: int = 128, fg_fraction: float = 0.25, fg_iou: float = 0.5,
                 bg_iou: tuple[float, float] = (0.1, 0.5), bg_fallback: bool = True):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"model.num_samples must be a positive integer, got {num_samples!r}")
        if not 0.0 <= float(fg_fraction) <= 1.0:
            raise ConfigError(f"model.fg_fraction must lie in [0, 1], got {fg_fraction!r}")
        if not 0.0 < float(fg_iou) <= 1.0:
            raise ConfigError(f"model.fg_iou must lie in (0, 1], got {fg_iou!r}")
        try:
            lo, hi = (float(v) for v in bg_iou)
        except (TypeError, ValueError):
            raise ConfigError(f"model.bg_iou must be a pair (lo, hi), got {bg_iou!r}") from None
        if not 0.0 <= lo < hi <= float(fg_iou):
            raise ConfigError(
                f"model.bg_iou must satisfy 0 <= lo < hi <= fg_iou ({fg_iou}), got {bg_iou!r}: a proposal "
                f"cannot be both foreground and background"
            )
        self.num_samples = num_samples
        self.fg_fraction = float(fg_fraction)
        self.fg_iou = float(fg_iou)
        self.bg_iou = (lo, hi)
        self.bg_fallback = bool(bg_fallback)

    @property
    def max_fg(self) -> int:
        return int(self.num_samples * self.fg_fraction)

    def __repr__(self) -> str:
        return (f"RegionSampler(num_samples={self.num_samples}, fg_fraction={self.fg_fraction}, "
                f"fg_iou={self.fg_iou}, bg_iou={self.bg_iou}, bg_fallback={self.bg_fallback})")

    def categorise(self, max_iou: Tensor) -> Tensor:
        """int64 category of every proposal: 0 fg, 1 background band, 2 fallback background, 3 ignored."""
        lo, hi = self.bg_iou
        category = torch.full_like(max_iou, _IGNORED, dtype=torch.int64)
        category[max_iou < hi] = _BG_BAND
        category[max_iou < lo] = _BG_FALLBACK if self.bg_fallback else _IGNORED
        category[max_iou >= self.fg_iou] = _FG
        return category

    def __call__(self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                 generator: torch.Generator | None = None) -> SampledRegions:
        """Sample from ``proposals`` ``[P, 4]`` given the image's ground truth ``[K, 4]`` / ``[K]``
        (labels 0..C-1). Returns foregrounds first, then band backgrounds, then fallback ones."""
        device = proposals.device
        max_iou, matched = match_proposals(proposals, gt_boxes)
        category = self.categorise(max_iou)
        counts = torch.bincount(category, minlength=4).tolist()  # one host sync per image

        num_fg = min(self.max_fg, counts[_FG])
        num_bg = min(self.num_samples - num_fg, counts[_BG_BAND] + counts[_BG_FALLBACK])
        # A random permutation, then a stable sort by category: random order inside each category.
        key_device = generator.device if generator is not None else device
        shuffled = torch.randperm(proposals.shape[0], generator=generator, device=key_device).to(device)
        order = shuffled[torch.sort(category[shuffled], stable=True).indices]
        # order: [fg (counts[0]) | band bg | fallback bg | ignored]; band then fallback are adjacent.
        index = torch.cat((order[:num_fg], order[counts[_FG]: counts[_FG] + num_bg]))

        labels = torch.zeros(index.shape[0], dtype=torch.int64, device=device)
        if num_fg:
            labels[:num_fg] = gt_labels.to(device)[matched[index[:num_fg]]] + 1
        return SampledRegions(index=index, labels=labels, matched_gt=matched[index], iou=max_iou[index],
                              num_fg=num_fg, num_bg=num_bg)
