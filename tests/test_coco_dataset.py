"""COCODataset on small COCO JSON files written by the tests (and the raccoon data converted to COCO)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detkit import registry
from detkit.data.coco import COCODataset
from detkit.errors import ConfigError, DataError

# Non-contiguous ids, listed out of order on purpose.
CATEGORIES = [{"id": 42, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


def write_images(img_dir: Path, sizes: dict) -> None:
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / name)


def base_json() -> dict:
    return {
        "info": {"description": "test"},
        "images": [
            {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 20, "file_name": "b.png", "width": 64, "height": 48},
            {"id": 30, "file_name": "empty.png", "width": 32, "height": 32},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [5, 6, 10, 20], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 42, "bbox": [0.5, 1.5, 30.25, 10], "area": 302.5, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [40, 20, 20, 20], "area": 400, "iscrowd": 1},
            {"id": 4, "image_id": 20, "category_id": 7, "bbox": [50, 40, 30, 30], "area": 900, "iscrowd": 0},  # clipped
            {"id": 5, "image_id": 20, "category_id": 3, "bbox": [10, 10, 0, 5], "area": 0, "iscrowd": 0},  # zero width
            {"id": 6, "image_id": 20, "category_id": 3, "bbox": [70, 10, 5, 5], "area": 25, "iscrowd": 0},  # outside
            {"id": 7, "image_id": 20, "category_id": 42, "bbox": [1, 2, 3, 4], "area": 12},  # no iscrowd key
        ],
        "categories": CATEGORIES,
    }


@pytest.fixture
def coco_files(tmp_path):
    def make(data: dict | None = None):
        data = base_json() if data is None else data
        ann_file = tmp_path / "instances.json"
        ann_file.write_text(json.dumps(data))
        write_images(tmp_path / "images", {"a.png": (64, 48), "b.png": (64, 48), "empty.png": (32, 32)})
        return ann_file, tmp_path / "images"

    return make


def test_non_contiguous_ids_map_to_labels_and_back(coco_files):
    ann_file, img_dir = coco_files()
    ds = COCODataset(ann_file, img_dir)
    assert ds.classes == ("cat", "dog", "zebra")  # ordered by category id: 3, 7, 42
    assert ds.cat_ids == [3, 7, 42]
    assert ds.label_to_cat_id == {0: 3, 1: 7, 2: 42} and ds.cat_id_to_label == {3: 0, 7: 1, 42: 2}
    # Round trip: every kept box's label maps back to the category id of its annotation.
    raw = base_json()
    by_box = {}
    for a in raw["annotations"]:
        x, y, w, h = a["bbox"]
        by_box[(a["image_id"], x, y, x + w, y + h)] = a["category_id"]
    matched = 0
    for i in range(len(ds)):
        ann = ds.load_annotation(i)
        for box, label in zip(ann.boxes.tolist(), ann.labels.tolist()):
            key = (ann.image_id, *box)
            if key in by_box:
                assert ds.cat_ids[label] == by_box[key]
                matched += 1
    assert matched == 4  # ids 1, 2, 3, 7 are kept unclipped


def test_boxes_crowd_and_counters(coco_files):
    ds = COCODataset(*coco_files())
    assert len(ds) == 3 and ds.img_ids == [10, 20, 30]
    a = ds.load_annotation(0)
    np.testing.assert_allclose(a.boxes, [[5, 6, 15, 26], [0.5, 1.5, 30.75, 11.5], [40, 20, 60, 40]])
    assert a.labels.tolist() == [0, 2, 1]
    assert a.iscrowd.tolist() == [False, False, True] and a.difficult.tolist() == [False] * 3
    assert a.image_id == 10 and a.file_name == "a.png" and (a.width, a.height) == (64, 48)
    assert a.stats["crowd"] == 1
    b = ds.load_annotation(1)
    np.testing.assert_allclose(b.boxes, [[50, 40, 64, 48], [1, 2, 4, 6]])
    assert b.labels.tolist() == [1, 2] and b.iscrowd.tolist() == [False, False]
    assert (b.stats["clipped"], b.stats["dropped"], b.stats["outside"], b.stats["objects"]) == (1, 1, 1, 4)
    # Images without annotations are kept.
    empty = ds.load_annotation(2)
    assert empty.boxes.shape == (0, 4) and empty.image_id == 30


def test_getitem_contract(coco_files):
    ds = COCODataset(*coco_files())
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["image_id"] == 10
    assert target["iscrowd"].tolist() == [False, False, True]
    assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32
    assert target["meta"]["file_name"] == "a.png" and target["meta"]["orig_size"] == (48, 64)
    image, target = ds[2]
    assert image.shape == (3, 32, 32) and target["boxes"].shape == (0, 4)


def test_classes_subset_by_name(coco_files):
    ds = COCODataset(*coco_files(), classes=["zebra", "cat"])
    assert ds.classes == ("zebra", "cat") and ds.cat_ids == [42, 3]
    a = ds.load_annotation(0)
    assert a.labels.tolist() == [1, 0] and a.stats["excluded_class"] == 1
    assert [ds.cat_ids[label] for label in a.labels.tolist()] == [3, 42]
    with pytest.raises(ConfigError, match=r"\['horse'\].*cat, dog, zebra"):
        COCODataset(*coco_files(), classes=["cat", "horse"])


def test_missing_image_or_category_names_the_annotation(coco_files):
    data = base_json()
    data["annotations"].append({"id": 99, "image_id": 12345, "category_id": 3, "bbox": [1, 1, 2, 2]})
    with pytest.raises(DataError, match=r"instances\.json.*annotation id 99.*image id 12345"):
        COCODataset(*coco_files(data))
    data = base_json()
    data["annotations"].append({"id": 77, "image_id": 10, "category_id": 5, "bbox": [1, 1, 2, 2]})
    with pytest.raises(DataError, match=r"annotation id 77.*category id 5"):
        COCODataset(*coco_files(data))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotation id 1 has a malformed bbox"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4]), r"annotation id 1 has a malformed bbox"),
    (lambda d: d["annotations"][1].update(id=1), r"id 1 appears more than once in 'annotations'"),
    (lambda d: d["images"][1].update(id=10), r"id 10 appears more than once in 'images'"),
    (lambda d: d.pop("categories"), r"no 'categories' list"),
    (lambda d: d["images"][0].pop("file_name"), r"image id 10 has no 'file_name'"),
    (lambda d: d["images"][0].update(id="a"), r"COCO ids are integers"),
])
def test_malformed_files(coco_files, mutate, message):
    data = base_json()
    mutate(data)
    with pytest.raises(DataError, match=message):
        COCODataset(*coco_files(data))


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json.*not valid JSON"):
        COCODataset(tmp_path / "bad.json", tmp_path)
    with pytest.raises(DataError, match=r"not found.*nope\.json"):
        COCODataset(tmp_path / "nope.json", tmp_path)


def test_json_without_info_and_licenses_works_with_pycocotools(coco_files):
    data = base_json()
    data.pop("info")
    ds = COCODataset(*coco_files(data))
    assert len(ds) == 3
    # Evaluation loads results against the dataset's index; that needs 'info' in some versions.
    results = ds.coco.loadRes([{"image_id": 10, "category_id": 3, "bbox": [5, 6, 10, 20], "score": 0.9}])
    assert len(results.getAnnIds()) == 1
    assert ds.coco.getCatIds() == [42, 3, 7]


def test_missing_image_file_raises_at_load(coco_files):
    ann_file, img_dir = coco_files()
    (img_dir / "b.png").unlink()
    ds = COCODataset(ann_file, img_dir)
    assert ds.load_annotation(1).labels.tolist() == [1, 2]
    with pytest.raises(DataError, match=r"not found.*b\.png"):
        ds[1]


def test_image_info_file_without_annotations(coco_files):
    data = base_json()
    data.pop("annotations")
    ds = COCODataset(*coco_files(data))
    assert all(len(ds.load_annotation(i).boxes) == 0 for i in range(len(ds)))


def test_registry_build(coco_files):
    ann_file, img_dir = coco_files()
    ds = registry.build("datasets", dict(type="coco", ann_file=str(ann_file), img_dir=str(img_dir)))
    assert isinstance(ds, COCODataset) and len(ds) == 3


def test_raccoon_converted_to_coco_matches_voc(raccoon_root, tmp_path):
    """VOC -> COCO JSON (detkit.data.convert) -> COCODataset gives the VOC dataset's boxes back."""
    from detkit.data.convert import voc_to_coco
    from detkit.data.voc import VOCDataset

    out = tmp_path / "raccoon_val.json"
    voc_to_coco(raccoon_root, out, split="val", classes=["raccoon"])
    voc = VOCDataset(raccoon_root, "val", classes=["raccoon"])
    coco = COCODataset(out, raccoon_root / "JPEGImages")
    assert len(coco) == len(voc) == 40 and coco.classes == ("raccoon",)
    by_name = {coco.load_annotation(i).file_name: coco.load_annotation(i) for i in range(len(coco))}
    total = 0
    for i in range(len(voc)):
        v = voc.load_annotation(i)
        c = by_name[v.file_name]
        np.testing.assert_allclose(c.boxes, v.boxes, atol=1e-3)
        assert c.labels.tolist() == v.labels.tolist()
        total += len(v.boxes)
    assert total == 44


@pytest.mark.parametrize("indent", [None, 2])
def test_polygons_are_skipped_without_changing_anything_else(coco_files, indent):
    """The reader cuts polygon segmentations out before parsing (memory, speed): boxes, ids, crowd
    RLEs and odd segmentation values come through exactly as a plain json.load reads them."""
    from detkit.data.coco import _drop_polygons

    data = base_json()
    data["annotations"][0]["segmentation"] = [[5.5, 6, 15, 6, 15, 26.25, 5, 26], [1, 1, 2, 2, 3, 1]]
    data["annotations"][1]["segmentation"] = [[0.5, 1.5, 30.75, 1.5, 30.75, 11.5]]
    data["annotations"][2]["segmentation"] = {"counts": [3, 4, 5, 2], "size": [48, 64]}  # crowd RLE
    data["annotations"][3]["segmentation"] = {"counts": "a]b[c", "size": [48, 64]}  # compressed RLE
    data["annotations"][4]["segmentation"] = []
    ann_file, img_dir = coco_files(data)
    ann_file.write_text(json.dumps(data, indent=indent))
    raw = ann_file.read_bytes()
    reduced = json.loads(_drop_polygons(raw))
    assert len(_drop_polygons(raw)) < len(raw)  # the polygons are gone, however the file is laid out
    assert [a["segmentation"] for a in reduced["annotations"][:2]] == [[], []]
    for got, want in zip(reduced["annotations"], data["annotations"]):
        assert {k: v for k, v in got.items() if k != "segmentation"} == \
               {k: v for k, v in want.items() if k != "segmentation"}
        if not (isinstance(want.get("segmentation"), list) and want["segmentation"]):
            assert got.get("segmentation") == want.get("segmentation")  # RLE and others untouched
    ds = COCODataset(ann_file, img_dir)
    assert ds.load_annotation(0).boxes.tolist() == [[5, 6, 15, 26], [0.5, 1.5, 30.75, 11.5], [40, 20, 60, 40]]
    assert ds.load_annotation(0).iscrowd.tolist() == [False, False, True]
