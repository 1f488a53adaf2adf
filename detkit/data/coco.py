"""COCO-format detection data: one annotation JSON plus a folder of images.

* Category ids may be anything (COCO's run 1..90 with gaps): labels are ``0..C-1`` in order of
  category id; ``cat_ids[label]`` / ``label_to_cat_id`` map back (for results JSON),
  ``cat_id_to_label`` forward. Class names come from the file; ``classes=[...]`` selects a subset by
  name, in that order (annotations of other categories are left out and counted as
  ``excluded_class``; every image is kept).
* ``iscrowd=1`` annotations are kept as ignore regions: ``iscrowd`` True in the target (the COCO
  metric ignores detections matched to them; losses should not treat them as objects).
* ``bbox`` ``[x, y, w, h]`` becomes ``xyxy``; zero or negative width/height -> dropped (``dropped``);
  partly outside the image -> clipped (``clipped``), entirely outside -> dropped (``outside``).
* Images without annotations are kept (negatives).
* ``image_id`` in targets is the COCO image id (so results can be written against the original
  file); ``img_ids[i]`` is the id of sample ``i``.
* Structural problems of the file (not JSON, missing ``images``/``categories``, duplicate ids, an
  annotation pointing to a missing image or category, a malformed ``bbox``) raise
  :class:`~detkit.errors.DataError` naming the file and the annotation id. A file without ``info``
  or ``licenses`` is fine (empty ones are added so pycocotools' ``loadRes`` works on every version).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import numpy as np

from detkit.data.base import Annotation, DetectionDataset
from detkit.errors import ConfigError, DataError

__all__ = ["COCODataset", "load_coco_json"]


def load_coco_json(ann_file: str | os.PathLike) -> dict:
    """Read and validate a COCO detection JSON; returns the dict (``info``/``licenses`` filled in)."""
    path = Path(ann_file)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read annotation file: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file holds a JSON object, found {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: no '{key}' list (is this a COCO detection file?)")
    data.setdefault("annotations", [])  # image-info files (test-dev) have none
    if not isinstance(data["annotations"], list):
        raise DataError(f"{path}: 'annotations' must be a list")
    data.setdefault("info", {})
    data.setdefault("licenses", [])

    image_ids = _unique_ids(data["images"], "images", path)
    category_ids = _unique_ids(data["categories"], "categories", path)
    _unique_ids(data["annotations"], "annotations", path)
    for img in data["images"]:
        if not isinstance(img.get("file_name"), str):
            raise DataError(f"{path}: image id {img['id']} has no 'file_name'")
    for cat in data["categories"]:
        if not isinstance(cat.get("name"), str):
            raise DataError(f"{path}: category id {cat['id']} has no 'name'")
    for ann in data["annotations"]:
        aid = ann["id"]
        if not isinstance(ann.get("image_id"), int) or ann["image_id"] not in image_ids:
            raise DataError(f"{path}: annotation id {aid} refers to image id {ann.get('image_id')!r}, "
                            "which is not in 'images'")
        if not isinstance(ann.get("category_id"), int) or ann["category_id"] not in category_ids:
            raise DataError(f"{path}: annotation id {aid} refers to category id {ann.get('category_id')!r}, "
                            "which is not in 'categories'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        for v in bbox)):
            raise DataError(f"{path}: annotation id {aid} has a malformed bbox {bbox!r} "
                            "(expected [x, y, width, height], four finite numbers)")
    return data


def _unique_ids(items: list, key: str, path: Path) -> set:
    ids = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise DataError(f"{path}: {key}[{i}] has no 'id'")
        if not isinstance(item["id"], int) or isinstance(item["id"], bool):
            raise DataError(f"{path}: {key}[{i}] has id {item['id']!r}; COCO ids are integers")
        ids.append(item["id"])
    seen = set(ids)
    if len(seen) != len(ids):
        dup = next(x for x, n in Counter(ids).items() if n > 1)
        raise DataError(f"{path}: id {dup!r} appears more than once in '{key}'")
    return seen


class COCODataset(DetectionDataset):
    """A COCO detection JSON and its image folder (see the module docstring for the rules).

    Args:
        ann_file: the annotation JSON.
        img_dir: folder the images' ``file_name`` is relative to.
        classes: category names to use, in label order (default: all, in category-id order).
        transforms: a callable on the sample dict, or a transforms config dict.

    Attributes: ``coco`` (the ``pycocotools.coco.COCO`` index, for evaluation), ``img_ids``,
    ``cat_ids``, ``label_to_cat_id``, ``cat_id_to_label``.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        img_dir: str | os.PathLike,
        classes: Sequence[str] | None = None,
        transforms: Callable | dict | None = None,
    ):
        from pycocotools.coco import COCO

        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        data = load_coco_json(self.ann_file)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        if classes is None:
            chosen = categories
        else:
            by_name: dict[str, dict] = {}
            for cat in categories:
                if cat["name"] in by_name:
                    raise DataError(f"{self.ann_file}: category name '{cat['name']}' is used by ids "
                                    f"{by_name[cat['name']]['id']} and {cat['id']}")
                by_name[cat["name"]] = cat
            missing = [name for name in classes if name not in by_name]
            if missing:
                raise ConfigError(f"classes {missing} are not categories of {self.ann_file}; it has: "
                                  f"{', '.join(by_name)}")
            chosen = [by_name[name] for name in classes]
        if not chosen:
            raise DataError(f"{self.ann_file}: 'categories' is empty")
        super().__init__([c["name"] for c in chosen], transforms)
        self.cat_ids: list = [c["id"] for c in chosen]
        self.label_to_cat_id: dict[int, int] = dict(enumerate(self.cat_ids))
        self.cat_id_to_label: dict[int, int] = {cid: label for label, cid in self.label_to_cat_id.items()}

        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
            self.coco.createIndex()
        self.img_ids: list = [img["id"] for img in data["images"]]

    def __len__(self) -> int:
        return len(self.img_ids)

    def image_path(self, index: int) -> Path:
        return self.img_dir / self.coco.imgs[self.img_ids[index]]["file_name"]

    def load_annotation(self, index: int) -> Annotation:
        img_id = self.img_ids[index]
        info = self.coco.imgs[img_id]
        width, height = info.get("width"), info.get("height")
        known_size = isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0
        w_lim, h_lim = (float(width), float(height)) if known_size else (math.inf, math.inf)

        stats = Counter(objects=0, boxes=0, crowd=0, excluded_class=0, clipped=0, outside=0, dropped=0)
        boxes, labels, crowd = [], [], []
        for ann in self.coco.imgToAnns.get(img_id, []):
            stats["objects"] += 1
            label = self.cat_id_to_label.get(ann["category_id"])
            if label is None:
                stats["excluded_class"] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if not (w > 0 and h > 0):
                stats["dropped"] += 1
                continue
            x1, y1, x2, y2 = x, y, x + w, y + h
            c = (min(max(x1, 0.0), w_lim), min(max(y1, 0.0), h_lim),
                 min(max(x2, 0.0), w_lim), min(max(y2, 0.0), h_lim))
            if not (c[2] > c[0] and c[3] > c[1]):
                stats["outside"] += 1
                continue
            if c != (x1, y1, x2, y2):
                stats["clipped"] += 1
            boxes.append(c)
            labels.append(label)
            crowd.append(bool(ann.get("iscrowd", 0)))
        stats["boxes"] = len(boxes)
        stats["crowd"] = sum(crowd)
        return Annotation(
            image_id=img_id,
            file_name=info["file_name"],
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            labels=np.asarray(labels, np.int64),
            iscrowd=np.asarray(crowd, bool),
            width=int(width) if known_size else None,
            height=int(height) if known_size else None,
            stats=dict(stats),
        )
