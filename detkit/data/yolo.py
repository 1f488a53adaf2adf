"""YOLO-format data sets (the ultralytics layout), read as they are.

Layout::

    data.yaml                 path: <data set root>      (optional; default: the yaml's folder)
                              train: images/train        (a folder, a .txt list of images, or a list of these)
                              val: images/val
                              test: ...                  (optional)
                              names: [cat, dog]          (or {0: cat, 1: dog}; nc optional)
    images/train/x.jpg
    labels/train/x.txt        one line per object: ``class cx cy w h``, normalised to 0..1

``dict(type="yolo", root=..., split="train")``: ``root`` is the ``data.yaml`` file, or a folder that
holds one, or a bare folder with ``images/<split>/`` (then ``classes`` names the class ids).

* ``path`` in the yaml: absolute, or relative to the yaml's folder (then the current directory and
  ``$DETKIT_DATA`` are tried, as ultralytics tries its datasets folder); the error lists every place
  looked. ``train``/``val``/``test`` are relative to ``path``; a folder is searched recursively for
  images; in a ``.txt`` list, relative lines (``./images/x.jpg``) are relative to the list's folder.
* The label file of ``.../images/.../x.jpg`` is ``.../labels/.../x.txt`` (the last ``images`` folder
  of the path replaced, as ultralytics does).
* ``names`` are the classes; ``classes=[...]`` selects a subset by name, in that order (boxes of other
  classes are left out, counted as ``excluded_class``).

Messy files are handled as the VOC and COCO loaders handle theirs, and every change is counted in
``Annotation.stats`` (summed in ``stats``, logged once when the data set is built, reported by
``detkit check-data``):

* a missing label file -> the image is a negative (``missing_label``); an empty one too (the usual
  way to mark negatives, not counted);
* a class id that is not an integer in ``0..nc-1`` -> the box is skipped (``unknown_class``, and
  ``unknown_class:<id>``), or a DataError with ``strict=True``;
* a box partly outside ``0..1`` -> clipped (``clipped``); entirely outside -> dropped (``outside``);
  zero or negative width/height -> dropped (``dropped``); a repeated line -> dropped (``duplicate``);
* a line with more than 5 numbers is a segmentation polygon (``class x1 y1 x2 y2 ...``): its bounding
  box is used, as ultralytics does for detection;
* a line that is not numbers, or has the wrong count -> the whole file is unusable (a DataError naming
  file and line; the verification pass excludes the sample).

Boxes are normalised against the image as displayed (after EXIF orientation), as ultralytics writes
them; they are turned into pixels with the decoded image's size (``load_annotation`` reads the size
from the image header, or takes the one the verification pass measured).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

import numpy as np

from detkit.data.base import Annotation, DetectionDataset
from detkit.data.io import IMAGE_EXTENSIONS, image_size
from detkit.data.paths import DATA_ENV, not_a, require_folder
from detkit.errors import ConfigError, DataError

__all__ = ["YOLODataset", "read_data_yaml", "parse_yolo_labels", "label_path"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# data.yaml
# ----------------------------------------------------------------------------------------------
def read_data_yaml(path: str | os.PathLike) -> dict:
    """The yaml as a dict (``names`` normalised to a list); DataError naming the file otherwise."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a YOLO data.yaml holds a mapping (path, train, val, names)")
    names = data.get("names")
    if isinstance(names, Mapping):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(f"{path}: 'names' keys must be class ids 0..nc-1, got {list(names)}") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise DataError(f"{path}: 'names' must number the classes 0..{len(by_id) - 1}, got ids {sorted(by_id)}")
        names = [by_id[i] for i in range(len(by_id))]
    elif names is not None and not (isinstance(names, list) and all(isinstance(n, (str, int)) for n in names)):
        raise DataError(f"{path}: 'names' must be a list of class names or a dict {{id: name}}")
    if names is not None:
        names = [str(n) for n in names]
        nc = data.get("nc")
        if nc is not None and nc != len(names):
            raise DataError(f"{path}: nc is {nc} but 'names' lists {len(names)} classes")
    data["names"] = names
    return data


def _dataset_root(yaml_path: Path, value) -> Path:
    """Where ``path:`` points: absolute, else the yaml's folder, the current directory, $DETKIT_DATA."""
    if value in (None, ""):
        return yaml_path.parent
    path = Path(str(value)).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [yaml_path.parent / path, Path.cwd() / path]
        if os.environ.get(DATA_ENV):
            candidates.append(Path(os.environ[DATA_ENV]).expanduser() / path)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(f"{yaml_path}: 'path: {value}' is not a folder; looked in "
                    + ", ".join(str(c) for c in candidates))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_of(entry: Path, yaml_path: Path | None, key: str) -> list[Path]:
    """Image files of one ``train``/``val`` entry: a folder (recursive) or a ``.txt`` list."""
    if entry.is_dir():
        found = []
        for folder, dirs, files in os.walk(entry):
            dirs.sort()
            found += [Path(folder) / f for f in sorted(files) if _is_image(f)]
        return found
    if entry.is_file() and entry.suffix == ".txt":
        lines = [line.strip() for line in entry.read_text(encoding="utf-8-sig").splitlines()]
        out = []
        for line in lines:
            if not line:
                continue
            p = Path(line[2:] if line.startswith("./") else line).expanduser()
            out.append(p if p.is_absolute() else entry.parent / p)
        return out
    where = f"{yaml_path}: '{key}'" if yaml_path else key
    raise DataError(f"{where} -> {entry} is neither a folder of images nor a .txt list of images (it does "
                    f"not exist)" if not entry.exists() else f"{where} -> {entry} is not a folder or a .txt list")


def label_path(image: str | os.PathLike) -> Path:
    """``.../images/.../x.jpg`` -> ``.../labels/.../x.txt`` (the last ``images`` folder replaced)."""
    parts = list(Path(image).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


# ----------------------------------------------------------------------------------------------
# One label file
# ----------------------------------------------------------------------------------------------
def parse_yolo_labels(path: Path, num_ids: int, label_of: np.ndarray | None = None, strict: bool = False
                      ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read and clean one label file; returns normalised xyxy boxes, labels and the stats counters.

    ``num_ids`` class ids are valid (``0..num_ids-1``); ``label_of[id]`` is the label of an id
    (``-1``: a class that is not selected). A missing file is a negative (``missing_label``).
    """
    stats = Counter(objects=0, boxes=0, unknown_class=0, excluded_class=0, clipped=0, outside=0, dropped=0,
                    duplicate=0, missing_label=0)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        stats["missing_label"] = 1
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), dict(stats)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read label file: {exc}") from None
    rows, seen = [], set()
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        try:
            values = [float(w) for w in words]
        except ValueError:
            raise DataError(f"{path}, line {number}: not numbers: {line.strip()!r}") from None
        if len(values) < 5 or (len(values) > 5 and (len(values) - 1) % 2):
            raise DataError(f"{path}, line {number}: expected 'class cx cy w h' (or 'class x1 y1 x2 y2 ...' "
                            f"for a polygon), got {len(values)} numbers")
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"{path}, line {number}: not finite: {line.strip()!r}")
        stats["objects"] += 1
        key = tuple(values)
        if key in seen:
            stats["duplicate"] += 1
            continue
        seen.add(key)
        cls = values[0]
        if not cls.is_integer() or not 0 <= cls < num_ids:
            if strict:
                raise DataError(f"{path}, line {number}: class id {words[0]} is not one of 0..{num_ids - 1}; "
                                "strict=False skips such boxes")
            stats["unknown_class"] += 1
            stats[f"unknown_class:{words[0]}"] += 1
            continue
        label = int(cls) if label_of is None else int(label_of[int(cls)])
        if label < 0:
            stats["excluded_class"] += 1
            continue
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            if not (w > 0 and h > 0):
                stats["dropped"] += 1
                continue
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:  # polygon: its bounding box
            xs, ys = values[1::2], values[2::2]
            box = (min(xs), min(ys), max(xs), max(ys))
            if not (box[2] > box[0] and box[3] > box[1]):
                stats["dropped"] += 1
                continue
        clipped = tuple(min(max(v, 0.0), 1.0) for v in box)
        if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
            stats["outside"] += 1
            continue
        if clipped != box:
            stats["clipped"] += 1
        rows.append((*clipped, label))
    stats["boxes"] = len(rows)
    array = np.asarray(rows, np.float64).reshape(-1, 5)
    return array[:, :4].astype(np.float32), array[:, 4].astype(np.int64), dict(stats)


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------
class YOLODataset(DetectionDataset):
    """An ultralytics-layout data set (see the module docstring).

    Args:
        root: the ``data.yaml``, a folder holding ``data.yaml``, or a folder with ``images/<split>/``.
        split: the yaml key to read (``train``, ``val``, ``test``) or, without a yaml, the
            ``images/<split>`` folder.
        classes: class names in label order (default: the yaml's ``names``); a subset of the yaml's
            names selects classes, without a yaml they name the class ids ``0..C-1``.
        transforms: a callable on the sample dict, or a transforms config dict.
        strict: a class id outside ``0..nc-1`` is an error instead of a counted skip.

    ``image_id`` is the index in the data set as built (``ids[i]``); ``image_paths[i]`` /
    ``label_paths[i]`` are the files of sample ``i``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", classes: Sequence[str] | None = None,
                 transforms: Callable | dict | None = None, strict: bool = False):
        root = Path(root)
        yaml_path = root if root.suffix in (".yaml", ".yml") else root / "data.yaml"
        if root.suffix not in (".yaml", ".yml"):
            require_folder(root, "YOLO root")
        if yaml_path.is_file():
            spec = read_data_yaml(yaml_path)
            base = _dataset_root(yaml_path, spec.get("path"))
            entries = spec.get(split)
            if not entries:
                keys = [k for k in ("train", "val", "test") if spec.get(k)]
                raise DataError(f"{yaml_path}: no '{split}' entry; it has {', '.join(keys) or 'none'}")
            names = spec["names"]
            self.yaml_path = yaml_path
        elif root.suffix in (".yaml", ".yml"):
            raise DataError(f"YOLO data.yaml not found: {root}")
        else:
            if not (root / "images" / split).is_dir():
                raise not_a(root, "YOLO", f"data.yaml and no images/{split}/ folder")
            base, entries, names, self.yaml_path = root, f"images/{split}", None, None
        file_names = names
        if classes is None:
            if names is None:
                raise ConfigError(f"{root}: no data.yaml with 'names', so the class names must be given "
                                  "(data.classes or classes=[...], in class-id order)")
            classes = names
        super().__init__(classes, transforms)
        duplicates = sorted(n for n, k in Counter(self.classes).items() if k > 1)
        if duplicates:
            raise ConfigError(f"classes lists {', '.join(map(repr, duplicates))} more than once")
        if file_names is None:
            file_names = list(self.classes)
        unknown = [c for c in self.classes if c not in file_names]
        if unknown:
            raise ConfigError(f"classes {unknown} are not in {yaml_path}'s names: {', '.join(file_names)}")
        label_of = np.array([self.classes.index(n) if n in self.classes else -1 for n in file_names], np.int64)
        self.root, self.split, self.strict = base, split, strict

        self.image_paths: list[Path] = []
        for entry in entries if isinstance(entries, list) else [entries]:
            path = Path(str(entry)).expanduser()
            self.image_paths += _images_of(path if path.is_absolute() else base / path, self.yaml_path, split)
        self.label_paths = [label_path(p) for p in self.image_paths]
        self.ids = list(range(len(self.image_paths)))  # image_id: the index at build time (stays unique)
        self._boxes, self._labels, self._stats, self._errors = [], [], [], {}
        self.stats: Counter = Counter()
        for index, lpath in enumerate(self.label_paths):
            try:
                boxes, labels, stats = parse_yolo_labels(lpath, len(file_names), label_of, strict)
            except DataError as exc:
                self._errors[index] = str(exc)
                boxes, labels, stats = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), {}
            self._boxes.append(boxes)
            self._labels.append(labels)
            self._stats.append(stats)
            self.stats.update(stats)
        self._sizes: dict[int, tuple[int, int]] = {}
        self.log_stats("YOLO", str(self.yaml_path or base), self.stats)
        if self._errors:
            logger.warning("YOLO data: %d label file(s) unusable (first: %s); the verification pass excludes "
                           "those samples", len(self._errors), next(iter(self._errors.values())))

    # -- DetectionDataset ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.image_paths)

    def image_path(self, index: int) -> Path:
        return self.image_paths[index]

    def note_image_size(self, index: int, size: tuple[int, int]) -> None:
        self._sizes[index] = (int(size[0]), int(size[1]))

    def load_annotation(self, index: int) -> Annotation:
        size = self._sizes.get(index)
        if size is None and index not in self._errors:
            size = self._sizes[index] = tuple(image_size(self.image_paths[index]))
        return self._annotation(index, size)

    def _annotation(self, index: int, size) -> Annotation:
        if index in self._errors:
            raise DataError(self._errors[index])
        height, width = size
        boxes = self._boxes[index] * np.array([width, height, width, height], np.float32)
        return Annotation(image_id=self.ids[index], file_name=self.image_paths[index].name, boxes=boxes,
                          labels=self._labels[index].copy(), width=int(width), height=int(height),
                          stats=dict(self._stats[index]))

    def raw_sample(self, index: int) -> dict:
        # The decoded image's own size scales the boxes (no header read per sample).
        image = self.load_image(index)
        return self.make_sample(index, self._annotation(index, image.shape[:2]), image)

    def _select(self, keep: list[int]) -> None:
        def pick(items):
            return [items[i] for i in keep]

        self.image_paths, self.label_paths, self.ids = pick(self.image_paths), pick(self.label_paths), pick(self.ids)
        self._boxes, self._labels, self._stats = pick(self._boxes), pick(self._labels), pick(self._stats)
        new_index = {old: new for new, old in enumerate(keep)}
        self._errors = {new_index[i]: m for i, m in self._errors.items() if i in new_index}
        self._sizes = {new_index[i]: s for i, s in self._sizes.items() if i in new_index}

    @property
    def errors(self) -> dict[int, str]:
        """Samples whose label file could not be used: index -> message (raised when loaded)."""
        return dict(self._errors)

