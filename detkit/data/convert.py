"""Convert data sets between the Pascal VOC, COCO and YOLO layouts; the one COCO annotation writer.

``convert(src, out, to=..., splits=...)`` (``detkit data convert``) reads each split of ``src`` with
the data set class training uses (:class:`~detkit.data.voc.VOCDataset`, :class:`~detkit.data.coco.
COCODataset`, :class:`~detkit.data.yolo.YOLODataset`, so the output says exactly what training sees)
and writes a complete data set in the other layout, images included (hard-linked when ``out`` is on
the same file system, else copied; ``images="copy"`` or ``"symlink"`` to choose):

* **voc**: ``Annotations/<stem>.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt`` and
  ``classes.txt`` (the class order, read back when this folder is converted again). Boxes are written
  back as VOC's 1-based inclusive corners (``xmin + 1``...); crowd regions become ``difficult``
  (both are "ignore" to the VOC metric).
* **coco**: ``annotations/instances_<split>.json`` (see below) and ``<split>/`` with the images.
* **yolo**: ``images/<split>/``, ``labels/<split>/<stem>.txt`` (``class cx cy w h`` normalised to the
  image as displayed, 10 significant digits so boxes come back to well under 1e-3 px), ``data.yaml``
  (``names``, ``train``/``val``; no ``path``, so it is found next to the yaml by ultralytics and
  detkit alike). YOLO has no difficult or crowd flag: those boxes are left out (as ultralytics' VOC
  converter does) and counted; an image without boxes gets an empty label file (a negative).

``src`` layouts: a VOC folder (``ImageSets/Main/<split>.txt``; without ``classes`` its ``classes.txt``,
else VOC's 20 classes when all names are VOC's, else the names found in the XML files), a YOLO
``data.yaml`` or its folder, a COCO folder (``annotations/instances_<split>.json`` with the images in
``<split>/``) or one COCO JSON file with ``img_dir``.

``voc_to_coco(root, out, split="train", classes=None)`` (``detkit data voc2coco``) writes only the
COCO JSON of a VOC split, pointing at the images where they are:

* ``images``: ``id`` 1..N in split order, ``file_name`` relative to ``ROOT/JPEGImages``, and the
  ``width`` / ``height`` of the real image file (after EXIF orientation, as detkit decodes it); the
  XML's ``<size>`` is not trusted.
* ``categories``: ids ``1..C`` in class order (label ``i`` -> category ``i + 1``).
* ``annotations``: ``bbox`` ``[x, y, w, h]`` in pixels of the boxes as the VOC parser returns them
  (already converted from VOC's 1-based corners), ``area = w * h``, ``iscrowd = 0``.
* **difficult** objects are kept, marked ``"ignore": 1`` (and ``iscrowd: 0``), as mmdetection's
  converter does. Note that pycocotools' COCOeval does not honour ``ignore`` (it overwrites it with
  ``iscrowd``), so under COCO metrics difficult boxes count as ordinary ground truth; detkit's VOC
  evaluator treats them as VOC does.

An image whose annotation or file cannot be read is left out, logged with its path and listed in
the summary; a split fails only when no image of it can be read.

:func:`coco_dict` / :func:`write_coco_json` are the shared writer; the synthetic shapes generator
writes its JSON through :func:`voc_to_coco`, so there is one parser and one writer.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from detkit.data.base import ANNOTATION_STATS, CHOICE_STATS, Annotation
from detkit.data.io import image_size
from detkit.errors import ConfigError, DataError

__all__ = ["convert", "voc_to_coco", "coco_dict", "write_coco_json", "FORMATS"]

FORMATS = ("voc", "coco", "yolo")

logger = logging.getLogger(__name__)

# Loader counters worth repeating in a summary (everything else is routine).
_NOTABLE_STATS = dict(ANNOTATION_STATS + CHOICE_STATS)


def _number(v: float) -> float | int:
    """Millipixel precision, and integers written as integers (VOC boxes usually are)."""
    v = round(float(v), 3)
    return int(v) if v.is_integer() else v


def coco_dict(items: Iterable[tuple[str, int, int, Annotation]], classes: Sequence[str], *,
              description: str = "") -> dict:
    """Build a COCO detection dict from ``(file_name, width, height, annotation)`` per image, in order.

    Boxes are xyxy pixels (the :class:`~detkit.data.base.Annotation` contract), labels 0..C-1.
    """
    images, annotations = [], []
    for image_id, (file_name, width, height, ann) in enumerate(items, start=1):
        images.append({"id": image_id, "file_name": str(file_name), "width": int(width), "height": int(height)})
        for box, label, difficult, crowd in zip(ann.boxes, ann.labels, ann.difficult, ann.iscrowd):
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = x2 - x1, y2 - y1
            record = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(label) + 1,
                "bbox": [_number(x1), _number(y1), _number(w), _number(h)],
                "area": _number(w * h),
                "iscrowd": int(bool(crowd)),
            }
            if difficult:
                record["ignore"] = 1
            annotations.append(record)
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "none"} for i, name in enumerate(classes)],
    }


def write_coco_json(coco: dict, path: str | os.PathLike) -> Path:
    """Write ``coco`` deterministically (same dict -> same bytes) and atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(coco, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _relative_name(path: Path, image_dir: Path) -> str:
    try:
        return Path(path).relative_to(image_dir).as_posix()
    except ValueError:
        return Path(path).name


def _read_samples(dataset, what: str) -> tuple[list, list, Counter]:
    """``[(image path, width, height, annotation)]`` of every readable sample, the problems, the stats."""
    items, problems = [], []
    stats: Counter = Counter()
    for index in range(len(dataset)):
        try:
            path = dataset.image_path(index)
            height, width = image_size(path)
            dataset.note_image_size(index, (height, width))
            ann = dataset.load_annotation(index)
        except DataError as exc:
            logger.warning("%s: left out sample %d: %s", what, index, exc)
            problems.append(str(exc))
            continue
        stats.update({k: v for k, v in ann.stats.items() if k in _NOTABLE_STATS})
        items.append((Path(path), width, height, ann))
    return items, problems, stats


def _problem_lines(stats: Counter, problems: list, cleaned_by: str) -> list[str]:
    lines = []
    noted = {k: v for k, v in stats.items() if v}
    if noted:
        lines.append(f"  cleaned by the {cleaned_by}: " + ", ".join(f"{_NOTABLE_STATS[k]} {v}" for k, v in noted.items()))
    if problems:
        lines.append(f"  left out {len(problems)} unreadable images:")
        lines += [f"    {p}" for p in problems[:20]]
        if len(problems) > 20:
            lines.append(f"    ... and {len(problems) - 20} more (see the log)")
    return lines


def voc_to_coco(root: str | os.PathLike, out: str | os.PathLike, split: str = "train",
                classes: Sequence[str] | None = None, description: str | None = None) -> str:
    """Convert the VOC split ``ROOT/ImageSets/Main/<split>.txt`` to a COCO JSON at ``out``.

    ``description`` goes to ``info.description``. The output depends only on the data, not on
    where it lives, so converting the same data twice gives the same bytes.
    Returns a one-paragraph summary (counts, where the images are, anything left out).
    """
    from detkit.data.voc import VOCDataset

    dataset = VOCDataset(root, split=split, classes=classes)
    image_dir = Path(root) / "JPEGImages"
    items, problems, stats = _read_samples(dataset, "voc2coco")
    if not items:
        raise DataError(f"{root}: no image of split '{split}' could be read"
                        + (f"; first problem: {problems[0]}" if problems else ""))
    if description is None:
        description = f"Pascal VOC split '{split}' converted by detkit"
    coco = coco_dict([(_relative_name(p, image_dir), w, h, ann) for p, w, h, ann in items], dataset.classes,
                     description=description)
    write_coco_json(coco, out)
    per_class = Counter(a["category_id"] for a in coco["annotations"])
    ignored = sum(1 for a in coco["annotations"] if a.get("ignore"))
    lines = [
        f"wrote {out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes "
        f"({ignored} difficult, kept with ignore=1), {len(dataset.classes)} categories",
        "  per class: " + ", ".join(f"{name} {per_class.get(i + 1, 0)}" for i, name in enumerate(dataset.classes)),
        f"  images: file_name is relative to {image_dir}",
    ]
    return "\n".join(lines + _problem_lines(stats, problems, "VOC parser"))


# ----------------------------------------------------------------------------------------------
# Any layout -> any layout
# ----------------------------------------------------------------------------------------------
def detect_format(src: str | os.PathLike) -> str:
    """``voc``, ``coco`` or ``yolo`` from what ``src`` holds; DataError when it is none of them."""
    from detkit.data.paths import describe_layout, require_folder

    src = Path(src)
    if src.suffix == ".json":
        return "coco"
    if src.suffix in (".yaml", ".yml"):
        return "yolo"
    layout = describe_layout(require_folder(src, "source data set"))
    if layout in FORMATS:
        return layout
    raise DataError(f"{src}: cannot tell its layout (no Annotations/ + JPEGImages/, data.yaml or images/ + "
                    "labels/, annotations/*.json); pass --from voc|coco|yolo")


def voc_class_names(root: str | os.PathLike, splits: Sequence[str]) -> list[str]:
    """The classes of a VOC folder when none are given: its ``classes.txt`` (written by ``convert`` and
    ``make-shapes``), else VOC's 20 when every object name is one of them, else the names found, sorted."""
    from detkit.data.voc import VOC_CLASSES, _parse_xml, _read_split, _text

    root = Path(root)
    listed = root / "classes.txt"
    if listed.is_file():
        return [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
    found = set()
    for split in splits:
        for stem in _read_split(root, split, "Annotations"):
            try:
                found.update(_text(o, "name") for o in _parse_xml(root / "Annotations" / f"{stem}.xml").findall("object"))
            except DataError:
                continue  # reported when the split is read
    found.discard(None)
    if found <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    logger.warning("%s: no class list given; using the %d names found in its XML files: %s", root, len(found),
                   ", ".join(sorted(found)))
    return sorted(found)


def open_split(fmt: str, src: str | os.PathLike, split: str, classes=None, img_dir=None):
    """The data set of ``split`` of ``src`` in layout ``fmt`` (built without the verification pass)."""
    src = Path(src)
    if fmt == "voc":
        from detkit.data.voc import VOCDataset

        return VOCDataset(src, split=split, classes=classes)
    if fmt == "yolo":
        from detkit.data.yolo import YOLODataset

        return YOLODataset(src, split=split, classes=classes)
    if fmt == "coco":
        from detkit.data.coco import COCODataset

        if src.suffix == ".json":
            if img_dir is None:
                raise ConfigError(f"{src}: a single COCO JSON needs the image folder (--img-dir)")
            return COCODataset(src, img_dir, classes=classes)
        ann = next((p for p in (src / "annotations" / f"instances_{split}.json", src / "annotations" / f"{split}.json")
                    if p.is_file()), src / "annotations" / f"instances_{split}.json")
        return COCODataset(ann, img_dir or src / split, classes=classes)
    raise ConfigError(f"unknown layout {fmt!r}; choose from {', '.join(FORMATS)}")


def _place_image(source: Path, target: Path, mode: str) -> str:
    """Put ``source`` at ``target`` (link / copy / symlink); returns how it was done."""
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        if target.exists() and os.path.samefile(source, target):
            return "link"
        target.unlink()
    if mode == "link":
        try:
            os.link(source, target)
            return "link"
        except OSError:  # another file system, or links not allowed: copy
            mode = "copy"
    if mode == "symlink":
        target.symlink_to(source.resolve())
        return "symlink"
    shutil.copy2(source, target)
    return "copy"


class _Names:
    """Unique flat file names for one output folder (``a.jpg``, then ``a_1.jpg`` for another ``a.jpg``)."""

    def __init__(self):
        self.used: set[str] = set()

    def __call__(self, path: Path) -> str:
        stem, suffix, k = path.stem, path.suffix, 0
        name = path.name
        while name.lower() in self.used:
            k += 1
            name = f"{stem}_{k}{suffix}"
        self.used.add(name.lower())
        return name


def _xml_escape(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(str(text))


def _write_voc(out: Path, split: str, items: list, classes, names: _Names, images: str, counts: Counter) -> None:
    ids = []
    for path, width, height, ann in items:
        name = names(path)
        counts[_place_image(path, out / "JPEGImages" / name, images)] += 1
        stem = os.path.splitext(name)[0]
        ids.append(stem)
        objects = []
        for box, label, difficult, crowd in zip(ann.boxes, ann.labels, ann.difficult, ann.iscrowd):
            x1, y1, x2, y2 = (float(v) for v in box)
            corners = "".join(f"<{t}>{_number(v)}</{t}>" for t, v in
                              (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)))
            objects.append(f"  <object><name>{_xml_escape(classes[label])}</name><difficult>"
                           f"{int(bool(difficult or crowd))}</difficult><bndbox>{corners}</bndbox></object>\n")
            counts["boxes"] += 1
        xml = (f"<annotation>\n  <filename>{_xml_escape(name)}</filename>\n  <size><width>{width}</width>"
               f"<height>{height}</height><depth>3</depth></size>\n{''.join(objects)}</annotation>\n")
        _write_text(out / "Annotations" / f"{stem}.xml", xml)
    _write_text(out / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids))


def _write_coco(out: Path, split: str, items: list, classes, names: _Names, images: str, counts: Counter) -> None:
    records = []
    for path, width, height, ann in items:
        name = names(path)
        counts[_place_image(path, out / split / name, images)] += 1
        records.append((name, width, height, ann))
        counts["boxes"] += len(ann.boxes)
    write_coco_json(coco_dict(records, classes, description=f"split '{split}' converted by detkit"),
                    out / "annotations" / f"instances_{split}.json")


def _write_yolo(out: Path, split: str, items: list, classes, names: _Names, images: str, counts: Counter) -> None:
    for path, width, height, ann in items:
        name = names(path)
        counts[_place_image(path, out / "images" / split / name, images)] += 1
        lines = []
        for box, label, difficult, crowd in zip(ann.boxes, ann.labels, ann.difficult, ann.iscrowd):
            if difficult or crowd:
                counts["left out (difficult or crowd: YOLO has no such flag)"] += 1
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
            lines.append(f"{int(label)} " + " ".join(f"{v:.10g}" for v in values) + "\n")
            counts["boxes"] += 1
        _write_text(out / "labels" / split / f"{os.path.splitext(name)[0]}.txt", "".join(lines))


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


_WRITERS = {"voc": _write_voc, "coco": _write_coco, "yolo": _write_yolo}


def convert(src: str | os.PathLike, out: str | os.PathLike, *, to: str, src_format: str | None = None,
            splits: Sequence[str] = ("train", "val"), classes: Sequence[str] | None = None,
            img_dir: str | os.PathLike | None = None, images: str = "link") -> str:
    """Write the ``splits`` of the data set ``src`` to ``out`` in layout ``to`` (see the module docstring).

    Returns a summary (counts per split, how images were placed, anything cleaned or left out).
    """
    if to not in FORMATS:
        raise ConfigError(f"--to {to!r}: choose from {', '.join(FORMATS)}")
    if images not in ("link", "copy", "symlink"):
        raise ConfigError(f"images={images!r}: choose from link, copy, symlink")
    fmt = src_format or detect_format(src)
    out = Path(out)
    if out.resolve() == Path(src).resolve():
        raise ConfigError(f"{out}: write the converted data set to another folder than the source")
    if fmt == "voc" and classes is None:
        classes = voc_class_names(src, splits)
    names = _Names()  # VOC keeps every split's images in one folder: names unique across splits
    lines, class_names, written = [], None, []
    for split in splits:
        dataset = open_split(fmt, src, split, classes, img_dir)
        if class_names is not None and tuple(dataset.classes) != class_names:
            raise DataError(f"{src}: split '{split}' has classes {list(dataset.classes)}, split '{splits[0]}' "
                            f"has {list(class_names)}; pass the class list (--classes)")
        class_names = tuple(dataset.classes)
        items, problems, stats = _read_samples(dataset, f"convert {split}")
        if not items:
            raise DataError(f"{src}: no image of split '{split}' could be read"
                            + (f"; first problem: {problems[0]}" if problems else ""))
        counts: Counter = Counter()
        _WRITERS[to](out, split, items, class_names, names if to == "voc" else _Names(), images, counts)
        placed = ", ".join(f"{counts[k]} {k}ed" if k != "copy" else f"{counts[k]} copied"
                           for k in ("link", "copy", "symlink") if counts[k])
        left = {k: v for k, v in counts.items() if k.startswith("left out")}
        lines.append(f"  {split}: {len(items)} images ({placed}), {counts['boxes']} boxes"
                     + "".join(f", {v} boxes {k}" for k, v in left.items()))
        lines += ["  " + line for line in _problem_lines(stats, problems, f"{fmt.upper()} loader")]
        written.append(split)
    if to == "voc":
        _write_text(out / "classes.txt", "".join(f"{name}\n" for name in class_names))
    if to == "yolo":
        import yaml

        spec = {"names": list(class_names), **{split: f"images/{split}" for split in written}}
        _write_text(out / "data.yaml", "# written by detkit data convert; paths are relative to this file\n"
                    + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    head = f"converted {src} ({fmt}) to {out} ({to}), {len(class_names)} classes: {', '.join(class_names[:20])}"
    return "\n".join([head] + lines)
