"""detkit check-data (counts on a tree with planted problems, exit status) and detkit data show (browse)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from detkit.cli import main
from detkit.config import load_config
from detkit.data.browse import browse
from detkit.data.check import check_data, check_split
from detkit.data.io import read_image
from detkit.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def voc_xml(size=(64, 48), objects=()) -> str:
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
    objs = "".join(
        f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, difficult in ((o[0], o[1], o[2] if len(o) > 2 else 0) for o in objects))
    return f"<annotation>{size_xml}{objs}</annotation>"


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><object><name>&lol3;</name></object></annotation>"""


def grey_image(path: Path, width: int = 64, height: int = 48, value: int = 128) -> None:
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path, quality=95)


def write_voc(root: Path, samples: dict, split: str = "train") -> Path:
    """``samples``: id -> (xml text or None, image: "ok" | "missing" | "truncated" | "text" | (w, h))."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, (xml, image) in samples.items():
        if xml is not None:
            (root / "Annotations" / f"{stem}.xml").write_text(xml)
        path = root / "JPEGImages" / f"{stem}.jpg"
        if image == "ok":
            grey_image(path)
        elif isinstance(image, tuple):
            grey_image(path, *image)
        elif image == "truncated":
            rng = np.random.default_rng(1)
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path, quality=95)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif image == "text":
            path.write_text("this is not an image")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(samples) + "\n")
    return root


def write_config(path: Path, data: dict) -> Path:
    path.write_text(f"data = {data!r}\n")
    return path


def planted_tree(root: Path) -> Path:
    """Every problem check-data reports, planted a known number of times."""
    return write_voc(root, {
        "good": (voc_xml(objects=[("cat", (1, 1, 10, 10)), ("dog", (5, 5, 20, 20), 1)]), "ok"),
        "empty": (voc_xml(objects=[]), "ok"),
        "noimage": (voc_xml(objects=[("cat", (1, 1, 10, 10))]), "missing"),
        "truncated": (voc_xml(objects=[("dog", (1, 1, 10, 10))]), "truncated"),
        "notimage": (voc_xml(objects=[]), "text"),
        "malformed": ("<annotation><object>", "ok"),
        "bomb": (BOMB, "ok"),
        "noxml": (None, "ok"),
        "unknown": (voc_xml(objects=[("cat", (1, 1, 10, 10)), ("horse", (1, 1, 10, 10))]), "ok"),
        # clipped (x < 0), inverted (dropped), entirely right of the image (outside)
        "messy": (voc_xml(objects=[("cat", (-5, 1, 30, 10)), ("dog", (20, 1, 10, 10)),
                                   ("cat", (70, 1, 90, 10))]), "ok"),
        "nosize": (voc_xml(size=None, objects=[("cat", (1, 1, 10, 10))]), "ok"),
        "mismatch": (voc_xml(size=(100, 80), objects=[("cat", (41, 31, 90, 70))]), "ok"),
    })


# ----------------------------------------------------------------------------------------------
# check-data
# ----------------------------------------------------------------------------------------------
def test_counts_on_a_tree_with_planted_problems(tmp_path):
    root = planted_tree(tmp_path / "voc")
    cfg = {"data": {"classes": ["cat", "dog"], "train": {"type": "voc", "root": str(root), "split": "train"}}}
    report = check_split(cfg, "train", workers=2, progress=False)
    assert report.images == 12
    assert report.images_read == 10  # all but noimage and notimage: the truncated JPEG is restored
    assert len(report.missing_images) == 1 and "noimage" in report.missing_images[0]
    assert len(report.corrupt_images) == 1 and "notimage.jpg" in report.corrupt_images[0]
    assert len(report.restored) == 1 and "truncated.jpg" in report.restored[0] and "truncated" in report.restored[0]
    assert len(report.annotation_errors) == 3
    assert {name for name in ("malformed.xml", "bomb.xml", "noxml.xml")
            if any(name in m for m in report.annotation_errors)} == {"malformed.xml", "bomb.xml", "noxml.xml"}
    # Boxes come from every parsable annotation, whether or not its image reads:
    # cat: good, noimage, unknown, messy, nosize, mismatch; dog: good (difficult), truncated.
    assert dict(report.boxes_per_class) == {"cat": 6, "dog": 2}
    assert report.difficult == 1
    assert report.empty_images == 2  # empty, notimage
    assert report.stats["unknown_class"] == 1 and report.unknown_names == {"horse": 1}
    assert (report.stats["clipped"], report.stats["dropped"], report.stats["outside"]) == (1, 1, 1)
    assert report.stats["size_missing"] == 1
    assert len(report.size_mismatch) == 1 and report.size_mismatch[0][1:] == ("100x80", "64x48")
    assert report.outside_decoded == 1
    assert report.fatal

    # The same with one worker: identical report.
    assert check_split(cfg, "train", workers=1, progress=False) == report


def test_check_data_output_and_exit_status(tmp_path):
    bad = write_config(tmp_path / "bad.py", {"classes": ["cat", "dog"], "train": {
        "type": "voc", "root": str(planted_tree(tmp_path / "bad")), "split": "train"}})
    good_root = write_voc(tmp_path / "good", {"a": (voc_xml(objects=[("cat", (1, 1, 10, 10))]), "ok"),
                                              "b": (voc_xml(objects=[]), "ok")})
    write_voc(good_root, {"c": (voc_xml(objects=[("dog", (1, 1, 10, 10))]), "ok")}, split="val")
    good = write_config(tmp_path / "good.py", {
        "classes": ["cat", "dog"],
        "train": {"type": "voc", "root": str(good_root), "split": "train"},
        "val": {"type": "voc", "root": str(good_root), "split": "val"}})

    lines = []

    class Sink:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    assert check_data(load_config(bad), workers=2, file=Sink(), progress=False) is True
    text = "".join(lines)
    assert "FATAL" in text and "noimage" in text and "truncated.jpg" in text and "horse: 1" in text
    assert check_data(load_config(good), file=Sink(), progress=False) is False

    runner = CliRunner()
    result = runner.invoke(main, ["check-data", str(bad), "--workers", "2"])
    assert result.exit_code == 1, result.output
    assert "missing image files" in result.output
    result = runner.invoke(main, ["check-data", str(good)])
    assert result.exit_code == 0, result.output
    assert "split 'train'" in result.output and "split 'val'" in result.output
    assert "check-data: OK (train, val)" in result.output
    result = runner.invoke(main, ["check-data", str(good), "--split", "val"])
    assert result.exit_code == 0 and "split 'train'" not in result.output
    result = runner.invoke(main, ["check-data", str(good), "--split", "test"])
    assert result.exit_code == 2 and "data.test" in result.output  # ConfigError: no such split


def test_a_dataset_that_cannot_be_built_is_fatal(tmp_path):
    (tmp_path / "not_voc").mkdir()
    cfg = {"data": {"train": {"type": "voc", "root": str(tmp_path / "not_voc")}}}
    report = check_split(cfg, "train", progress=False)
    assert report.fatal and "not a Pascal VOC folder" in report.build_error
    with pytest.raises(ConfigError):
        check_data({"data": {"classes": None}}, progress=False)


def test_coco_split(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    grey_image(img_dir / "a.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                       {"id": 2, "file_name": "gone.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 10, 10], "iscrowd": 1},
                            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [1, 1, 0, 10]},
                            {"id": 3, "image_id": 2, "category_id": 9, "bbox": [1, 1, 5, 5]}],
            "categories": [{"id": 5, "name": "person"}, {"id": 9, "name": "car"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    cfg = {"data": {"val": {"type": "coco", "ann_file": str(tmp_path / "ann.json"), "img_dir": str(img_dir)}}}
    report = check_split(cfg, "val", progress=False)
    assert report.images == 2 and report.images_read == 1
    assert len(report.missing_images) == 1 and "gone.jpg" in report.missing_images[0]
    assert report.crowd == 1 and report.stats["dropped"] == 1
    assert dict(report.boxes_per_class) == {"person": 1, "car": 1}


def test_raccoon_check_data_exits_0(raccoon_root):
    config = REPO_ROOT / "configs" / "_base_" / "datasets" / "raccoon.py"
    result = CliRunner().invoke(main, ["check-data", str(config), "--set", f"data.train.root={raccoon_root}"])
    assert result.exit_code == 0, result.output
    assert "check-data: OK (train, val)" in result.output
    cfg = load_config(config, [f"data.train.root={raccoon_root}"])
    train = check_split(cfg, "train", progress=False)
    val = check_split(cfg, "val", progress=False)
    assert (train.images, val.images) == (160, 40)
    assert sum(train.boxes_per_class.values()) + sum(val.boxes_per_class.values()) == 217
    assert train.images_read == 160 and not train.size_mismatch and train.outside_decoded == 0


# ----------------------------------------------------------------------------------------------
# browse
# ----------------------------------------------------------------------------------------------
def test_draw_ground_truth_uses_class_colours():
    from detkit.draw import class_colour, draw_ground_truth

    image = np.full((120, 160, 3), 128, np.uint8)
    drawn = draw_ground_truth(image, [[10, 30, 60, 90], [80, 40, 150, 110]], [0, 1], ["cat", "dog"],
                              difficult=[False, True])
    assert (image == 128).all()  # the input is not modified

    def close(pixel, colour):  # anti-aliased lines blend a little with the background
        return np.abs(pixel.astype(int) - np.array(colour)).max() <= 16

    assert close(drawn[60, 10], class_colour(0))  # left edge of box 0 at mid-height
    assert close(drawn[75, 150], class_colour(1))  # right edge of box 1 (difficult: thin)
    assert not close(drawn[75, 150], class_colour(0))
    assert (drawn[100:118, 2:70] == 128).all()  # away from boxes and labels: untouched
    # The label sits above the box, filled with the class colour.
    label_area = drawn[10:30, 10:60].reshape(-1, 3)
    assert (label_area == class_colour(0)).all(axis=1).sum() > 150


def test_browse_writes_images_with_boxes(tmp_path):
    root = write_voc(tmp_path / "voc", {
        "a": (voc_xml(objects=[("cat", (11, 11, 40, 30))]), "ok"),
        "b": (voc_xml(objects=[("dog", (21, 6, 50, 40), 1)]), "ok"),
        "c": (voc_xml(objects=[]), "ok"),
    })
    cfg = {"data": {"classes": ["cat", "dog"], "train": {"type": "voc", "root": str(root), "split": "train"}}}
    out = tmp_path / "out"
    summary = browse(cfg, "train", out_dir=out, num=2)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["00000_a.jpg", "00001_b.jpg"]
    assert "wrote 2 image(s)" in summary and "2 boxes" in summary
    drawn = read_image(out / "00000_a.jpg")
    assert drawn.shape == (48, 64, 3)
    # The box (10, 10, 40, 30) on a flat grey image: its left edge at mid-height is coloured, a
    # pixel far from the box is still grey (JPEG leaves a little noise).
    assert np.abs(drawn[20, 10].astype(int) - 128).max() > 40
    assert np.abs(drawn[45, 60].astype(int) - 128).max() < 8


def test_browse_skips_unreadable_samples_and_uses_transforms(tmp_path):
    root = write_voc(tmp_path / "voc", {
        "gone": (voc_xml(objects=[("cat", (1, 1, 10, 10))]), "missing"),
        "a": (voc_xml(objects=[("cat", (11, 11, 40, 30))]), "ok"),
        "b": (voc_xml(objects=[]), "ok"),
    })
    cfg = {"data": {"classes": ["cat", "dog"], "train": {"type": "voc", "root": str(root), "split": "train",
                                                          "transforms": {"size": [32, 40]}}}}
    summary = browse(cfg, "train", out_dir=tmp_path / "raw", num=2)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["00001_a.jpg", "00002_b.jpg"]
    assert "skipped 1 unreadable sample" in summary and "gone" in summary
    assert read_image(tmp_path / "raw" / "00001_a.jpg").shape == (48, 64, 3)  # as stored

    summary = browse(cfg, "train", out_dir=tmp_path / "transformed", num=5, transformed=True)
    assert "after the split's transforms" in summary and "wrote 2 image(s)" in summary
    assert read_image(tmp_path / "transformed" / "00001_a.jpg").shape == (32, 40, 3)

    del cfg["data"]["train"]["transforms"]
    summary = browse(cfg, "train", out_dir=tmp_path / "plain", num=1, transformed=True)
    assert "has no transforms" in summary


def test_data_show_command(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": (voc_xml(objects=[("cat", (11, 11, 40, 30))]), "ok")})
    config = write_config(tmp_path / "cfg.py", {"classes": ["cat"], "train": {"type": "voc", "root": str(root)}})
    out = tmp_path / "shown"
    result = CliRunner().invoke(main, ["data", "show", str(config), "--out", str(out), "--num", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 1 image(s)" in result.output and "only 1 image(s)" in result.output
    assert [p.name for p in out.iterdir()] == ["00000_a.jpg"]


def test_importing_detkit_data_is_light():
    import subprocess
    import sys

    code = ("import sys, detkit.data; heavy = [m for m in ('torch', 'cv2', 'pycocotools') if m in sys.modules]; "
            "print(heavy); from detkit.data import read_image; print(callable(read_image))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "True"]
