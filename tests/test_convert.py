"""VOC -> COCO conversion: real raccoon data, difficult boxes, unreadable files, determinism, CLI."""

from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import RACCOON_ROOT as RACCOON

from detkit.data.convert import voc_to_coco
from detkit.errors import DataError


def quiet_coco(path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture
def raccoon() -> Path:
    if not (RACCOON / "Annotations").is_dir():
        pytest.skip(f"raccoon data set not found at {RACCOON}")
    return RACCOON.resolve()


def test_raccoon_converts_to_valid_coco(raccoon, tmp_path):
    total = 0
    for split in ("train", "val"):
        out = tmp_path / f"{split}.json"
        summary = voc_to_coco(raccoon, out, split=split, classes=["raccoon"])
        coco = quiet_coco(out)
        ids = (raccoon / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert len(coco.getImgIds()) == len(ids)
        assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "raccoon", "supercategory": "none"}]
        anns = coco.loadAnns(coco.getAnnIds())
        total += len(anns)
        assert f"{len(anns)} boxes" in summary
        # every box matches an independent read of its XML (VOC corners are 1-based inclusive)
        by_file = {img["file_name"]: img for img in coco.loadImgs(coco.getImgIds())}
        for stem in ids[:15]:
            root = ET.parse(raccoon / "Annotations" / f"{stem}.xml").getroot()
            expected = sorted([float(o.find("bndbox").find(t).text) - d
                               for t, d in (("xmin", 1), ("ymin", 1), ("xmax", 0), ("ymax", 0))]
                              for o in root.findall("object"))
            img = by_file[f"{stem}.jpg"]
            got = sorted([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])))
            assert got == expected
            # width / height are those of the real image, not of the XML's <size>
            h, w = cv2.imread(str(raccoon / "JPEGImages" / f"{stem}.jpg")).shape[:2]
            assert (img["width"], img["height"]) == (w, h)
        for a in anns:
            assert a["iscrowd"] == 0 and a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
    assert total == 217


def test_ground_truth_as_detections_scores_ap_one(raccoon, tmp_path):
    """The JSON is complete enough for COCOeval: its own boxes as detections give AP 1."""
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "val.json"
    voc_to_coco(raccoon, out, split="val", classes=["raccoon"])
    gt = quiet_coco(out)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt.loadAnns(gt.getAnnIds())]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def write_voc(root: Path, items: dict, sizes: dict | None = None, split: str = "train"):
    """items: stem -> list of (name, xmin, ymin, xmax, ymax, difficult); None -> malformed XML."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, objects in items.items():
        h, w = (sizes or {}).get(stem, (60, 80))
        if h:
            cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), np.full((h, w, 3), 128, np.uint8))
        else:
            (root / "JPEGImages" / f"{stem}.jpg").write_bytes(b"garbage")
        if objects is None:
            (root / "Annotations" / f"{stem}.xml").write_text("<annotation><object>")
            continue
        objs = "".join(
            f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
            f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>" for n, a, b, c, e, d in objects)
        # a deliberately wrong <size>: the converter must use the real image size
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>999</width><height>999</height></size>"
            f"{objs}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(items) + "\n")


def test_difficult_kept_as_ignore_unknown_classes_and_bad_files_reported(tmp_path, caplog):
    root = tmp_path / "voc"
    write_voc(root, {
        "a": [("cat", 1, 1, 10, 20, False), ("dog", 5, 6, 30, 40, True), ("zebra", 1, 1, 5, 5, False)],
        "b": [],
        "c": None,  # malformed XML
        "d": [("dog", 2, 2, 8, 8, False)],
    }, sizes={"a": (50, 70), "d": (0, 0)})  # d's image is not an image
    out = tmp_path / "out.json"
    summary = voc_to_coco(root, out, split="train", classes=["cat", "dog"])
    coco = json.loads(out.read_text())
    assert [i["file_name"] for i in coco["images"]] == ["a.jpg", "b.jpg"]
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(70, 50), (80, 60)]
    assert [c["id"] for c in coco["categories"]] == [1, 2]
    anns = coco["annotations"]
    assert [a["category_id"] for a in anns] == [1, 2]
    assert anns[0]["bbox"] == [0, 0, 10, 20] and anns[0]["area"] == 200 and "ignore" not in anns[0]
    assert anns[1]["bbox"] == [4, 5, 26, 35] and anns[1]["ignore"] == 1 and anns[1]["iscrowd"] == 0
    assert "1 difficult" in summary and "boxes of unknown classes skipped 1" in summary
    assert "left out 2 unreadable images" in summary
    assert "c.xml" in summary and "d.jpg" in summary
    quiet_coco(out)  # and pycocotools accepts it


def test_nothing_readable_is_an_error(tmp_path):
    root = tmp_path / "voc"
    write_voc(root, {"x": None})
    with pytest.raises(DataError, match="no image of split 'train' could be read"):
        voc_to_coco(root, tmp_path / "out.json", classes=["cat"])
    assert not (tmp_path / "out.json").exists()


def test_output_is_deterministic_and_independent_of_location(tmp_path):
    items = {"a": [("cat", 1, 1, 10, 20, False)], "b": [("cat", 3, 4, 5, 6, True)]}
    write_voc(tmp_path / "one", items)
    write_voc(tmp_path / "two", items)
    voc_to_coco(tmp_path / "one", tmp_path / "1.json", classes=["cat"])
    voc_to_coco(tmp_path / "two", tmp_path / "2.json", classes=["cat"])
    assert (tmp_path / "1.json").read_bytes() == (tmp_path / "2.json").read_bytes()


def test_cli_voc2coco(tmp_path):
    from click.testing import CliRunner

    from detkit.cli import main

    write_voc(tmp_path / "voc", {"a": [("cat", 1, 1, 10, 20, False)]}, split="trainval")
    result = CliRunner().invoke(main, ["data", "voc2coco", str(tmp_path / "voc"), str(tmp_path / "o.json"),
                                       "--split", "trainval", "--classes", "dog,cat"])
    assert result.exit_code == 0, result.output
    coco = json.loads((tmp_path / "o.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]
    assert coco["annotations"][0]["category_id"] == 2


def test_tools_voc2coco_wrapper(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "voc2coco_tool", Path(__file__).resolve().parents[1] / "tools" / "voc2coco.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    write_voc(tmp_path / "voc", {"a": [("cat", 1, 1, 10, 20, False)]})
    assert tool.main([str(tmp_path / "voc"), str(tmp_path / "o.json"), "--classes", "cat"]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["annotations"][0]["bbox"] == [0, 0, 10, 20]
    assert tool.main([str(tmp_path / "missing"), str(tmp_path / "p.json")]) == 1
    assert "missing does not exist" in capsys.readouterr().err
