"""YOLO-format data sets (ultralytics layout) read as they are, and `detkit data convert` between layouts.

The round trip VOC -> YOLO -> detkit must give the same boxes (to 1e-3 px) and the same mAP for a
fixed set of detections; YOLO -> VOC and COCO -> YOLO come back the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from detkit.cli import main
from detkit.config import load_config
from detkit.data.builder import build_dataset
from detkit.data.convert import convert
from detkit.data.yolo import YOLODataset, label_path
from detkit.errors import ConfigError, DataError


def photo(path: Path, w: int, h: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def messy_yolo(root: Path, names="list") -> Path:
    """A YOLO set with every kind of messy label file; images 100x50 (train) and 80x40 (val)."""
    for i in range(4):
        photo(root / "images" / "train" / f"t{i}.jpg", 100, 50, seed=i)
    photo(root / "images" / "val" / "sub" / "v0.png", 80, 40, seed=9)
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "t0.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"          # a plain box: (40, 15, 60, 35)
        "1 0.1 0.5 0.4 0.2\n"          # partly left of the image: clipped to (0, 20, 30, 30)
        "1 0.1 0.5 0.4 0.2\n"          # the same line again: dropped as a duplicate
        "0 1.5 0.5 0.2 0.2\n"          # entirely right of the image: dropped
        "7 0.5 0.5 0.1 0.1\n"          # class id 7 of 2: skipped
        "1 0.5 0.5 0.0 0.3\n"          # zero width: dropped
        "\n"
        "1 0.2 0.2 0.4 0.2 0.4 0.6\n"  # a polygon: its box (20, 10, 40, 30)
    )
    (labels / "t1.txt").write_text("")  # empty: a negative
    # t2: no label file at all (a negative too)
    (labels / "t3.txt").write_text("0 0.5 0.5 oops 0.1\n")  # not numbers: the file is unusable
    (root / "labels" / "val" / "sub").mkdir(parents=True)
    (root / "labels" / "val" / "sub" / "v0.txt").write_text("1 0.25 0.5 0.5 1.0\n")
    (root / "val.txt").write_text("./images/val/sub/v0.png\n")
    names_yaml = "names: [cat, dog]" if names == "list" else "names:\n  0: cat\n  1: dog"
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: val.txt\n{names_yaml}\nnc: 2\n")
    return root


@pytest.mark.parametrize("names", ["list", "dict"])
def test_yolo_layout_and_messy_label_files(tmp_path, caplog, names):
    root = messy_yolo(tmp_path / "set", names)
    with caplog.at_level(logging.WARNING, logger="detkit"):
        ds = YOLODataset(root, split="train")
    assert ds.classes == ("cat", "dog") and len(ds) == 4
    assert [p.name for p in ds.image_paths] == ["t0.jpg", "t1.jpg", "t2.jpg", "t3.jpg"]
    assert ds.label_paths[0] == root / "labels" / "train" / "t0.txt"
    a0 = ds.load_annotation(0)
    np.testing.assert_allclose(a0.boxes, [[40, 15, 60, 35], [0, 20, 30, 30], [20, 10, 40, 30]], atol=1e-4)
    assert a0.labels.tolist() == [0, 1, 1] and (a0.width, a0.height) == (100, 50)
    assert {k: a0.stats[k] for k in ("clipped", "duplicate", "outside", "unknown_class", "dropped")} == \
        {"clipped": 1, "duplicate": 1, "outside": 1, "unknown_class": 1, "dropped": 1}
    assert len(ds.load_annotation(1).boxes) == 0 and len(ds.load_annotation(2).boxes) == 0
    assert ds.stats["missing_label"] == 1 and ds.stats["unknown_class:7"] == 1
    with pytest.raises(DataError, match=r"t3\.txt, line 1: not numbers"):
        ds.load_annotation(3)
    text = caplog.text
    assert "1 boxes of unknown classes skipped" in text and "1 duplicate boxes (dropped)" in text
    assert "1 images without a label file (negatives)" in text and "t3.txt" in text

    val = YOLODataset(root / "data.yaml", split="val")
    assert [p.name for p in val.image_paths] == ["v0.png"]
    np.testing.assert_allclose(val.load_annotation(0).boxes, [[0, 0, 40, 40]], atol=1e-4)
    image, target = val[0]
    assert image.shape == (3, 40, 80) and target["boxes"].tolist() == [[0, 0, 40, 40]]
    # strict: an unknown class id makes the file unusable, naming the file and the line (as VOC's strict)
    strict = YOLODataset(root, split="train", strict=True)
    with pytest.raises(DataError, match=r"t0\.txt, line 5: class id 7 is not one of 0\.\.1"):
        strict.load_annotation(0)


def test_yolo_through_the_config_and_verification(tmp_path):
    root = messy_yolo(tmp_path / "set")
    cfg = {"data": {"classes": None, "train": {"type": "yolo", "root": str(root), "split": "train",
                                                "transforms": {"size": 32}}}}
    ds = build_dataset(cfg, "train")
    assert len(ds) == 3 and ds.verification.excluded[0].excluded == "annotation"  # t3's label file
    assert "t3.txt" in ds.verification.excluded[0].message
    # a subset of the yaml's classes, by name
    sub = YOLODataset(root, split="train", classes=["dog"])
    assert sub.classes == ("dog",) and sub.load_annotation(0).labels.tolist() == [0, 0]
    assert sub.stats["excluded_class"] == 2  # the two cat lines
    with pytest.raises(ConfigError, match=r"\['bird'\] are not in .*data\.yaml's names: cat, dog"):
        YOLODataset(root, split="train", classes=["bird"])


def test_yolo_paths_and_errors(tmp_path, monkeypatch):
    root = messy_yolo(tmp_path / "set")
    # `path:` relative to the yaml's folder, else the current directory, else $DETKIT_DATA
    (tmp_path / "elsewhere.yaml").write_text("path: set\ntrain: images/train\nnames: [cat, dog]\n")
    assert len(YOLODataset(tmp_path / "elsewhere.yaml")) == 4
    (tmp_path / "lost.yaml").write_text("path: nowhere\ntrain: images/train\nnames: [cat, dog]\n")
    monkeypatch.setenv("DETKIT_DATA", str(tmp_path / "datahome"))
    with pytest.raises(DataError, match=r"'path: nowhere' is not a folder; looked in .*nowhere, .*nowhere, "
                                        r".*datahome/nowhere"):
        YOLODataset(tmp_path / "lost.yaml")
    with pytest.raises(DataError, match=r"data\.yaml: no 'test' entry; it has train, val"):
        YOLODataset(root, split="test")
    # no yaml: images/<split>/ plus the class names
    (root / "data.yaml").unlink()
    assert len(YOLODataset(root, split="train", classes=["cat", "dog"])) == 4
    with pytest.raises(ConfigError, match="class names must be given"):
        YOLODataset(root, split="train")
    assert label_path("/d/images/a/images/x.jpg") == Path("/d/images/a/labels/x.txt")


# ----------------------------------------------------------------------------------------------
# Round trips through `detkit data convert`
# ----------------------------------------------------------------------------------------------
def fixed_detections(dataset, seed: int = 0) -> list[dict]:
    """A fixed set of detections per image: jittered ground truth plus random boxes, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(dataset)):
        ann = dataset.load_annotation(i)
        boxes = ann.boxes.astype(np.float64) + rng.normal(0, 4, ann.boxes.shape)
        extra = rng.uniform(0, min(ann.width, ann.height) / 2, (3, 2))
        extra = np.concatenate([extra, extra + rng.uniform(5, 40, (3, 2))], axis=1)
        boxes = np.concatenate([boxes, extra]).astype(np.float32)
        labels = np.concatenate([ann.labels, rng.integers(0, dataset.num_classes, 3)])
        out.append({"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(rng.uniform(0.1, 1, len(boxes))),
                    "labels": torch.from_numpy(labels.astype(np.int64))})
    return out


def metrics_of(dataset, detections) -> dict:
    from detkit.evaluation import build_evaluators

    group = build_evaluators("all", dataset.classes)
    targets = []
    for i in range(len(dataset)):
        ann = dataset.load_annotation(i)
        targets.append({"boxes": torch.from_numpy(ann.boxes), "labels": torch.from_numpy(ann.labels),
                        "difficult": torch.from_numpy(ann.difficult), "image_id": i})
    group.update(detections, targets)
    return group.compute()


def assert_same_boxes(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a.load_annotation(i), b.load_annotation(i)
        assert (x.width, x.height) == (y.width, y.height)
        assert x.labels.tolist() == y.labels.tolist()
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def shapes_voc(tmp_path_factory):
    from detkit.data.shapes import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, num=24, seed=3, size=96, val_fraction=0.25)
    return root


def test_voc_to_yolo_round_trip_same_boxes_and_map(shapes_voc, tmp_path):
    from detkit.data.shapes import CLASSES
    from detkit.data.voc import VOCDataset

    summary = convert(shapes_voc, tmp_path / "yolo", to="yolo", classes=CLASSES)
    assert "train: 18 images (18 linked)" in summary and "val: 6 images" in summary
    spec = (tmp_path / "yolo" / "data.yaml").read_text()
    assert "names:" in spec and "train: images/train" in spec and "path:" not in spec.split("\n", 1)[1]
    for split in ("train", "val"):
        voc = VOCDataset(shapes_voc, split, classes=CLASSES)
        yolo = YOLODataset(tmp_path / "yolo", split)
        assert yolo.classes == tuple(CLASSES)
        assert_same_boxes(voc, yolo)
        detections = fixed_detections(voc, seed=len(split))
        m_voc, m_yolo = metrics_of(voc, detections), metrics_of(yolo, detections)
        for key in ("voc07_ap50", "voc_ap50", "coco_ap", "coco_ap50"):
            assert m_voc[key] == m_yolo[key], key
        assert 0.05 < m_voc["voc07_ap50"] < 0.99  # a real ranking, not a degenerate 0 or 1
    # the label files are what ultralytics reads: class cx cy w h, normalised
    line = next(p for p in sorted((tmp_path / "yolo" / "labels" / "train").iterdir()) if p.read_text()).read_text()
    values = [float(v) for v in line.split()[:5]]
    assert values[0].is_integer() and all(0 < v <= 1 for v in values[1:])


def test_yolo_to_voc_and_coco_to_yolo_come_back_the_same(shapes_voc, tmp_path):
    from detkit.data.coco import COCODataset
    from detkit.data.shapes import CLASSES
    from detkit.data.voc import VOCDataset

    convert(shapes_voc, tmp_path / "yolo", to="yolo", classes=CLASSES, images="copy")
    convert(tmp_path / "yolo" / "data.yaml", tmp_path / "voc", to="voc")
    convert(tmp_path / "voc", tmp_path / "coco", to="coco")
    convert(tmp_path / "coco", tmp_path / "yolo2", to="yolo", images="symlink")
    original = VOCDataset(shapes_voc, "val", classes=CLASSES)
    assert_same_boxes(original, VOCDataset(tmp_path / "voc", "val", classes=CLASSES))
    coco = COCODataset(tmp_path / "coco" / "annotations" / "instances_val.json", tmp_path / "coco" / "val")
    assert coco.classes == tuple(CLASSES)
    assert_same_boxes(original, coco)
    assert_same_boxes(original, YOLODataset(tmp_path / "yolo2", "val"))
    assert (tmp_path / "yolo2" / "images" / "val").iterdir().__next__().is_symlink()


def test_difficult_boxes_in_yolo_are_left_out_and_counted(tmp_path):
    from test_check_data import voc_xml, write_voc

    root = write_voc(tmp_path / "voc", {"a": (voc_xml(objects=[("cat", (1, 1, 20, 20)), ("dog", (5, 5, 30, 30), 1)]),
                                              "ok"), "b": (voc_xml(objects=[]), "ok")})
    summary = convert(root, tmp_path / "yolo", to="yolo", splits=["train"], classes=["cat", "dog"])
    assert "1 boxes left out (difficult or crowd: YOLO has no such flag)" in summary
    assert (tmp_path / "yolo" / "labels" / "train" / "a.txt").read_text().count("\n") == 1
    assert (tmp_path / "yolo" / "labels" / "train" / "b.txt").read_text() == ""  # an explicit negative


def test_cli_convert_and_voc2coco_still_work(shapes_voc, tmp_path):
    result = CliRunner().invoke(main, ["data", "convert", str(shapes_voc), str(tmp_path / "out"), "--to", "yolo",
                                       "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "converted" in result.output and (tmp_path / "out" / "labels" / "val").is_dir()
    cfg_path = tmp_path / "cfg.py"
    cfg_path.write_text("data = dict(val=dict(type='yolo', root='out', split='val'))\n")
    assert len(build_dataset(load_config(cfg_path), "val")) == 6  # root relative to the config file
    result = CliRunner().invoke(main, ["data", "convert", str(tmp_path / "nothing"), str(tmp_path / "o"), "--to", "voc"])
    assert result.exit_code == 2  # click: SRC does not exist
    (tmp_path / "odd").mkdir()
    result = CliRunner().invoke(main, ["data", "convert", str(tmp_path / "odd"), str(tmp_path / "o"), "--to", "voc"])
    assert result.exit_code == 2 and "cannot tell its layout" in result.output
    result = CliRunner().invoke(main, ["data", "voc2coco", str(shapes_voc), str(tmp_path / "v.json"), "--split", "val",
                                       "--classes", "circle,square,triangle"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "v.json").read_text())["images"]) == 6
