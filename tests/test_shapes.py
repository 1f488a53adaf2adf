"""Synthetic shapes: deterministic, VOC and COCO agree, sane content, readable as a detkit dataset."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from detkit.data.shapes import CLASSES, MIN_VISIBLE, SIZE_RANGE, ShapesDataset, make_shapes, render_image
from detkit.errors import DataError

NUM, SEED, SIZE = 30, 3, 128


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "set"
    make_shapes(root, num=NUM, seed=SEED, size=SIZE, val_fraction=0.2, workers=1)
    return root


def annotation_files(root: Path) -> dict[str, bytes]:
    files = sorted((root / "Annotations").glob("*.xml")) + sorted((root / "annotations").glob("*.json"))
    files += sorted((root / "ImageSets" / "Main").glob("*.txt")) + [root / "classes.txt"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def read_voc_independently(root: Path, split: str) -> dict[str, list]:
    """file_name -> sorted [(class, x1, y1, x2, y2)], VOC's 1-based inclusive corners -> continuous."""
    out = {}
    for stem in (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
        tree = ET.parse(root / "Annotations" / f"{stem}.xml").getroot()
        objs = []
        for obj in tree.findall("object"):
            b = obj.find("bndbox")
            x1, y1, x2, y2 = (float(b.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
            objs.append((obj.find("name").text, x1 - 1, y1 - 1, x2, y2))
        out[tree.find("filename").text] = sorted(objs)
    return out


def test_same_seed_gives_identical_files_whatever_the_worker_count(shapes_root, tmp_path):
    again = tmp_path / "again"
    make_shapes(again, num=NUM, seed=SEED, size=SIZE, val_fraction=0.2, workers=2)
    first, second = annotation_files(shapes_root), annotation_files(again)
    assert len(first) == NUM + 2 + 2 + 1
    assert first == second
    other = tmp_path / "other"
    make_shapes(other, num=NUM, seed=SEED + 1, size=SIZE, val_fraction=0.2, workers=1)
    assert annotation_files(other) != first


def test_voc_and_coco_agree_box_for_box(shapes_root):
    from pycocotools.coco import COCO

    for split in ("train", "val"):
        voc = read_voc_independently(shapes_root, split)
        coco = COCO(str(shapes_root / "annotations" / f"instances_{split}.json"))
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        assert [names[i] for i in sorted(names)] == list(CLASSES)
        from_coco = {}
        for img in coco.loadImgs(coco.getImgIds()):
            assert (img["width"], img["height"]) == (SIZE, SIZE)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            from_coco[img["file_name"]] = sorted(
                (names[a["category_id"]], a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                 a["bbox"][1] + a["bbox"][3]) for a in anns)
            for a in anns:
                assert a["iscrowd"] == 0 and a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
        assert from_coco == voc


def test_split_classes_and_counts_are_sane(shapes_root):
    train = (shapes_root / "ImageSets/Main/train.txt").read_text().split()
    val = (shapes_root / "ImageSets/Main/val.txt").read_text().split()
    assert len(val) == round(NUM * 0.2) and len(train) == NUM - len(val) and not set(train) & set(val)
    assert (shapes_root / "classes.txt").read_text().split() == list(CLASSES)
    assert len(list((shapes_root / "JPEGImages").glob("*.jpg"))) == NUM
    boxes = {**read_voc_independently(shapes_root, "train"), **read_voc_independently(shapes_root, "val")}
    counts = [len(v) for v in boxes.values()]
    assert min(counts) == 0 and max(counts) <= 4  # some empty images, moderate counts
    assert {name for objs in boxes.values() for name, *_ in objs} <= set(CLASSES)
    for objs in boxes.values():
        for _, x1, y1, x2, y2 in objs:
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            assert SIZE_RANGE[0] * SIZE - 2 <= max(x2 - x1, y2 - y1) <= SIZE_RANGE[1] * SIZE + 2


def test_rendered_boxes_are_the_full_extent_and_shapes_stay_visible():
    labels_seen = set()
    for index in range(40):
        image, boxes, labels, occluded, masks = render_image(11, index, 96, return_masks=True)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        labels_seen.update(labels.tolist())
        for k, mask in enumerate(masks):
            ys, xs = np.nonzero(mask)
            assert boxes[k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            later = np.zeros_like(mask)
            for m in masks[k + 1:]:
                later |= m
            visible = (mask & ~later).sum() / mask.sum()
            assert visible >= MIN_VISIBLE
            assert occluded[k] == (visible < 1)
    assert labels_seen == set(range(len(CLASSES)))


def test_shapes_dataset_reads_the_voc_files_back(shapes_root):
    from detkit import registry

    ds = registry.build("datasets", dict(type="shapes", root=str(shapes_root), split="val"))
    assert isinstance(ds, ShapesDataset) and ds.classes == CLASSES
    voc = read_voc_independently(shapes_root, "val")
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, SIZE, SIZE)
        got = sorted((CLASSES[int(label)], *map(float, box)) for box, label in zip(target["boxes"], target["labels"]))
        assert got == voc[target["meta"]["file_name"]]
    with_transforms = ShapesDataset(shapes_root, split="train", transforms=dict(size=64, preset="yolov1"))
    image, target = with_transforms[0]
    assert image.shape == (3, 64, 64)


def test_refuses_a_folder_that_is_not_a_shapes_set_and_cleans_its_own(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not empty"):
        make_shapes(foreign, num=2, size=64)
    assert (foreign / "holiday.jpg").exists()
    root = tmp_path / "s"
    make_shapes(root, num=6, size=64)
    make_shapes(root, num=3, size=64, val_fraction=0.0)
    assert sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg")) == ["000000", "000001", "000002"]
    assert not (root / "annotations" / "instances_val.json").exists()
    assert (root / "ImageSets/Main/val.txt").read_text() == ""


def test_bad_arguments_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="--num"):
        make_shapes(tmp_path / "a", num=0)
    with pytest.raises(DataError, match="--val-fraction"):
        make_shapes(tmp_path / "a", num=3, val_fraction=1.0)


def test_cli_make_shapes(tmp_path):
    from click.testing import CliRunner

    from detkit.cli import main

    result = CliRunner().invoke(main, ["data", "make-shapes", str(tmp_path / "cli"), "--num", "5", "--size", "64",
                                       "--seed", "2", "--val-fraction", "0.4"])
    assert result.exit_code == 0, result.output
    assert "5 images (3 train, 2 val)" in result.output
    assert len((tmp_path / "cli/ImageSets/Main/val.txt").read_text().split()) == 2
