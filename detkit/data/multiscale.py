"""Multi-scale training (``train.multi_scale``): every batch resized to a random multiple of ``divisor``.

YOLOv2's multi-scale training, as ultralytics (``multi_scale``) and mmdetection
(``BatchSyncRandomResize``) do it: the data set produces batches at its own size, then the whole batch
is resized to a side drawn from ``scale`` x that size, rounded to a multiple of ``divisor`` (the
backbone stride), and kept for ``interval`` iterations. Boxes and every image's meta (``scale``,
``pad``, ``input_size``) follow the resize, so targets stay in input pixels of the new size::

    train = dict(multi_scale=dict(scale=(0.75, 1.25), divisor=32, interval=1))

Sizes come from ``random.Random(derive_seed(seed, epoch, iteration // interval))``: they depend on
nothing but the run's seed and position, so a resumed run trains on the same sizes. Evaluation and
inference keep the data set's size. Square batches stay square; a ``(h, w)`` batch keeps its aspect
ratio (both sides rounded).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from detkit.errors import ConfigError
from detkit.seeding import derive_seed, set_loader_epoch

__all__ = ["MultiScaleLoader", "resize_batch"]


def resize_batch(images: torch.Tensor, targets: Sequence[dict], size: tuple[int, int]):
    """``images`` ``[N, C, H, W]`` resized (bilinear) to ``size`` ``(h, w)``, with boxes and metas."""
    h, w = images.shape[-2:]
    new_h, new_w = size
    if (new_h, new_w) == (h, w):
        return images, list(targets)
    images = torch.nn.functional.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False)
    sx, sy = new_w / w, new_h / h
    factor = torch.tensor([sx, sy, sx, sy])
    out = []
    for t in targets:
        t = dict(t)
        t["boxes"] = t["boxes"] * factor.to(t["boxes"])
        meta = dict(t.get("meta") or {})
        if "scale" in meta:
            meta["scale"] = (meta["scale"][0] * sx, meta["scale"][1] * sy)
        if "pad" in meta:
            meta["pad"] = (meta["pad"][0] * sx, meta["pad"][1] * sy)
        meta["input_size"] = (new_h, new_w)
        t["meta"] = meta
        out.append(t)
    return images, out


class MultiScaleLoader:
    """Wraps a training loader; see the module docstring."""

    def __init__(self, loader, *, scale: Sequence[float] = (0.75, 1.25), divisor: int = 32, interval: int = 1,
                 seed: int = 0):
        if (not isinstance(scale, Sequence) or len(scale) != 2 or not 0 < float(scale[0]) <= float(scale[1])):
            raise ConfigError(f"train.multi_scale.scale: expected (low, high) with 0 < low <= high, got {scale!r}")
        for name, value in (("divisor", divisor), ("interval", interval)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"train.multi_scale.{name}: expected an integer >= 1, got {value!r}")
        self.loader = loader
        self.scale = (float(scale[0]), float(scale[1]))
        self.divisor = divisor
        self.interval = interval
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self):
        return self.loader.dataset

    @property
    def num_skipped(self):
        return getattr(self.loader, "num_skipped", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        set_loader_epoch(self.loader, epoch, self.seed)

    def size_for(self, iteration: int, base: tuple[int, int]) -> tuple[int, int]:
        """The ``(h, w)`` of batch ``iteration`` of the current epoch, for batches of size ``base``."""
        factor = random.Random(derive_seed(self.seed, self.epoch, iteration // self.interval)).uniform(*self.scale)
        return tuple(max(self.divisor, int(round(side * factor / self.divisor)) * self.divisor) for side in base)

    def __iter__(self):
        for i, (images, targets) in enumerate(self.loader):
            yield resize_batch(images, targets, self.size_for(i, tuple(images.shape[-2:])))
