"""The base class every detkit dataset derives from, and the sample contract.

A subclass implements three things:

* ``__len__``
* ``load_annotation(index) -> Annotation``: boxes / labels / flags of one image, read from the
  annotation source only (cheap; used by ``check-data`` and the evaluators without decoding images)
* ``image_path(index) -> Path``
* ``_select(keep)``: keep only the samples ``keep`` (indices, in order), so the verification pass can
  exclude unusable ones (:meth:`DetectionDataset.exclude`); optional, a data set without it keeps
  them and ``train.bad_sample`` decides

``__getitem__`` then reads the image with :func:`detkit.data.io.read_image`, applies the transforms
and returns ``(image, target)``:

* ``image``: float32 tensor ``[3, H, W]``, RGB, 0..1
* ``target``: ``dict(boxes=FloatTensor[K, 4] xyxy input pixels, labels=LongTensor[K] (0..C-1),
  difficult=BoolTensor[K], iscrowd=BoolTensor[K], image_id=int, meta=dict(orig_size, input_size,
  scale, pad, file_name, path, image_id))``

Transforms are callables ``transform(sample) -> sample`` on the dict
``dict(image=uint8 HWC RGB ndarray, boxes=float32 [K,4], labels=int64 [K], difficult=bool [K],
iscrowd=bool [K], meta=dict)``; a resize step updates ``meta`` (see detkit.structures).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from detkit.structures import identity_meta

__all__ = ["Annotation", "ImageDataset", "DetectionDataset", "ANNOTATION_STATS", "summarize_stats"]

logger = logging.getLogger(__name__)

# Annotation.stats counters that mean the loader changed or left out something, in report order,
# with what they count. One table for the load-time log of every data set type, check-data and the
# converters.
ANNOTATION_STATS = (
    ("unknown_class", "boxes of unknown classes skipped"),
    ("clipped", "boxes partly outside the image (clipped)"),
    ("outside", "boxes entirely outside the image (dropped)"),
    ("dropped", "zero-area / inverted boxes (dropped)"),
    ("duplicate", "duplicate boxes (dropped)"),
    ("size_missing", "annotations without a usable image size"),
    ("missing_label", "images without a label file (negatives)"),
)
# Counters that follow from the user's own choices, shown for information.
CHOICE_STATS = (
    ("skipped_difficult", "difficult boxes left out (skip_difficult)"),
    ("excluded_class", "boxes of classes not selected (classes=)"),
)


def summarize_stats(stats) -> list[str]:
    """``["3 boxes partly outside the image (clipped)", ...]`` for the non-zero problem counters."""
    return [f"{stats[key]} {text}" for key, text in ANNOTATION_STATS if stats.get(key)]


@dataclass
class Annotation:
    """What an annotation file says about one image, already cleaned (clipped, filtered)."""

    image_id: int
    file_name: str
    boxes: np.ndarray  # float32 [K, 4] xyxy, original image pixels
    labels: np.ndarray  # int64 [K], 0..C-1
    difficult: np.ndarray | None = None  # bool [K]
    iscrowd: np.ndarray | None = None  # bool [K]
    width: int | None = None  # as the annotation states it (may be missing or wrong)
    height: int | None = None
    stats: dict = field(default_factory=dict)  # counters: clipped, dropped, unknown_class, ...

    def __post_init__(self):
        k = len(self.boxes)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(k, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(k)
        self.difficult = (np.zeros(k, bool) if self.difficult is None
                          else np.asarray(self.difficult, dtype=bool).reshape(k))
        self.iscrowd = (np.zeros(k, bool) if self.iscrowd is None
                        else np.asarray(self.iscrowd, dtype=bool).reshape(k))


class ImageDataset(torch.utils.data.Dataset):
    """What detection and classification data sets share: the class list and the sample transforms
    (a dict is built with :func:`detkit.data.transforms.build_transforms`).

    ``max_image_pixels``: images with more pixels are refused (None: the default of
    :func:`detkit.data.io.max_image_pixels`; ``build_dataset`` sets it from ``data.max_image_pixels``).
    """

    max_image_pixels: int | None = None

    def __init__(self, classes: Sequence[str], transforms: Callable | dict | None = None):
        if not classes:
            raise ValueError("classes must list at least one class name")
        self.classes = tuple(classes)
        if isinstance(transforms, dict):
            from detkit.data.transforms import build_transforms

            transforms = build_transforms(transforms)
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DetectionDataset(ImageDataset):
    """Common behaviour of all detection datasets (see module docstring for the contract)."""

    # -- to implement --------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def load_annotation(self, index: int) -> Annotation:
        raise NotImplementedError

    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def _select(self, keep: list[int]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot exclude samples (it has no _select)")

    # -- shared --------------------------------------------------------------------------------
    def exclude(self, indices) -> None:
        """Drop the samples ``indices`` (e.g. the ones the verification pass found unusable).

        The remaining samples keep their order and are renumbered ``0..len-1``.
        """
        drop = set(int(i) for i in indices)
        if drop:
            self._select([i for i in range(len(self)) if i not in drop])

    def load_image(self, index: int) -> np.ndarray:
        from detkit.data.io import read_image

        return read_image(self.image_path(index), self.max_image_pixels)

    def log_stats(self, kind: str, where: str, stats) -> None:
        """Log what the loader changed or left out while reading the annotations, in one line."""
        problems = summarize_stats(stats)
        if problems:
            names = sorted(k.split(":", 1)[1] for k in stats if k.startswith("unknown_class:"))
            extra = f" (unknown: {', '.join(names[:10])})" if names else ""
            logger.warning("%s %s: %s%s", kind, where, "; ".join(problems), extra)

    def note_image_size(self, index: int, size: tuple[int, int]) -> None:
        """The verification pass measured sample ``index``'s image (``(height, width)``); a data set
        whose annotations need the size (YOLO's normalised boxes) keeps it, the others ignore it."""

    def raw_sample(self, index: int) -> dict:
        """Image and annotation before transforms; boxes are checked against the decoded image."""
        ann = self.load_annotation(index)
        return self.make_sample(index, ann, self.load_image(index))

    def make_sample(self, index: int, ann: Annotation, image: np.ndarray) -> dict:
        """The sample dict of ``ann`` and its decoded ``image`` (boxes clipped to the decoded size)."""
        h, w = image.shape[:2]
        boxes = ann.boxes.copy()
        if len(boxes):
            # The annotation may state a wrong <size>; the decoded image (after EXIF rotation) rules.
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        else:
            keep = np.zeros(0, bool)
        meta = identity_meta(h, w)
        # image_id too: the meta is all a detector sees of an image at evaluation (metas=...), and
        # precomputed proposals may be keyed by it.
        meta.update(file_name=ann.file_name, path=str(self.image_path(index)), image_id=ann.image_id)
        return {
            "image": image,
            "boxes": boxes[keep],
            "labels": ann.labels[keep],
            "difficult": ann.difficult[keep],
            "iscrowd": ann.iscrowd[keep],
            "image_id": ann.image_id,
            "meta": meta,
        }

    def __getitem__(self, index: int):
        sample = self.raw_sample(index)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return to_tensors(sample)


def to_tensors(sample: dict):
    """Turn a transformed sample dict into the ``(image, target)`` pair of the contract."""
    image = sample["image"]
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if image.dtype == torch.uint8:
        image = image.float().div_(255.0)
    h, w = image.shape[-2:]
    meta = dict(sample["meta"])
    meta["input_size"] = (int(h), int(w))
    target = {
        "boxes": torch.as_tensor(np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)),
        "labels": torch.as_tensor(np.asarray(sample["labels"], dtype=np.int64).reshape(-1)),
        "difficult": torch.as_tensor(np.asarray(sample["difficult"], dtype=bool).reshape(-1)),
        "iscrowd": torch.as_tensor(np.asarray(sample["iscrowd"], dtype=bool).reshape(-1)),
        "image_id": int(sample["image_id"]),
        "meta": meta,
    }
    return image, target
