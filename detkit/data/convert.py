"""Pascal VOC -> COCO JSON, and the one COCO annotation writer detkit has.

``voc_to_coco(root, out, split="train", classes=None)`` reads a VOC-layout split through
:class:`detkit.data.voc.VOCDataset` (the same XML parser training uses, so the JSON says exactly
what training sees) and writes a COCO detection JSON:

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
the returned summary; the conversion fails only when no image can be read.

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

from detkit.data.base import Annotation
from detkit.data.io import image_size
from detkit.errors import DataError

__all__ = ["voc_to_coco", "coco_dict", "write_coco_json"]

logger = logging.getLogger(__name__)

# Counters of detkit.data.voc.parse_voc_xml worth repeating in the summary (everything else is routine).
_NOTABLE_STATS = {
    "unknown_class": "boxes of unknown classes skipped",
    "clipped": "boxes clipped to the image",
    "outside": "boxes outside the image dropped",
    "dropped": "empty/inverted boxes dropped",
    "skipped_difficult": "difficult boxes skipped",
    "size_missing": "files without <size>",
}


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
    items, problems = [], []
    stats: Counter = Counter()
    for index in range(len(dataset)):
        try:
            ann = dataset.load_annotation(index)
            path = dataset.image_path(index)
            height, width = image_size(path)
        except DataError as exc:
            logger.warning("voc2coco: left out sample %d: %s", index, exc)
            problems.append(str(exc))
            continue
        stats.update({k: v for k, v in ann.stats.items() if k in _NOTABLE_STATS})
        items.append((_relative_name(path, image_dir), width, height, ann))
    if not items:
        raise DataError(f"{root}: no image of split '{split}' could be read"
                        + (f"; first problem: {problems[0]}" if problems else ""))
    if description is None:
        description = f"Pascal VOC split '{split}' converted by detkit"
    coco = coco_dict(items, dataset.classes, description=description)
    write_coco_json(coco, out)
    per_class = Counter(a["category_id"] for a in coco["annotations"])
    ignored = sum(1 for a in coco["annotations"] if a.get("ignore"))
    lines = [
        f"wrote {out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes "
        f"({ignored} difficult, kept with ignore=1), {len(dataset.classes)} categories",
        "  per class: " + ", ".join(f"{name} {per_class.get(i + 1, 0)}" for i, name in enumerate(dataset.classes)),
        f"  images: file_name is relative to {image_dir}",
    ]
    noted = {k: v for k, v in stats.items() if v}
    if noted:
        lines.append("  cleaned by the VOC parser: " + ", ".join(f"{_NOTABLE_STATS[k]} {v}" for k, v in noted.items()))
    if problems:
        lines.append(f"  left out {len(problems)} unreadable images:")
        lines += [f"    {p}" for p in problems[:20]]
        if len(problems) > 20:
            lines.append(f"    ... and {len(problems) - 20} more (see the log)")
    return "\n".join(lines)
