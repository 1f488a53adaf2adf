"""Classification data: the CIFAR pickle and IDX readers on files the tests write, the ImageFolder
class mapping (against torchvision's ImageFolder), ``data.classes`` selection, and the shapes
generator's classification crops.

References: the CIFAR layout written here with numpy + pickle (Python 2 style too), the IDX bytes
written with struct, torchvision.datasets.ImageFolder, and crop windows computed by hand.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from detkit.data.cifar import CIFAR10Dataset, CIFAR100Dataset, read_cifar_pickle
from detkit.data.classification import ImageFolderDataset
from detkit.data.mnist import FASHION_MNIST_CLASSES, FashionMNISTDataset, MNISTDataset, read_idx
from detkit.data.shapes import CLASSES, crop_shapes, make_shapes
from detkit.errors import ConfigError, DataError

# ----------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------


def write_pickle(path, obj, protocol):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def cifar10_tree(root, protocol=2, per_batch=3, seed=0):
    """A CIFAR-10 folder with tiny batches; returns (train data, train labels, test data, test labels)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_pickle(folder / "batches.meta", {"label_names": names, "num_vis": 3072}, protocol)
    train_data, train_labels = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        write_pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": data,
                                                   "labels": labels, "filenames": ["x.png"] * per_batch}, protocol)
        train_data.append(data)
        train_labels += labels
    test = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    test_labels = [9, 0, 3, 3]
    write_pickle(folder / "test_batch", {"data": test, "labels": test_labels}, protocol)
    return np.concatenate(train_data), train_labels, test, test_labels


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_images_and_labels_read_back_exactly(tmp_path, protocol):
    train_data, train_labels, test, test_labels = cifar10_tree(tmp_path, protocol)
    ds = CIFAR10Dataset(tmp_path, split="train")  # the parent folder, as torchvision's root
    assert ds.classes[:3] == ("airplane", "automobile", "bird") and len(ds) == 15
    assert ds.labels.tolist() == train_labels
    for i in (0, 7, 14):
        image = ds.load_image(i)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        for (r, c, ch) in [(0, 0, 0), (5, 31, 1), (31, 2, 2), (17, 9, 0)]:
            # the file holds all red values, then green, then blue, each 32x32 row-major
            assert image[r, c, ch] == train_data[i, ch * 1024 + r * 32 + c]
    tensor, target = ds[3]
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert torch.equal(tensor, torch.from_numpy(ds.load_image(3)).permute(2, 0, 1).float() / 255)
    assert int(target["label"]) == train_labels[3] and target["image_id"] == 3
    assert target["meta"]["file_name"] == "cifar-10-batches-py/train#3"

    test_set = CIFAR10Dataset(tmp_path / "cifar-10-batches-py", split="test")  # the folder itself
    assert test_set.labels.tolist() == test_labels
    assert np.array_equal(test_set.images[1].transpose(2, 0, 1).reshape(-1), test[1])


def test_cifar10_class_selection_keeps_and_renumbers(tmp_path):
    _, train_labels, _, _ = cifar10_tree(tmp_path)
    ds = CIFAR10Dataset(tmp_path, classes=["truck", "airplane"])
    wanted = [i for i, label in enumerate(train_labels) if label in (9, 0)]
    assert ds.classes == ("truck", "airplane")
    assert ds.labels.tolist() == [0 if train_labels[i] == 9 else 1 for i in wanted]
    full = CIFAR10Dataset(tmp_path)
    assert np.array_equal(ds.images, full.images[wanted])
    with pytest.raises(ConfigError, match="'lorry'"):
        CIFAR10Dataset(tmp_path, classes=["lorry"])


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine_names = [f"fine{i}" for i in range(100)]
    coarse_names = [f"coarse{i}" for i in range(20)]
    write_pickle(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names}, 2)
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    for split, fine in (("train", [42, 99]), ("test", [7, 0])):
        write_pickle(folder / split, {"data": data, "fine_labels": fine, "coarse_labels": [3, 19]}, 2)
    assert CIFAR100Dataset(tmp_path).labels.tolist() == [42, 99]
    assert CIFAR100Dataset(tmp_path, split="test").labels.tolist() == [7, 0]
    coarse = CIFAR100Dataset(tmp_path, label_type="coarse")
    assert coarse.labels.tolist() == [3, 19] and coarse.classes == tuple(coarse_names)
    assert coarse.load_image(1)[0, 0].tolist() == [data[1, 0], data[1, 1024], data[1, 2048]]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_pickles_that_ask_for_code_or_are_broken_are_clear_errors(tmp_path):
    cifar10_tree(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle(folder / "data_batch_2", {"data": Evil()}, 2)
    with pytest.raises(DataError, match=r"data_batch_2: .*refused to load global (posix|os|nt)\.system"):
        CIFAR10Dataset(tmp_path)
    good = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="test_batch: not a CIFAR python-version pickle"):
        CIFAR10Dataset(tmp_path, split="test")
    write_pickle(folder / "test_batch", {"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, 2)
    with pytest.raises(DataError, match=r"test_batch: 'data' must be uint8 \[N, 3072\]"):
        CIFAR10Dataset(tmp_path, split="test")
    with pytest.raises(DataError, match="no batches.meta"):
        CIFAR10Dataset(tmp_path / "elsewhere")
    # What Python 2's cPickle wrote for {'label_names': ['a']} (the real files): its byte strings come
    # back as str (latin1), as torchvision reads them; bytes keys of a Python 3 pickle become str too.
    (folder / "batches.meta").write_bytes(b"\x80\x02}q\x00U\x0blabel_namesq\x01]q\x02U\x01aq\x03as.")
    assert read_cifar_pickle(folder / "batches.meta") == {"label_names": ["a"]}
    write_pickle(folder / "batches.meta", {b"label_names": ["b"]}, 2)
    assert read_cifar_pickle(folder / "batches.meta") == {"label_names": ["b"]}


# ----------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ----------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    return struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) \
        + big_endian.tobytes()


def write_idx(path, array, code=0x08, gz=False):
    data = idx_bytes(array, code)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype, code", [(np.uint8, 0x08), (np.int16, 0x0B), (np.int32, 0x0C),
                                          (np.float32, 0x0D), (np.float64, 0x0E)])
def test_read_idx_values_exactly(tmp_path, dtype, code, gz):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 4, 5)) * 1000).astype(dtype)
    path = write_idx(tmp_path / "x-idx3", array, code, gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == (3, 4, 5)
    assert np.array_equal(out, array)


def mnist_files(folder, gz, images, labels, prefix="train"):
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_reads_images_and_labels_in_torchvisions_layout(tmp_path, gz):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([9, 0, 3, 3, 7, 1], np.uint8)
    mnist_files(tmp_path / "FashionMNIST" / "raw", gz, images, labels, "t10k")
    ds = FashionMNISTDataset(tmp_path, split="test")
    assert ds.classes == FASHION_MNIST_CLASSES and ds.labels.tolist() == labels.tolist()
    rgb = ds.load_image(4)
    assert rgb.shape == (28, 28, 3) and all(np.array_equal(rgb[..., c], images[4]) for c in range(3))
    tensor, target = ds[4]
    assert torch.equal(tensor[0], torch.from_numpy(images[4]).float() / 255) and int(target["label"]) == 7


def test_mnist_problems_name_the_file(tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    mnist_files(tmp_path, False, images, np.array([1, 2], np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: \[2\] labels for the 3 images"):
        MNISTDataset(tmp_path)
    data = idx_bytes(images, 0x08)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data[:-5])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: IDX data of shape \[3, 28, 28\] needs 2352 bytes .* has 2347 \(truncated"):
        MNISTDataset(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78" + data[4:])
    with pytest.raises(DataError, match="not an IDX file"):
        MNISTDataset(tmp_path)
    with pytest.raises(DataError, match="no t10k-images-idx3-ubyte"):
        MNISTDataset(tmp_path, split="test")
    mnist_files(tmp_path, False, images, np.array([1, 2, 10], np.uint8))
    with pytest.raises(DataError, match=r"labels must lie in 0..9, found 1..10"):
        MNISTDataset(tmp_path)


# ----------------------------------------------------------------------------------------------
# ImageFolder
# ----------------------------------------------------------------------------------------------


def image_tree(root, layout):
    import cv2

    for rel in layout:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.lower().endswith((".png", ".jpg")):
            value = len(rel) * 7 % 256
            cv2.imwrite(str(path), np.full((5, 6, 3), value, np.uint8))
        else:
            path.write_text("not an image")


LAYOUT = ["dog/b.png", "dog/a.JPG", "dog/sub/c.png", "cat/z.png", "ant/1.png", "ant/notes.txt",
          ".ipynb_checkpoints/x.png"]


def test_image_folder_class_mapping_matches_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    image_tree(tmp_path, LAYOUT)
    ours = ImageFolderDataset(tmp_path)
    theirs = ImageFolder(str(tmp_path), is_valid_file=lambda p: not p.endswith(".txt") and "/." not in p,
                         allow_empty=True)
    visible = {k: v - 1 for k, v in theirs.class_to_idx.items() if not k.startswith(".")}
    assert ours.classes == ("ant", "cat", "dog") and {c: i for i, c in enumerate(ours.classes)} == visible
    theirs_samples = [(p, label - 1) for p, label in theirs.samples]  # torchvision also indexes the hidden folder
    assert [(str(p), int(label)) for p, label in zip(ours.paths, ours.labels)] == theirs_samples
    assert [ours.file_name(i) for i in range(len(ours))] == ["ant/1.png", "cat/z.png", "dog/a.JPG", "dog/b.png",
                                                             "dog/sub/c.png"]
    image, target = ours[2]
    assert image.shape == (3, 5, 6) and int(target["label"]) == 2
    assert target["meta"]["path"] == str(tmp_path / "dog" / "a.JPG")


def test_image_folder_classes_select_order_and_problems(tmp_path):
    image_tree(tmp_path, LAYOUT + ["empty/readme.txt"])
    ds = ImageFolderDataset(tmp_path, classes=["dog", "ant"])
    assert ds.classes == ("dog", "ant") and ds.labels.tolist() == [0, 0, 0, 1]
    with pytest.raises(DataError, match=r"no folder for class\(es\) \['bee'\]"):
        ImageFolderDataset(tmp_path, classes=["bee", "dog"])
    with pytest.raises(DataError, match=r"no image files in the folder\(s\) of class\(es\) \['empty'\]"):
        ImageFolderDataset(tmp_path)
    assert ImageFolderDataset(tmp_path, allow_empty=True).class_counts().tolist() == [1, 1, 3, 0]
    with pytest.raises(DataError, match="image folder not found"):
        ImageFolderDataset(tmp_path / "nope")


# ----------------------------------------------------------------------------------------------
# make-shapes, classification mode
# ----------------------------------------------------------------------------------------------


def test_crop_windows_are_square_with_context_and_stay_inside():
    image = np.arange(100 * 100 * 3, dtype=np.int64).reshape(100, 100, 3).astype(np.uint8)
    image = np.zeros((100, 100, 3), np.uint8)
    image[40:60, 30:50] = 255  # a 20x20 white box: its crop is 26x26 (15% context each side) around it
    [crop] = crop_shapes(image, np.array([[30, 40, 50, 60]]), size=26)
    assert crop.shape == (26, 26, 3)
    assert (crop[3:23, 3:23] == 255).all() and crop[:3].max() == 0 and crop[:, 23:].max() == 0
    # at the border the window is shifted inside, not padded: a box at the corner keeps its side
    image[:] = 0
    image[0:10, 0:10] = 255
    [corner] = crop_shapes(image, np.array([[0, 0, 10, 10]]), size=13)
    assert (corner[:10, :10] == 255).all() and corner[10:].max() == 0


def test_make_shapes_classification_crops_are_an_image_folder(tmp_path):
    summary = make_shapes(tmp_path / "a", num=30, seed=3, size=24, val_fraction=0.3, mode="classification")
    assert "wrote 30 crops (21 train" in summary
    again = make_shapes(tmp_path / "b", num=30, seed=3, size=24, val_fraction=0.3, mode="classification")
    assert again.split(" in ")[0].replace("/b", "/a") == summary.split(" in ")[0]
    train, val = (ImageFolderDataset(tmp_path / "a" / split, allow_empty=True) for split in ("train", "val"))
    assert len(train) == 21 and len(val) == 9 and train.classes == tuple(sorted(CLASSES))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.jpg"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    scenes = {split: {p.name.split("_")[0] for p in (tmp_path / "a" / split).rglob("*.jpg")} for split in ("train", "val")}
    assert not scenes["train"] & scenes["val"]  # no scene gives crops to both splits
    assert train.load_image(0).shape == (24, 24, 3)
    # rerunning into the folder replaces the set; a detection set is not overwritten by crops
    make_shapes(tmp_path / "a", num=10, seed=3, size=24, val_fraction=0.3, mode="classification")
    assert len(list((tmp_path / "a").rglob("*.jpg"))) == 10
    make_shapes(tmp_path / "det", num=2, size=64, workers=1)
    with pytest.raises(DataError, match="other mode"):
        make_shapes(tmp_path / "det", num=10, mode="classification")
