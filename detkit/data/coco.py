"""COCO-format detection data: one annotation JSON plus a folder of images.

* Category ids may be anything (COCO's run 1..90 with gaps): labels are ``0..C-1`` in order of
  category id; ``cat_ids[label]`` / ``label_to_cat_id`` map back (for results JSON),
  ``cat_id_to_label`` forward. Class names come from the file; ``classes=[...]`` selects a subset by
  name, in that order (annotations of other categories are left out and counted as
  ``excluded_class``; every image is kept).
* ``iscrowd=1`` annotations are kept as ignore regions: ``iscrowd`` True in the target (the COCO
  metric ignores detections matched to them; losses should not treat them as objects).
* ``bbox`` ``[x, y, w, h]`` becomes ``xyxy``; zero or negative width/height -> dropped (``dropped``);
  partly outside the image -> clipped (``clipped``), entirely outside -> dropped (``outside``). What
  was dropped or clipped is logged once, as a summary, when the data set is built (as for VOC).
* Images without annotations are kept (negatives).
* ``image_id`` in targets is the COCO image id (so results can be written against the original
  file); ``img_ids[i]`` is the id of sample ``i``.
* A ``file_name`` must stay inside ``img_dir``: an absolute path or one that climbs out with ``..``
  (``../../etc/passwd``) makes that sample unusable (a DataError naming it; the verification pass
  excludes it) and the file is never opened.
* Structural problems of the file (not JSON, missing ``images``/``categories``, duplicate ids, an
  annotation pointing to a missing image or category, a malformed ``bbox``) raise
  :class:`~detkit.errors.DataError` naming the file and the annotation id.

**Scale.** COCO train2017 has 118k images and 860k annotations whose polygons make up most of a
448 MB file. The file is parsed with the standard library's C JSON scanner, and an ``object_hook``
reduces each annotation to the five fields detkit uses as soon as it is parsed, so the polygons are
freed at once instead of living as ~40M Python floats; the annotations then become a few numpy
arrays (boxes, labels, flags, one slice per image). No ``pycocotools`` index is built: ``coco``
builds one from the file on first use, for code that wants it. ``tools/bench.py data-scale``
measures the time and memory against ``pycocotools.COCO`` in the same run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import numpy as np

from detkit.data.base import Annotation, DetectionDataset
from detkit.data.paths import require_file, require_folder
from detkit.errors import ConfigError, DataError

__all__ = ["COCODataset", "read_coco_file", "COCOTables", "unsafe_file_name"]

# Per-annotation status codes (what the loader does with it)
_KEEP, _EXCLUDED, _DROPPED, _OUTSIDE = 0, 1, 2, 3


# A polygon ``segmentation`` value, ``[[x, y, ...], ...]``: a list of lists without a "]" inside
# (whitespace anywhere, so compact, COCO-style and indented files all match).
_POLYGONS = re.compile(rb'"segmentation":\s*\[\s*\[[^\]]*\](?:\s*,\s*\[[^\]]*\])*\s*\]')


def _drop_polygons(raw: bytes) -> bytes:
    """``raw`` with every polygon ``segmentation`` replaced by ``[]`` (detkit reads boxes only).

    The polygons are three quarters of COCO's bytes and 40M numbers; cutting them out with one
    regular expression (in C) before parsing is what keeps a COCO-sized file within seconds and a few
    hundred MB. Only well-formed ``[[...],...]`` values are touched; anything else is parsed as it is.
    """
    return _POLYGONS.sub(b'"segmentation":[]', raw)


def _compact(obj: dict):
    """``object_hook``: an annotation becomes ``(id, image_id, category_id, bbox, iscrowd)``.

    Annotations are the only COCO objects with both ``bbox`` and ``image_id``; anything else (images,
    categories, an annotation missing one of those keys: reported later) stays a dict. Frees what is
    left of ``segmentation`` (crowd RLE strings) as it is parsed.
    """
    if "bbox" in obj and "image_id" in obj:
        return (obj.get("id"), obj["image_id"], obj.get("category_id"), obj["bbox"], obj.get("iscrowd", 0))
    return obj


class COCOTables:
    """The parts of a COCO detection file detkit uses, validated, as lists and numpy arrays."""

    def __init__(self, path: Path, images: list, categories: list, ann_ids: np.ndarray, ann_image_ids: np.ndarray,
                 ann_cat_ids: np.ndarray, ann_bbox: np.ndarray, ann_crowd: np.ndarray):
        self.path = path
        self.images = images  # list of dicts: id, file_name, width?, height?
        self.categories = categories
        self.ann_ids, self.ann_image_ids, self.ann_cat_ids = ann_ids, ann_image_ids, ann_cat_ids
        self.ann_bbox, self.ann_crowd = ann_bbox, ann_crowd


def _bbox_array(ids: tuple, boxes: tuple, path: Path) -> np.ndarray:
    try:
        # numpy would turn "3" or True into a number: only int and float are numbers here
        if not {type(v) for box in boxes for v in box} <= {int, float}:
            raise TypeError
        bbox = np.array(boxes, dtype=np.float64).reshape(-1, 4) if boxes else np.zeros((0, 4))
        if len(bbox) != len(boxes):
            raise ValueError
    except (ValueError, TypeError):
        bbox = None
    bad = None
    if bbox is None:
        bad = next(k for k, box in enumerate(boxes) if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)))
    elif not np.isfinite(bbox).all():
        bad = int(np.flatnonzero(~np.isfinite(bbox).all(axis=1))[0])
    if bad is not None:
        raise DataError(f"{path}: annotation id {ids[bad]} has a malformed bbox {boxes[bad]!r} "
                        "(expected [x, y, width, height], four finite numbers)")
    return bbox


def _int_column(values: tuple, known: set, what: str, ids: tuple, path: Path) -> np.ndarray:
    """``values`` (ids of images / categories) as int64; DataError naming the annotation otherwise."""
    ok = {type(v) for v in values} <= {int}
    arr = np.asarray(values, np.int64) if ok else None
    if ok and len(arr):
        ok = bool(np.isin(arr, np.fromiter(known, np.int64, len(known))).all())
    if not ok:
        k = next(k for k, v in enumerate(values) if type(v) is not int or v not in known)
        raise DataError(f"{path}: annotation id {ids[k]} refers to {what} id {values[k]!r}, "
                        f"which is not in '{'images' if what == 'image' else 'categories'}'")
    return arr


def read_coco_file(ann_file: str | os.PathLike) -> COCOTables:
    """Read and validate a COCO detection JSON (see the module docstring on memory)."""
    path = require_file(ann_file, "COCO annotation file")
    try:
        with open(path, "rb") as f:
            data = json.loads(_drop_polygons(f.read()), object_hook=_compact)
    except OSError as exc:
        raise DataError(f"{path}: cannot read annotation file: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file holds a JSON object, found {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: no '{key}' list (is this a COCO detection file?)")
    anns = data.get("annotations", [])  # image-info files (test-dev) have none
    if not isinstance(anns, list):
        raise DataError(f"{path}: 'annotations' must be a list")
    images, categories = data["images"], data["categories"]
    image_ids = _unique_ids([x.get("id") if isinstance(x, dict) else None for x in images], images, "images", path)
    category_ids = _unique_ids([x.get("id") if isinstance(x, dict) else None for x in categories], categories,
                               "categories", path)
    if not {type(img.get("file_name")) for img in images} <= {str}:
        img = next(img for img in images if not isinstance(img.get("file_name"), str))
        raise DataError(f"{path}: image id {img['id']} has no 'file_name'")
    for cat in categories:
        if not isinstance(cat.get("name"), str):
            raise DataError(f"{path}: category id {cat['id']} has no 'name'")
    if not {type(a) for a in anns} <= {tuple}:
        i, ann = next((i, a) for i, a in enumerate(anns) if not isinstance(a, tuple))
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotations[{i}] is not an object")
        what = "has no 'image_id'" if "bbox" in ann else "has no 'bbox'"
        raise DataError(f"{path}: annotations[{i}] (id {ann.get('id')!r}) {what}")
    ids, image_of, category_of, boxes, crowd = zip(*anns) if anns else ((),) * 5  # columns, in C
    _unique_ids(ids, None, "annotations", path)
    return COCOTables(path, images, categories, np.asarray(ids, np.int64),
                      _int_column(image_of, image_ids, "image", ids, path),
                      _int_column(category_of, category_ids, "category", ids, path),
                      _bbox_array(ids, boxes, path), np.asarray([bool(c) for c in crowd], bool))


def _unique_ids(ids, items, key: str, path: Path) -> set:
    if None in ids:
        i = ids.index(None)
        raise DataError(f"{path}: {key}[{i}] has no 'id'")
    if not {type(v) for v in ids} <= {int}:
        i = next(i for i, v in enumerate(ids) if type(v) is not int)
        raise DataError(f"{path}: {key}[{i}] has id {ids[i]!r}; COCO ids are integers")
    seen = set(ids)
    if len(seen) != len(ids):
        dup = next(x for x, n in Counter(ids).items() if n > 1)
        raise DataError(f"{path}: id {dup!r} appears more than once in '{key}'")
    return seen


def unsafe_file_name(name: str) -> bool:
    """True when ``name`` would leave the image folder: absolute, a drive, or climbing out with ``..``."""
    norm = posixpath.normpath(name.replace("\\", "/"))
    return (norm.startswith("/") or norm == ".." or norm.startswith("../") or
            (len(norm) > 1 and norm[1] == ":"))


class COCODataset(DetectionDataset):
    """A COCO detection JSON and its image folder (see the module docstring for the rules).

    Args:
        ann_file: the annotation JSON.
        img_dir: folder the images' ``file_name`` is relative to.
        classes: category names to use, in label order (default: all, in category-id order).
        transforms: a callable on the sample dict, or a transforms config dict.

    Attributes: ``img_ids``, ``cat_ids``, ``label_to_cat_id``, ``cat_id_to_label``, ``stats``
    (summed counters), ``coco`` (a ``pycocotools.coco.COCO`` index of the file, built on first use).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        img_dir: str | os.PathLike,
        classes: Sequence[str] | None = None,
        transforms: Callable | dict | None = None,
    ):
        self.ann_file = Path(ann_file)
        tables = read_coco_file(self.ann_file)
        self.img_dir = require_folder(img_dir, "COCO image folder (img_dir)")
        chosen = self._choose_categories(tables.categories, classes)
        super().__init__([c["name"] for c in chosen], transforms)
        self.cat_ids: list = [c["id"] for c in chosen]
        self.label_to_cat_id: dict[int, int] = dict(enumerate(self.cat_ids))
        self.cat_id_to_label: dict[int, int] = {cid: label for label, cid in self.label_to_cat_id.items()}
        self._coco = None

        images = tables.images
        self.img_ids: list = [img["id"] for img in images]
        self._file_names: list[str] = [img["file_name"] for img in images]
        self._sizes = _sizes(images)  # (w, h); NaN: not stated
        # Only names with "..", a leading slash or a drive letter can leave img_dir: check those.
        self._unsafe = {i for i, name in enumerate(self._file_names)
                        if (".." in name or name[:1] in "/\\" or name[1:2] == ":") and unsafe_file_name(name)}
        self._index_annotations(tables)
        self.stats = self._total_stats()
        self.log_stats("COCO", str(self.ann_file), self.stats)

    def _choose_categories(self, categories: list, classes) -> list:
        categories = sorted(categories, key=lambda c: c["id"])
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
        return chosen

    def _index_annotations(self, t: COCOTables) -> None:
        """Annotations sorted by image (file order kept within one), cleaned, as flat arrays."""
        ids = np.asarray(self.img_ids, np.int64)
        order_ids = np.argsort(ids, kind="stable")
        image_index = order_ids[np.searchsorted(ids[order_ids], t.ann_image_ids)] if len(ids) else t.ann_image_ids
        order = np.argsort(image_index, kind="stable")
        image_index = image_index[order]
        counts = np.bincount(image_index, minlength=len(ids)) if len(order) else np.zeros(len(ids), np.int64)
        self._start = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64) if len(ids) else counts
        self._count = counts.astype(np.int64)

        cat_sorted = np.asarray(sorted(self.cat_id_to_label), np.int64)
        label_of = np.asarray([self.cat_id_to_label[c] for c in cat_sorted.tolist()], np.int64)
        cats = t.ann_cat_ids[order]
        pos = np.clip(np.searchsorted(cat_sorted, cats), 0, max(len(cat_sorted) - 1, 0))
        known = cat_sorted[pos] == cats if len(cat_sorted) else np.zeros(len(cats), bool)
        labels = np.where(known, label_of[pos] if len(label_of) else 0, -1)

        x, y, w, h = t.ann_bbox[order].T
        size = self._sizes[image_index]
        w_lim = np.where(np.isfinite(size[:, 0]), size[:, 0], np.inf)
        h_lim = np.where(np.isfinite(size[:, 1]), size[:, 1], np.inf)
        box = np.stack([x, y, x + w, y + h], axis=1)
        clipped_box = np.stack([np.clip(box[:, 0], 0, w_lim), np.clip(box[:, 1], 0, h_lim),
                                np.clip(box[:, 2], 0, w_lim), np.clip(box[:, 3], 0, h_lim)], axis=1)
        status = np.full(len(order), _KEEP, np.int8)
        status[(clipped_box[:, 2] <= clipped_box[:, 0]) | (clipped_box[:, 3] <= clipped_box[:, 1])] = _OUTSIDE
        status[~((w > 0) & (h > 0))] = _DROPPED
        status[labels < 0] = _EXCLUDED
        self._boxes = clipped_box.astype(np.float32)
        self._clipped = (status == _KEEP) & (clipped_box != box).any(axis=1)
        self._labels = labels.astype(np.int32)
        self._crowd = t.ann_crowd[order]
        self._status = status
        self._count_per_image(image_index, len(ids))

    _STAT_KEYS = ("objects", "boxes", "crowd", "excluded_class", "clipped", "outside", "dropped")

    def _count_per_image(self, image_index: np.ndarray, n_images: int) -> None:
        """Per-image counters (one row per image, columns ``_STAT_KEYS``), computed once for all images."""
        keep = self._status == _KEEP
        columns = [np.ones(len(keep), bool), keep, keep & self._crowd, self._status == _EXCLUDED, self._clipped,
                   self._status == _OUTSIDE, self._status == _DROPPED]
        self._image_stats = np.stack([np.bincount(image_index, weights=c, minlength=n_images) for c in columns],
                                     axis=1).astype(np.int64) if n_images else np.zeros((0, len(columns)), np.int64)

    def _total_stats(self) -> Counter:
        return Counter(dict(zip(self._STAT_KEYS, self._image_stats.sum(axis=0).tolist())))

    # -- DetectionDataset ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.img_ids)

    def image_path(self, index: int) -> Path:
        if index in self._unsafe:
            raise DataError(self._unsafe_message(index))
        return self.img_dir / self._file_names[index]

    def _unsafe_message(self, index: int) -> str:
        return (f"{self.ann_file}: image id {self.img_ids[index]} has file_name "
                f"{self._file_names[index]!r}, which leaves img_dir ({self.img_dir}); refused")

    def load_annotation(self, index: int) -> Annotation:
        if index in self._unsafe:
            raise DataError(self._unsafe_message(index))
        lo = int(self._start[index])
        hi = lo + int(self._count[index])
        keep = self._status[lo:hi] == _KEEP
        width, height = self._sizes[index].tolist()
        return Annotation(
            image_id=self.img_ids[index],
            file_name=self._file_names[index],
            boxes=self._boxes[lo:hi][keep],
            labels=self._labels[lo:hi][keep].astype(np.int64),
            iscrowd=self._crowd[lo:hi][keep],
            width=int(width) if width == width else None,  # NaN: the file states no usable size
            height=int(height) if height == height else None,
            stats=dict(zip(self._STAT_KEYS, self._image_stats[index].tolist())),
        )

    def _select(self, keep: list[int]) -> None:
        keep_arr = np.asarray(keep, np.int64)
        self.img_ids = [self.img_ids[i] for i in keep]
        self._file_names = [self._file_names[i] for i in keep]
        self._sizes, self._start, self._count = self._sizes[keep_arr], self._start[keep_arr], self._count[keep_arr]
        self._image_stats = self._image_stats[keep_arr]
        new_index = {old: new for new, old in enumerate(keep)}
        self._unsafe = {new_index[i] for i in self._unsafe if i in new_index}

    # -- extras --------------------------------------------------------------------------------
    @property
    def coco(self):
        """A ``pycocotools.coco.COCO`` index of the whole annotation file (built on first use)."""
        if self._coco is None:
            from pycocotools.coco import COCO

            data = json.loads(self.ann_file.read_bytes())
            data.setdefault("annotations", [])
            data.setdefault("info", {})  # pycocotools' loadRes copies it on some versions
            data.setdefault("licenses", [])
            coco = COCO()
            coco.dataset = data
            with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
                coco.createIndex()
            self._coco = coco
        return self._coco


def _sizes(images: list) -> np.ndarray:
    """``[N, 2]`` float ``(width, height)`` of the images; NaN where missing, not a number or not > 0."""
    columns = []
    for key in ("width", "height"):
        values = [img.get(key) for img in images]
        if {type(v) for v in values} <= {int, float}:
            column = np.asarray(values, np.float64)
        else:  # some missing (None) or odd: the slow way, per value
            column = np.asarray([v if type(v) in (int, float) else np.nan for v in values], np.float64)
        columns.append(column)
    sizes = np.stack(columns, axis=1) if images else np.zeros((0, 2))
    sizes[~(np.isfinite(sizes).all(axis=1) & (sizes > 0).all(axis=1))] = np.nan
    return sizes
