"""VOCDataset / parse_voc_xml on tiny VOC trees written by the tests, and on the real raccoon data."""

from __future__ import annotations

import logging
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detkit import registry
from detkit.data.io import read_image
from detkit.data.voc import VOC_CLASSES, VOCDataset, parse_voc_xml
from detkit.errors import ConfigError, DataError

CLASSES = ("cat", "dog")


# ----------------------------------------------------------------------------------------------
# Helpers: write a VOC tree
# ----------------------------------------------------------------------------------------------
def voc_xml(filename: str | None = "img.jpg", size: tuple | None = (64, 48), objects=(),
            raw_size: str | None = None) -> str:
    """XML text; ``size`` is (width, height) or None for no <size>; objects are dicts
    ``name, box=(xmin, ymin, xmax, ymax)`` (strings kept as written), optional ``difficult``."""
    parts = ["<annotation>", "  <folder>VOC</folder>"]
    if filename is not None:
        parts.append(f"  <filename>{filename}</filename>")
    if raw_size is not None:
        parts.append(raw_size)
    elif size is not None:
        parts.append(f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for obj in objects:
        parts.append("  <object>")
        parts.append(f"    <name>{obj['name']}</name>")
        if obj.get("difficult") is not None:
            parts.append(f"    <difficult>{obj['difficult']}</difficult>")
        xmin, ymin, xmax, ymax = obj["box"]
        parts.append(f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>")
        parts.append("  </object>")
    parts.append("</annotation>")
    return "\n".join(parts)


def write_image(path: Path, width: int = 64, height: int = 48, exif_orientation: int | None = None) -> Path:
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    array = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(array).save(path, format=fmt, **kwargs)
    return path


def make_voc(root: Path, samples: dict, split: str = "train", image_ext: str = ".jpg") -> Path:
    """``samples``: id -> XML text (None: no XML file). Writes a 64x48 image per id unless the id is in
    ``samples`` with an image already written by the caller (then pass image_ext=None)."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for stem, xml in samples.items():
        if xml is not None:
            (root / "Annotations" / f"{stem}.xml").write_text(xml, encoding="utf-8")
        if image_ext is not None:
            write_image(root / "JPEGImages" / f"{stem}{image_ext}")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(samples) + "\n", encoding="utf-8")
    return root


# ----------------------------------------------------------------------------------------------
# Parsing rules
# ----------------------------------------------------------------------------------------------
def test_boxes_labels_flags_and_one_based_convention(tmp_path):
    root = make_voc(tmp_path / "voc", {
        "a": voc_xml("a.jpg", objects=[dict(name="dog", box=(1, 1, 64, 48), difficult=0),
                                       dict(name="cat", box=(10, 5, 20, 15), difficult=1)]),
        "b": voc_xml("b.jpg", objects=[dict(name="cat", box=(30, 20, 30, 20))]),
    })
    ds = VOCDataset(root, "train", classes=CLASSES)
    assert len(ds) == 2 and ds.ids == ["a", "b"] and ds.classes == CLASSES and ds.num_classes == 2
    a = ds.load_annotation(0)
    # VOC's 1-based inclusive corners -> continuous: (xmin - 1, ymin - 1, xmax, ymax); the whole image
    # (1, 1, W, H) is (0, 0, W, H).
    np.testing.assert_array_equal(a.boxes, [[0, 0, 64, 48], [9, 4, 20, 15]])
    assert a.labels.tolist() == [1, 0] and a.difficult.tolist() == [False, True]
    assert a.iscrowd.tolist() == [False, False]
    assert a.image_id == 0 and a.file_name == "a.jpg" and (a.width, a.height) == (64, 48)
    assert a.stats["clipped"] == 0 and a.stats["boxes"] == 2 and a.stats["difficult"] == 1
    # xmin == xmax names one pixel column: a 1x1 box, kept (the devkit's area is 1 too).
    b = ds.load_annotation(1)
    np.testing.assert_array_equal(b.boxes, [[29, 19, 30, 20]])
    assert b.image_id == 1


def test_float_coordinates_and_missing_difficult(tmp_path):
    root = make_voc(tmp_path / "voc", {
        "a": voc_xml(objects=[dict(name="cat", box=("10.5", "4.25", "33.75", "20.0")),
                              dict(name="dog", box=(" 2 ", "3", "4", "5"), difficult=" ")]),
    })
    ann = VOCDataset(root, classes=CLASSES).load_annotation(0)
    np.testing.assert_allclose(ann.boxes, [[9.5, 3.25, 33.75, 20.0], [1, 2, 4, 5]])
    assert ann.difficult.tolist() == [False, False]


def test_unknown_class_skipped_and_counted_or_strict_error(tmp_path):
    root = make_voc(tmp_path / "voc", {
        "a": voc_xml(objects=[dict(name="cat", box=(1, 1, 10, 10)), dict(name="horse", box=(2, 2, 9, 9)),
                              dict(name="horse", box=(3, 3, 9, 9)), dict(name=" dog ", box=(4, 4, 9, 9))]),
        "b": voc_xml(objects=[dict(name="cat", box=(1, 1, 10, 10))]),
    })
    ds = VOCDataset(root, classes=CLASSES)
    ann = ds.load_annotation(0)
    assert ann.labels.tolist() == [0, 1]  # " dog " is stripped and known
    assert ann.stats["unknown_class"] == 2 and ann.stats["unknown_class:horse"] == 2
    assert ds.stats["unknown_class"] == 2

    strict = VOCDataset(root, classes=CLASSES, strict=True)  # building works: check-data lists all
    with pytest.raises(DataError, match=r"a\.xml.*'horse'.*not in classes"):
        strict.load_annotation(0)
    with pytest.raises(DataError, match=r"a\.xml"):
        strict[0]
    assert strict.load_annotation(1).labels.tolist() == [0]
    assert set(strict.errors) == {0}


def test_boxes_outside_are_clipped_and_degenerate_dropped(tmp_path):
    root = make_voc(tmp_path / "voc", {
        "a": voc_xml(size=(64, 48), objects=[
            dict(name="cat", box=(-5, 10, 30, 20)),     # x1 < 0 -> clipped
            dict(name="cat", box=(50, 40, 80, 60)),     # past right and bottom -> clipped
            dict(name="dog", box=(70, 10, 90, 20)),     # entirely right of the image -> outside
            dict(name="dog", box=(20, 10, 10, 20)),     # inverted x -> dropped
            dict(name="dog", box=(20, 10, 30, 9)),      # ymax = ymin - 1: no pixel rows -> dropped
            dict(name="cat", box=(5, 5, 15, 15)),       # fine
        ]),
    })
    ds = VOCDataset(root, classes=CLASSES)
    ann = ds.load_annotation(0)
    np.testing.assert_array_equal(ann.boxes, [[0, 9, 30, 20], [49, 39, 64, 48], [4, 4, 15, 15]])
    assert ann.labels.tolist() == [0, 0, 0]
    assert (ann.stats["clipped"], ann.stats["outside"], ann.stats["dropped"]) == (2, 1, 2)
    assert ann.stats["objects"] == 6 and ann.stats["boxes"] == 3
    image, target = ds[0]
    assert target["boxes"].shape == (3, 4)


def test_image_without_objects_is_kept_as_negative(tmp_path):
    root = make_voc(tmp_path / "voc", {"empty": voc_xml(objects=[])})
    ds = VOCDataset(root, classes=CLASSES)
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["labels"].dtype == torch.int64 and target["difficult"].dtype == torch.bool


def test_difficult_kept_flagged_or_skipped(tmp_path):
    root = make_voc(tmp_path / "voc", {
        "a": voc_xml(objects=[dict(name="cat", box=(1, 1, 10, 10), difficult=1),
                              dict(name="dog", box=(5, 5, 20, 20), difficult=0)]),
    })
    kept = VOCDataset(root, classes=CLASSES)
    _, target = kept[0]
    assert target["difficult"].tolist() == [True, False]
    skipped = VOCDataset(root, classes=CLASSES, skip_difficult=True)
    ann = skipped.load_annotation(0)
    assert ann.labels.tolist() == [1] and ann.stats["skipped_difficult"] == 1


def test_getitem_follows_the_contract_and_applies_transforms(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": voc_xml("a.jpg", objects=[dict(name="dog", box=(11, 21, 30, 40))])})

    def hflip(sample):
        w = sample["image"].shape[1]
        sample["image"] = sample["image"][:, ::-1]
        boxes = sample["boxes"].copy()
        sample["boxes"] = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        return sample

    plain = VOCDataset(root, classes=CLASSES)
    flipped = VOCDataset(root, classes=CLASSES, transforms=hflip)
    image, target = plain[0]
    fimage, ftarget = flipped[0]
    raw = read_image(root / "JPEGImages" / "a.jpg")
    torch.testing.assert_close(image, torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(fimage, image.flip(-1))
    assert target["boxes"].tolist() == [[10, 20, 30, 40]]
    assert ftarget["boxes"].tolist() == [[34, 20, 54, 40]]
    assert target["image_id"] == 0 and target["labels"].tolist() == [1]
    meta = target["meta"]
    assert meta["orig_size"] == (48, 64) and meta["input_size"] == (48, 64)
    assert meta["file_name"] == "a.jpg" and Path(meta["path"]) == root / "JPEGImages" / "a.jpg"
    # The cached annotation cannot be changed through what load_annotation returns.
    plain.load_annotation(0).boxes[:] = -1
    assert plain.load_annotation(0).boxes.tolist() == [[10, 20, 30, 40]]


# ----------------------------------------------------------------------------------------------
# <size>
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size_xml", [
    None,
    "  <size><width>0</width><height>0</height><depth>3</depth></size>",
    "  <size><width></width><height>48</height></size>",
])
def test_missing_or_zero_size_uses_the_image_size(tmp_path, caplog, size_xml):
    xml = voc_xml(objects=[dict(name="cat", box=(50, 30, 100, 100))], size=None, raw_size=size_xml)
    root = make_voc(tmp_path / "voc", {"a": xml})
    with caplog.at_level(logging.WARNING, logger="detkit.data.voc"):
        ds = VOCDataset(root, classes=CLASSES)
    ann = ds.load_annotation(0)
    assert (ann.width, ann.height) == (64, 48)  # the image's real size
    np.testing.assert_array_equal(ann.boxes, [[49, 29, 64, 48]])  # clipped to it
    assert ann.stats["size_missing"] == 1 and ann.stats["clipped"] == 1
    per_file = [r.getMessage() for r in caplog.records if "a.xml" in r.getMessage()]
    assert len(per_file) == 1 and "<size> is missing or zero" in per_file[0]


def test_size_different_from_image_warns_once_and_image_rules(tmp_path, caplog):
    # <size> claims 100x80 but the image is 64x48: boxes valid for the claim are clipped at load.
    root = make_voc(tmp_path / "voc", {"a": voc_xml(size=(100, 80), objects=[dict(name="cat", box=(41, 31, 90, 70)),
                                                                           dict(name="dog", box=(70, 60, 90, 70))])})
    ds = VOCDataset(root, classes=CLASSES)
    assert ds.load_annotation(0).boxes.tolist() == [[40, 30, 90, 70], [69, 59, 90, 70]]
    with caplog.at_level(logging.WARNING, logger="detkit.data.voc"):
        _, target = ds[0]
        ds[0]
    assert target["boxes"].tolist() == [[40, 30, 64, 48]]  # clipped; the box past the image is dropped
    assert target["labels"].tolist() == [0]
    warnings = [r.getMessage() for r in caplog.records if "<size>" in r.getMessage()]
    assert len(warnings) == 1 and "100x80" in warnings[0] and "64x48" in warnings[0]


def test_exif_rotated_jpeg_boxes_use_the_oriented_size(tmp_path, caplog):
    # Stored 60 wide x 30 high with orientation 6 (rotate 90 CW): shown 30 wide x 60 high, and the
    # annotation is in that displayed frame (as in COCO / ultralytics).
    root = tmp_path / "voc"
    box = dict(name="cat", box=(3, 41, 28, 58))  # y up to 58: only fits the oriented 60-pixel height
    make_voc(root, {"stated": voc_xml("stated.jpg", size=(30, 60), objects=[box]),
                    "nosize": voc_xml("nosize.jpg", size=None, objects=[box])}, image_ext=None)
    for stem in ("stated", "nosize"):
        write_image(root / "JPEGImages" / f"{stem}.jpg", width=60, height=30, exif_orientation=6)
    with caplog.at_level(logging.WARNING, logger="detkit.data.voc"):
        ds = VOCDataset(root, classes=CLASSES)
        for i in range(2):
            ann = ds.load_annotation(i)
            assert (ann.width, ann.height) == (30, 60) and ann.stats["clipped"] == 0
            sample = ds.raw_sample(i)
            assert sample["image"].shape == (60, 30, 3)
            assert sample["boxes"].tolist() == [[2, 40, 28, 58]]
    assert not [r for r in caplog.records if "says" in r.getMessage()]  # no mismatch warning


def test_swapped_size_warning_hints_at_exif(tmp_path, caplog):
    root = tmp_path / "voc"
    xml = voc_xml("r.jpg", size=(60, 30), objects=[dict(name="cat", box=(1, 1, 20, 20))])
    make_voc(root, {"r": xml}, image_ext=None)
    write_image(root / "JPEGImages" / "r.jpg", width=60, height=30, exif_orientation=8)
    with caplog.at_level(logging.WARNING, logger="detkit.data.voc"):
        VOCDataset(root, classes=CLASSES).raw_sample(0)
    assert any("EXIF" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------------------
# Broken and hostile files
# ----------------------------------------------------------------------------------------------
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<annotation><filename>bomb.jpg</filename><object><name>&lol5;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>
"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/hostname">]>
<annotation><filename>x.jpg</filename><object><name>&secret;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>
"""


def test_xml_bomb_and_external_entities_are_rejected(tmp_path):
    root = make_voc(tmp_path / "voc", {"bomb": BILLION_LAUGHS, "xxe": XXE, "ok": voc_xml()})
    ds = VOCDataset(root, classes=CLASSES)
    assert len(ds) == 3
    with pytest.raises(DataError, match=r"bomb\.xml.*rejected.*entit"):
        ds.load_annotation(0)
    with pytest.raises(DataError, match=r"xxe\.xml.*rejected"):
        ds.load_annotation(1)
    assert ds.load_annotation(2).boxes.shape == (0, 4)
    with pytest.raises(DataError, match=r"bomb\.xml.*rejected"):
        parse_voc_xml(root / "Annotations" / "bomb.xml", CLASSES)


@pytest.mark.parametrize("xml, message", [
    ("<annotation><object><name>cat</name>", r"malformed XML"),
    ("", r"malformed XML"),
    ("<html><body/></html>", r"not a Pascal VOC annotation.*<html>"),
    (voc_xml(objects=[dict(name="cat", box=(1, 1, "ten", 5))]), r"object 0 \('cat'\).*<xmax> is not a number: 'ten'"),
    (voc_xml(objects=[dict(name="cat", box=(1, 1, "nan", 5))]), r"<xmax> is not finite"),
    ("<annotation><object><name>cat</name></object></annotation>", r"object 0 \('cat'\) has no <bndbox>"),
    ("<annotation><object><bndbox/></object></annotation>", r"object 0 has no <name>"),
    (voc_xml(objects=[dict(name="cat", box=(1, 1, 5, 5), difficult="maybe")]), r"<difficult> must be 0 or 1"),
])
def test_unusable_annotations_raise_naming_the_file(tmp_path, xml, message):
    root = make_voc(tmp_path / "voc", {"bad": xml, "good": voc_xml(objects=[dict(name="cat", box=(1, 1, 5, 5))])})
    ds = VOCDataset(root, classes=CLASSES)
    with pytest.raises(DataError, match=r"bad\.xml.*" + message):
        ds.load_annotation(0)
    with pytest.raises(DataError, match=r"bad\.xml"):
        ds[0]
    assert ds.load_annotation(1).labels.tolist() == [0]
    assert list(ds.errors) == [0]


def test_missing_xml_and_missing_image(tmp_path):
    root = make_voc(tmp_path / "voc", {"noxml": None, "noimg": voc_xml("noimg.jpg"), "ok": voc_xml("ok.jpg")})
    (root / "JPEGImages" / "noimg.jpg").unlink()
    ds = VOCDataset(root, classes=CLASSES)
    with pytest.raises(DataError, match=r"annotation file not found.*noxml\.xml"):
        ds.load_annotation(0)
    assert ds.load_annotation(1).file_name == "noimg.jpg"  # the annotation alone is fine
    with pytest.raises(DataError, match=r"image file not found for 'noimg'.*JPEGImages"):
        ds.image_path(1)
    with pytest.raises(DataError, match=r"noimg"):
        ds[1]
    assert ds[2][0].shape == (3, 48, 64)


def test_image_extensions_and_filename_tag(tmp_path):
    root = make_voc(tmp_path / "voc", {
        "png": voc_xml("png.png"),
        "upper": voc_xml("upper.JPG"),
        "jpeg": voc_xml(None),           # no <filename>: found by id with another extension
        "named": voc_xml("photo 7.png"),  # <filename> differs from the id
        "stale": voc_xml("C:\\labelling\\old\\stale.jpg"),  # folder part of a Windows path ignored
        "both": voc_xml("png.png"),      # stale <filename> naming another sample's image: the id wins
    }, image_ext=None)
    images = root / "JPEGImages"
    write_image(images / "png.png")
    write_image(images / "upper.JPG")
    write_image(images / "jpeg.jpeg")
    write_image(images / "photo 7.png")
    write_image(images / "stale.jpg")
    write_image(images / "both.png")
    write_image(images / "both.jpg")  # two extensions: .jpg (the VOC standard) is preferred
    ds = VOCDataset(root, classes=CLASSES)
    names = [ds.image_path(i).name for i in range(len(ds))]
    assert names == ["png.png", "upper.JPG", "jpeg.jpeg", "photo 7.png", "stale.jpg", "both.jpg"]
    assert [ds.load_annotation(i).file_name for i in range(len(ds))] == names
    for i in range(len(ds)):
        assert ds[i][0].shape == (3, 48, 64)


def test_odd_file_names_spaces_unicode_and_normalisation(tmp_path):
    nfc = unicodedata.normalize("NFC", "café ünïcode 猫")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    root = make_voc(tmp_path / "voc dir", {
        "my image 1": voc_xml("my image 1.jpg", objects=[dict(name="cat", box=(1, 1, 5, 5))]),
        nfc: voc_xml(None, objects=[dict(name="dog", box=(1, 1, 5, 5))]),
    }, image_ext=None)
    write_image(root / "JPEGImages" / "my image 1.jpg")
    # Files written on macOS are NFD; the split file says NFC.
    (root / "Annotations" / f"{nfc}.xml").rename(root / "Annotations" / f"{nfd}.xml")
    write_image(root / "JPEGImages" / f"{nfd}.jpg")
    ds = VOCDataset(root, classes=CLASSES)
    assert ds.ids == ["my image 1", nfc]
    assert ds.load_annotation(0).labels.tolist() == [0] and ds.load_annotation(1).labels.tolist() == [1]
    assert ds[0][0].shape == ds[1][0].shape == (3, 48, 64)


def test_several_roots_are_concatenated(tmp_path):
    r07 = make_voc(tmp_path / "VOC2007", {"000001": voc_xml(objects=[dict(name="cat", box=(1, 1, 5, 5))]),
                                          "000002": voc_xml()}, split="trainval")
    r12 = make_voc(tmp_path / "VOC2012", {"2008_000001": voc_xml(objects=[dict(name="dog", box=(2, 2, 6, 6))])},
                   split="trainval")
    make_voc(r12, {"2008_000009": voc_xml()}, split="val")
    ds = VOCDataset([r07, r12], ["trainval", "trainval"], classes=CLASSES)
    assert ds.ids == ["000001", "000002", "2008_000001"] and ds.roots == [r07, r07, r12]
    assert [ds.load_annotation(i).image_id for i in range(3)] == [0, 1, 2]
    assert ds[2][1]["labels"].tolist() == [1] and ds[2][1]["image_id"] == 2
    assert ds.image_path(2) == r12 / "JPEGImages" / "2008_000001.jpg"
    # One split for every root; one root with several splits.
    assert len(VOCDataset([r07, r12], "trainval", classes=CLASSES)) == 3
    assert VOCDataset(r12, ["trainval", "val"], classes=CLASSES).ids == ["2008_000001", "2008_000009"]
    with pytest.raises(ConfigError, match="2 folders but split lists 3"):
        VOCDataset([r07, r12], ["trainval", "trainval", "val"], classes=CLASSES)


def test_layout_errors(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": voc_xml()}, split="train")
    with pytest.raises(DataError, match=r"split file not found: .*test\.txt.*available splits: train"):
        VOCDataset(root, "test", classes=CLASSES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*not a Pascal VOC folder.*Annotations"):
        VOCDataset(tmp_path / "empty", classes=CLASSES)
    with pytest.raises(ConfigError, match="'cat' more than once"):
        VOCDataset(root, classes=("cat", "dog", "cat"))
    # split=None: every XML file in Annotations/
    assert VOCDataset(root, None, classes=CLASSES).ids == ["a"]


def test_default_classes_and_registry_build(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": voc_xml(objects=[dict(name="tvmonitor", box=(1, 1, 5, 5))])})
    ds = registry.build("datasets", dict(type="voc", root=str(root), split="train"))
    assert isinstance(ds, VOCDataset) and ds.classes == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert ds.load_annotation(0).labels.tolist() == [VOC_CLASSES.index("tvmonitor")]


def test_parse_voc_xml_directly(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": voc_xml("a.jpg", size=None, objects=[dict(name="dog", box=(1, 1, 70, 5)),
                                                                                  dict(name="owl", box=(1, 1, 5, 5))])},
                    image_ext=".png")
    ann, stats = parse_voc_xml(root / "Annotations" / "a.xml", CLASSES, image_id=7, images=root / "JPEGImages")
    assert stats is ann.stats or stats == ann.stats
    assert ann.image_id == 7 and ann.file_name == "a.png" and (ann.width, ann.height) == (64, 48)
    assert ann.boxes.tolist() == [[0, 0, 64, 5]] and stats["clipped"] == 1 and stats["unknown_class:owl"] == 1
    # Without the image folder the size is unknown: nothing to clip the right edge against.
    ann, stats = parse_voc_xml(root / "Annotations" / "a.xml", {"dog": 0})
    assert ann.width is None and ann.boxes.tolist() == [[0, 0, 70, 5]] and ann.file_name == "a.jpg"


# ----------------------------------------------------------------------------------------------
# The real raccoon data set
# ----------------------------------------------------------------------------------------------
def reference_boxes(xml_path: Path) -> list[list[float]]:
    """Independent reading with the standard library: VOC corners -> (xmin - 1, ymin - 1, xmax, ymax)."""
    root = ET.parse(xml_path).getroot()
    out = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        out.append([xmin - 1, ymin - 1, xmax, ymax])
    return out


def test_raccoon(raccoon_root):
    train = VOCDataset(raccoon_root, "train", classes=["raccoon"])
    val = VOCDataset(raccoon_root, "val", classes=["raccoon"])
    assert (len(train), len(val)) == (160, 40)
    assert not set(train.ids) & set(val.ids)
    total = 0
    for ds in (train, val):
        assert ds.classes == ("raccoon",) and not ds.errors
        for i in range(len(ds)):
            ann = ds.load_annotation(i)
            expected = reference_boxes(raccoon_root / "Annotations" / f"{ds.ids[i]}.xml")
            np.testing.assert_allclose(ann.boxes, np.asarray(expected, np.float32).reshape(-1, 4))
            assert (ann.labels == 0).all()
            image = read_image(ds.image_path(i))
            h, w = image.shape[:2]
            assert image.shape[2] == 3 and (ann.height, ann.width) == (h, w)
            b = ann.boxes
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
            assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
            total += len(b)
    assert total == 217
    assert train.stats["clipped"] == val.stats["clipped"] == 0
