"""What every detector checks and does the same way: its inputs, and mapping boxes back to originals.

Detectors derive from :class:`DetectorBase` (an ``nn.Module``) and set ``num_classes`` and
``min_input_size``; the checks turn the classic mistakes (0..255 images, a dict instead of a list of
targets, labels out of range) into clear errors naming the image, instead of a silent bad run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detkit.errors import DataError
from detkit.structures import boxes_to_original, check_targets

__all__ = ["DetectorBase", "image_name"]


def image_name(meta: Mapping, index: int | None = None) -> str:
    """The best name of an image for messages: its path, file name or id (or batch position)."""
    name = meta.get("path") or meta.get("file_name") or (
        f"id {meta['image_id']}" if meta.get("image_id") is not None else None)
    if name:
        return str(name)
    return f"#{index} of the batch" if index is not None else ""


class DetectorBase(nn.Module):
    num_classes: int
    min_input_size: int = 1

    def check_inputs(self, images, targets) -> None:
        self._check_images(images)
        if targets is not None:
            self._check_target_list(targets, len(images))
        if self.training and targets is None:
            raise ValueError(f"{type(self).__name__} in training mode needs targets (call model.eval() to detect)")

    def targets_from_metas(self, targets, metas):
        """Eval-mode ``metas`` (one image meta per image, see docs/architecture.md) as the targets
        the detectors read metas from today. A stop-gap so the evaluation loop can pass metas
        already; issue 14's detector rework makes ``metas`` the detectors' own argument."""
        if metas is None or targets is not None or self.training:
            return targets
        return [{"meta": meta} if meta is not None else {} for meta in metas]

    @staticmethod
    def map_to_original(detections: list[dict], targets: Sequence[Mapping] | None) -> list[dict]:
        """Boxes from input pixels to original-image pixels, for every target that carries a meta."""
        if targets is not None:
            for det, target in zip(detections, targets):
                meta = target.get("meta")
                if meta:
                    det["boxes"] = boxes_to_original(det["boxes"], meta)
        return detections

    def _check_images(self, images) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a float tensor [N, 3, H, W], got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W] RGB, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in 0..1, got {images.dtype} (divide uint8 images by 255)")
        # 0..255 input is the classic mistake; it would train, just badly, so stop it here.
        if images.numel() and float(images.detach().amax()) > 1.5:
            raise ValueError(f"images must be scaled to 0..1, found values up to "
                             f"{float(images.detach().amax()):.1f} (divide 0..255 images by 255)")
        h, w = images.shape[-2:]
        if min(h, w) < self.min_input_size:
            raise ValueError(f"input {h}x{w} is smaller than the backbone's minimum {self.min_input_size} px")

    def _check_target_list(self, targets, batch_size: int) -> None:
        if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
            raise TypeError(f"targets must be a list with one dict per image, got {type(targets).__name__}")
        if len(targets) != batch_size:
            raise ValueError(f"{batch_size} images but {len(targets)} targets")
        for i, t in enumerate(targets):
            if not isinstance(t, Mapping):
                raise TypeError(f"targets[{i}] must be a dict, got {type(t).__name__}")
        if not self.training:
            return  # detection only reads the metas
        try:
            check_targets(targets, self.num_classes)
        except ValueError as exc:
            message = str(exc)
            found = re.match(r"targets\[(\d+)\]", message)
            if found:
                name = image_name(targets[int(found.group(1))].get("meta") or {})
                if name:
                    message += f" (image {name})"
            raise DataError(message) from exc
