"""CIFAR-10 and CIFAR-100 from their "python version" files (the pickled batches), read from a folder.

``root`` is the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or the folder that
holds it, as torchvision's ``CIFAR10(root)`` expects:

* CIFAR-10: ``data_batch_1`` .. ``data_batch_5`` (train), ``test_batch`` (test), ``batches.meta``
  (``label_names``); each batch a dict with ``data`` (uint8 ``[N, 3072]``: the 1024 red, then green,
  then blue values of a 32x32 image, row-major) and ``labels``.
* CIFAR-100: ``train``, ``test`` and ``meta`` (``fine_label_names``, ``coarse_label_names``); the
  batches hold ``fine_labels`` and ``coarse_labels`` (``label_type="fine"`` (100 classes, default) or
  ``"coarse"`` (20 superclasses)).

The files are Python pickles. Unpickling runs whatever a file asks for, so they are read with an
unpickler that builds only what these files contain (dicts, lists, strings, numbers, bytes and numpy
arrays); a file that asks for anything else is refused with a :class:`~detkit.errors.DataError`, as
``torch.load(weights_only=True)`` refuses arbitrary checkpoints. Nothing is downloaded.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from detkit.data.classification import ClassificationDataset, select_classes
from detkit.errors import ConfigError, DataError

__all__ = ["CIFAR10Dataset", "CIFAR100Dataset", "read_cifar_pickle"]

# The only globals a CIFAR pickle may name: what numpy needs to rebuild an array (module paths of
# numpy 1.x and 2.x; _frombuffer is used by pickle protocol 5), and _codecs.encode, which a Python 3
# pickle of protocol < 3 uses to rebuild a bytes object from text.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
_SIDE = 32


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        return super().find_class(module, name)


def read_cifar_pickle(path: str | os.PathLike) -> dict:
    """One CIFAR pickle file as a dict with ``str`` keys (data only; see the module docstring)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            # latin1: the files were written by Python 2; byte strings come back as str (torchvision's choice)
            obj = _DataUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: CIFAR file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError) as exc:
        raise DataError(f"{path}: not a CIFAR python-version pickle (or truncated): {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(entry: dict, key: str, path: Path):
    if key not in entry:
        raise DataError(f"{path}: has no '{key}' (keys: {', '.join(map(str, entry))})")
    return entry[key]


class _CIFARDataset(ClassificationDataset):
    folder_name = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file = ""

    def __init__(self, root, split: str, classes, transforms, label_key: str, names_key: str):
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        folder = root / self.folder_name if (root / self.folder_name).is_dir() else root
        if not (folder / self.meta_file).is_file():
            raise DataError(f"{root}: no {self.meta_file} here or in {root / self.folder_name} (expected the "
                            f"extracted python version of the data set, {self.folder_name}/)")
        self.root = folder
        names = [str(n) for n in _field(read_cifar_pickle(folder / self.meta_file), names_key,
                                        folder / self.meta_file)]
        images, labels = [], []
        for file in self.train_files if split == "train" else self.test_files:
            path = folder / file
            entry = read_cifar_pickle(path)
            data = np.asarray(_field(entry, "data", path))
            batch_labels = np.asarray(_field(entry, label_key, path), dtype=np.int64).reshape(-1)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE:
                raise DataError(f"{path}: 'data' must be uint8 [N, {3 * _SIDE * _SIDE}], got {data.dtype} "
                                f"{list(data.shape)}")
            if len(batch_labels) != len(data):
                raise DataError(f"{path}: {len(data)} images but {len(batch_labels)} labels")
            if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() >= len(names)):
                raise DataError(f"{path}: labels must lie in 0..{len(names) - 1}, found "
                                f"{batch_labels.min()}..{batch_labels.max()}")
            images.append(data)
            labels.append(batch_labels)
        data = np.concatenate(images)
        classes, keep, labels = select_classes(names, np.concatenate(labels), classes, f"{folder} ({split})")
        # [N, 3, 32, 32] channel planes -> [N, 32, 32, 3] HWC, what every image reader returns
        self.images = np.ascontiguousarray(data[keep].reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1))
        self.split = split
        super().__init__(classes, labels, transforms)

    def load_image(self, index: int) -> np.ndarray:
        return self.images[index]

    def file_name(self, index: int) -> str:
        return f"{self.folder_name}/{self.split}#{index}"


class CIFAR10Dataset(_CIFARDataset):
    """CIFAR-10 (Krizhevsky, 2009): 50,000 train / 10,000 test 32x32 images of 10 classes."""

    folder_name = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"

    def __init__(self, root: str | os.PathLike, split: str = "train", classes: Sequence[str] | None = None,
                 transforms: Callable | dict | None = None):
        super().__init__(root, split, classes, transforms, "labels", "label_names")


class CIFAR100Dataset(_CIFARDataset):
    """CIFAR-100: 50,000 train / 10,000 test 32x32 images of 100 classes (or 20 superclasses)."""

    folder_name = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"

    def __init__(self, root: str | os.PathLike, split: str = "train", classes: Sequence[str] | None = None,
                 transforms: Callable | dict | None = None, label_type: str = "fine"):
        if label_type not in ("fine", "coarse"):
            raise ConfigError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
        super().__init__(root, split, classes, transforms, f"{label_type}_labels", f"{label_type}_label_names")
