"""MNIST and Fashion-MNIST from their IDX files (gzipped or not), read from a folder.

The four files of each set, looked for in ``root``, ``root/raw`` and torchvision's
``root/<MNIST|FashionMNIST>/raw``, each either plain or ``.gz``::

    train-images-idx3-ubyte   train-labels-idx1-ubyte   (60,000 images)
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte    (10,000 images; split="test")

IDX (LeCun's format): two zero bytes, a type code (``0x08`` unsigned byte, ``0x09`` signed byte,
``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions, each
dimension as a big-endian uint32, then the values, big-endian, row-major. :func:`read_idx` reads any
IDX file; a wrong magic, a truncated file or images and labels that disagree is a
:class:`~detkit.errors.DataError` naming the file. Images are 28x28 grey, given as three equal channels
(see :mod:`detkit.data.classification`). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from detkit.data.classification import ClassificationDataset, select_classes
from detkit.errors import ConfigError, DataError

__all__ = ["MNISTDataset", "FashionMNISTDataset", "read_idx", "FASHION_MNIST_CLASSES", "MNIST_CLASSES"]

_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

MNIST_CLASSES = tuple(str(d) for d in range(10))
# Zalando's label names (the data set's README), in label order.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an IDX file (``.gz`` decompressed), in native byte order."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: IDX file not found") from None
    except (OSError, EOFError) as exc:  # gzip's BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty file'})")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX data of shape {list(shape)} needs {expected} bytes after the header, "
                        f"the file has {len(data) - header} (truncated or not this format)")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


class _IDXDataset(ClassificationDataset):
    folder_name = ""  # torchvision's sub-folder
    class_names: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike, split: str = "train", classes: Sequence[str] | None = None,
                 transforms: Callable | dict | None = None):
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        prefix = "train" if split == "train" else "t10k"
        images_path = self._find(root, f"{prefix}-images-idx3-ubyte")
        labels_path = self._find(root, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{images_path}: expected uint8 images [N, H, W], found {images.dtype} {list(images.shape)}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{labels_path}: {list(labels.shape)} labels for the {len(images)} images of {images_path}")
        labels = labels.astype(np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise DataError(f"{labels_path}: labels must lie in 0..{len(self.class_names) - 1}, found "
                            f"{labels.min()}..{labels.max()}")
        classes, keep, labels = select_classes(self.class_names, labels, classes, f"{images_path}")
        self.images = images[keep]
        self.root, self.split = images_path.parent, split
        super().__init__(classes, labels, transforms)

    def _find(self, root: Path, name: str) -> Path:
        folders = (root, root / "raw", root / self.folder_name / "raw")
        for folder in folders:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        raise DataError(f"{root}: no {name} (or {name}.gz) in {', '.join(str(f) for f in folders)}")

    def load_image(self, index: int) -> np.ndarray:
        grey = self.images[index]
        return np.repeat(grey[:, :, None], 3, axis=2)

    def file_name(self, index: int) -> str:
        return f"{self.folder_name}/{self.split}#{index}"


class MNISTDataset(_IDXDataset):
    """MNIST (LeCun et al., 1998): 60,000 train / 10,000 test 28x28 handwritten digits."""

    folder_name = "MNIST"
    class_names = MNIST_CLASSES


class FashionMNISTDataset(_IDXDataset):
    """Fashion-MNIST (Xiao et al., 2017): MNIST's format and sizes, 10 kinds of clothing."""

    folder_name = "FashionMNIST"
    class_names = FASHION_MNIST_CLASSES
