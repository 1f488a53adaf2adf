"""Sliding-window proposals: multi-scale, multi-aspect windows laid on a regular grid.

The oldest proposal method (Viola-Jones, OverFeat's dense windows) and the simplest stand-in for
selective search: it knows nothing about the image content, so it costs nothing per image, and the
box regressor of the detector refines the windows.

Windows, for every scale ``s`` in ``scales`` and aspect ratio ``a`` (height / width) in
``aspect_ratios``:

* size: ``w = s * min(H, W) / sqrt(a)``, ``h = s * min(H, W) * sqrt(a)`` (the area is the one of an
  ``s * min(H, W)`` square, like torchvision's anchors), shrunk to the image when it is larger;
* positions: the top-left corners are spread evenly from one image edge to the other, with the
  number of positions chosen so that consecutive windows are at most ``step * w`` (``step * h``)
  apart. Both edges are always covered. Windows smaller than ``min_size`` pixels are not made.

Order and cap. The boxes come in a *prefix-balanced* order, so that keeping the first ``N`` (what
``max_proposals`` and the detector's ``max_proposals_train/test`` do) is a fair sample of all of them:

* inside one (scale, aspect) group the grid positions are visited in bit-reversed order of their
  raster index, so any prefix is spread over the whole image instead of filling the top rows first;
* the groups are interleaved by rank fraction (``rank / group size``), so a prefix holds every group
  in proportion to its size and, as soon as ``N`` reaches the number of groups, at least one window of
  every scale and aspect.

Exact duplicates (several large windows shrunk to the same image-filling box) are kept once.

The boxes depend on the image size only: :meth:`SlidingWindow.for_size` computes them once per size
and returns the same read-only array afterwards (the detector calls it directly, without turning the
input tensor back into an image). Everything is vectorised with numpy and deterministic.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from detkit.errors import ConfigError
from detkit.models.proposals import check_limits

__all__ = ["SlidingWindow", "bit_reversed_order"]

# Sizes whose windows are kept in memory; a training run uses one or a few input sizes.
_CACHE_SIZES = 16


def bit_reversed_order(n: int) -> np.ndarray:
    """A permutation of ``0..n-1`` in bit-reversed (van der Corput) order: every prefix is spread
    evenly over the range (0, n/2, n/4, 3n/4, ...)."""
    if n <= 1:
        return np.arange(n, dtype=np.int64)
    bits = int(math.ceil(math.log2(n)))
    index = np.arange(1 << bits, dtype=np.int64)
    reversed_index = np.zeros_like(index)
    for b in range(bits):
        reversed_index |= ((index >> b) & 1) << (bits - 1 - b)
    return reversed_index[reversed_index < n]


def _positions(extent: float, window: float, step: float) -> np.ndarray:
    """Start coordinates of windows of size ``window`` covering ``[0, extent]`` at most ``step`` apart."""
    free = extent - window
    if free <= 1e-6:
        return np.zeros(1)
    count = int(math.ceil(free / step - 1e-9)) + 1
    return np.linspace(0.0, free, count)


class SlidingWindow:
    """Multi-scale, multi-aspect sliding windows (see the module docstring).

    Args:
        scales: window sides as fractions of the image's shorter side (for aspect 1).
        aspect_ratios: window height / width; each keeps the area of its scale's square.
        step: largest distance between neighbouring windows, as a fraction of the window's side
            (0.25: neighbours overlap by at least 75% along each axis).
        max_proposals: keep at most this many windows (a balanced prefix; ``None``: all).
        min_size: windows narrower or lower than this many pixels are not made.
    """

    depends_only_on_size = True

    def __init__(
        self,
        scales: Sequence[float] = (0.12, 0.18, 0.27, 0.4, 0.6, 0.9),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        step: float = 0.25,
        max_proposals: int | None = 2000,
        min_size: float = 4.0,
    ):
        self.scales = _positive_tuple(scales, "scales")
        self.aspect_ratios = _positive_tuple(aspect_ratios, "aspect_ratios")
        if not 0.0 < float(step) <= 1.0:
            raise ConfigError(f"sliding_window: step must lie in (0, 1], got {step!r}")
        self.max_proposals, self.min_size = check_limits("sliding_window", max_proposals, min_size)
        self.step = float(step)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def __repr__(self) -> str:
        return (f"SlidingWindow(scales={self.scales}, aspect_ratios={self.aspect_ratios}, step={self.step}, "
                f"max_proposals={self.max_proposals}, min_size={self.min_size:g})")

    # -- the contract ----------------------------------------------------------------------------
    def __call__(self, image: np.ndarray) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.ndim < 2:
            raise ValueError(f"sliding_window: expected an image array [H, W, 3], got {type(image).__name__}")
        return self.for_size(image.shape[0], image.shape[1])

    def for_size(self, height: int, width: int) -> np.ndarray:
        """The windows of a ``height x width`` image: float32 ``[P, 4]`` xyxy, read-only, cached."""
        key = (int(height), int(width))
        if min(key) < 1:
            raise ValueError(f"sliding_window: image size must be positive, got {key}")
        boxes = self._cache.get(key)
        if boxes is None:
            boxes = self.generate(*key)
            boxes.flags.writeable = False  # shared between calls: nobody may edit it in place
            self._cache[key] = boxes
            if len(self._cache) > _CACHE_SIZES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return boxes

    def generate(self, height: int, width: int) -> np.ndarray:
        """Compute the windows of a ``height x width`` image (no cache)."""
        side = min(height, width)
        groups, ranks = [], []
        for scale in self.scales:
            for aspect in self.aspect_ratios:
                w = min(scale * side / math.sqrt(aspect), width)
                h = min(scale * side * math.sqrt(aspect), height)
                if w < self.min_size or h < self.min_size:
                    continue
                xs = _positions(width, w, self.step * w)
                ys = _positions(height, h, self.step * h)
                x0 = np.tile(xs, len(ys))  # raster order: row by row
                y0 = np.repeat(ys, len(xs))
                order = bit_reversed_order(len(x0))
                boxes = np.stack((x0, y0, x0 + w, y0 + h), axis=1)[order]
                groups.append(boxes)
                ranks.append(np.arange(len(boxes)) / len(boxes))
        if not groups:
            return np.zeros((0, 4), np.float32)
        boxes = np.concatenate(groups)
        # Interleave the groups by rank fraction; the stable sort keeps group order among ties.
        boxes = boxes[np.argsort(np.concatenate(ranks), kind="stable")]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        boxes = boxes.astype(np.float32)
        # Drop exact duplicates, keeping the first occurrence (and so the order).
        _, first = np.unique(boxes, axis=0, return_index=True)
        boxes = boxes[np.sort(first)]
        if self.max_proposals is not None:
            boxes = boxes[: self.max_proposals]
        return np.ascontiguousarray(boxes)


def _positive_tuple(values, name: str) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        values = (values,)
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"sliding_window: {name} must be a list of positive numbers, got {values!r}") from None
    if not out or any(not (v > 0 and math.isfinite(v)) for v in out):
        raise ConfigError(f"sliding_window: {name} must be a non-empty list of positive numbers, got {values!r}")
    return out
