"""Classification data: the sample contract, the shared class selection, and the ImageFolder reader.

A classification data set derives from :class:`ClassificationDataset` and implements ``__len__``,
``load_image(index) -> uint8 [H, W, 3] RGB`` and keeps ``self.labels`` (int64 ``[N]``, ``0..C-1``);
one that reads files also gives ``image_path(index)`` (the loader names it when a file is bad).
``__getitem__`` returns ``(image, target)``:

* ``image``: float32 ``[3, H, W]``, RGB, 0..1, after the same ``transforms`` as detection
  (:func:`detkit.data.transforms.build_transforms`: ``size``, ``augment`` with any albumentations
  transform, e.g. ``RandomResizedCrop`` or ``PadIfNeeded`` + ``RandomCrop``, ``HorizontalFlip``);
* ``target``: ``dict(label=LongTensor[] (0..C-1), image_id=int (the index), meta=dict(orig_size,
  input_size, scale, pad, file_name, path, image_id))``.

Grey data sets (MNIST) give their images as three equal channels, so one pipeline serves every data
set; a model whose backbone has ``in_channels=1`` turns them back into exactly the grey values (the
luma weights sum to 1).

``classes`` (``data.classes`` of the config) selects and orders the classes of a data set with a fixed
class list (CIFAR, MNIST: the others' images are left out, logged) and names the folders an
ImageFolder tree reads (default: all of them, sorted, as torchvision's ``ImageFolder``).

Used by ``detkit classify`` (:mod:`detkit.tasks`); the data sets are registered in the
``detkit.datasets`` group like the detection ones and say ``task = "classification"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from detkit.data.base import ImageDataset, to_tensors
from detkit.errors import ConfigError, DataError
from detkit.structures import identity_meta

__all__ = ["ClassificationDataset", "ImageFolderDataset", "select_classes"]

logger = logging.getLogger(__name__)


def select_classes(names: Sequence[str], labels: np.ndarray, requested: Sequence[str] | None,
                   where: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Apply ``data.classes`` to a data set whose files name ``names`` (label order) and hold ``labels``.

    Returns ``(classes, kept indices, new labels)``: ``requested`` (None: all of ``names``) in its own
    order, the indices of the samples of those classes, and their labels renumbered to it.
    """
    names = tuple(names)
    if requested is None:
        return names, np.arange(len(labels)), np.asarray(labels, np.int64)
    requested = tuple(requested)
    unknown = [c for c in requested if c not in names]
    if unknown:
        raise ConfigError(f"{where}: data.classes names {unknown}, which the data set does not have "
                          f"(its classes: {', '.join(names)})")
    if len(set(requested)) != len(requested):
        raise ConfigError(f"{where}: data.classes lists a class twice: {list(requested)}")
    new_label = np.full(len(names), -1, np.int64)
    new_label[[names.index(c) for c in requested]] = np.arange(len(requested))
    mapped = new_label[np.asarray(labels, np.int64)]
    keep = np.flatnonzero(mapped >= 0)
    if len(keep) < len(labels):
        logger.info("%s: %d of %d images belong to classes outside data.classes and are left out", where,
                    len(labels) - len(keep), len(labels))
    return requested, keep, mapped[keep]


class ClassificationDataset(ImageDataset):
    """Common behaviour of the classification data sets (see the module docstring for the contract)."""

    task = "classification"

    def __init__(self, classes: Sequence[str], labels, transforms: Callable | dict | None = None):
        super().__init__(classes, transforms)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def file_name(self, index: int) -> str:
        """How to name sample ``index`` in messages and metas (a file's name, or ``<set>#index``)."""
        return f"{type(self).__name__}#{index}"

    def class_counts(self) -> np.ndarray:
        """Images per class, in class order."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image = self.load_image(index)
        meta = identity_meta(*image.shape[:2])
        path = self.image_path(index) if hasattr(self, "image_path") else None
        meta.update(file_name=self.file_name(index), path=str(path) if path else None, image_id=index)
        # The detection sample without boxes: the same transforms and tensor conversion serve both.
        empty = np.zeros(0)
        sample = {"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": empty.astype(np.int64),
                  "difficult": empty.astype(bool), "iscrowd": empty.astype(bool), "image_id": index,
                  "meta": meta}
        if self.transforms is not None:
            sample = self.transforms(sample)
        image, target = to_tensors(sample)
        return image, {"label": torch.tensor(int(self.labels[index])), "image_id": index, "meta": target["meta"]}


class ImageFolderDataset(ClassificationDataset):
    """``root/<class>/**/<image>``: one folder per class, as torchvision's ``ImageFolder``.

    Classes are the folder names, sorted (hidden folders such as ``.ipynb_checkpoints`` are ignored),
    or ``classes`` (``data.classes``): those folders, in that order; a folder for each is required and
    other folders are left out. Images are the files with an image extension
    (:data:`detkit.data.io.IMAGE_EXTENSIONS`, any case) anywhere below a class folder, in sorted order;
    other files are ignored. A class without images is an error (``allow_empty=True`` allows it, e.g.
    for a small validation split). Images are read with :func:`detkit.data.io.read_image` (EXIF
    rotation, grey / 16-bit / alpha handled; a bad file is a ``DataError`` naming it, which
    ``train.bad_sample="skip"`` turns into a logged skip).
    """

    def __init__(self, root: str | os.PathLike, classes: Sequence[str] | None = None,
                 transforms: Callable | dict | None = None, allow_empty: bool = False):
        from detkit.data.io import IMAGE_EXTENSIONS

        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found (expected one sub-folder per class)")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes is None:
            if not folders:
                raise DataError(f"{self.root}: has no class folders (expected {self.root}/<class>/<image>)")
            classes = folders
        else:
            classes = tuple(classes)
            missing = [c for c in classes if c not in folders]
            if missing:
                raise DataError(f"{self.root}: no folder for class(es) {missing} named in data.classes "
                                f"(folders: {', '.join(folders) or 'none'})")
            left_out = [f for f in folders if f not in classes]
            if left_out:
                logger.info("%s: folders not in data.classes are left out: %s", self.root, ", ".join(left_out))
        paths, labels, empty = [], [], []
        for label, name in enumerate(classes):
            found = sorted(
                Path(folder) / file
                for folder, _, files in os.walk(self.root / name, followlinks=True)
                for file in files if file.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                empty.append(name)
            paths += found
            labels += [label] * len(found)
        if empty and not allow_empty:
            raise DataError(f"{self.root}: no image files in the folder(s) of class(es) {empty} "
                            f"(extensions: {', '.join(IMAGE_EXTENSIONS)}); pass allow_empty=True to accept")
        self.paths = paths
        super().__init__(classes, labels, transforms)

    def image_path(self, index: int) -> Path:
        return self.paths[index]

    def file_name(self, index: int) -> str:
        return self.paths[index].relative_to(self.root).as_posix()

    def load_image(self, index: int) -> np.ndarray:
        from detkit.data.io import read_image

        return read_image(self.paths[index], self.max_image_pixels)
