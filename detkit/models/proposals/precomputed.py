"""Proposals read from a file, as the R-CNN and Fast R-CNN authors distributed theirs.

R-CNN and Fast R-CNN shipped selective-search boxes per image (``.mat`` files) and trained from
them; :class:`PrecomputedProposals` reads the same information from a pickle-free file, so proposals
made by any tool (or once, offline, by an expensive method) drive the ``rcnn`` detector.

File format (``detkit-proposals-v1``); boxes are **xyxy, 0-based, continuous pixel coordinates of the
original image** (the coordinates of detkit's annotations; a VOC-style 1-based inclusive box
``(x1, y1, x2, y2)`` is ``(x1 - 1, y1 - 1, x2, y2)`` here), best-ranked first:

* ``.npz`` (what :func:`write_proposals` writes; loads with ``allow_pickle=False``)::

      format   = "detkit-proposals-v1"        0-d unicode array
      names    = ["000005.jpg", ...]          unicode [I], one key per image
      offsets  = [0, 2000, 3871, ...]         int64 [I + 1]; image i owns boxes[offsets[i]:offsets[i+1]]
      boxes    = [[x1, y1, x2, y2], ...]      float32 [T, 4]

* ``.json``: ``{"format": "detkit-proposals-v1", "proposals": {"000005.jpg": [[x1, y1, x2, y2], ...]}}``
  (handy for a few images or another language's tools; large sets belong in ``.npz``).

Keys. An image is looked up by, in this order: ``meta["file_name"]``, the file name of
``meta["path"]``, those two without their extension, and ``str(image_id)``. So a file keyed by
``"000005.jpg"``, ``"000005"`` or the data set's image id all work. An image without an entry raises
:class:`~detkit.errors.DataError` naming the image and the file (never an empty proposal list: a
silently empty image would train on ground truth alone and detect nothing at test time).

Coordinates at the model's input. The detector's input is the image after the data pipeline's
resize / letterbox, recorded in the meta (``x_input = x_orig * sx + left``); the stored boxes are
mapped with that record and clipped to the input. Training augmentation (flips, crops, affine) is
*not* recorded, so an augmented image (``meta["augmented"]``) cannot use precomputed boxes: that is a
:class:`~detkit.errors.ConfigError` telling to drop the augmentation (the papers trained without it,
apart from flips with flipped proposal files) or to use a generator that runs on the input image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from detkit.errors import ConfigError, DataError
from detkit.models.proposals import check_limits

__all__ = ["FORMAT", "PrecomputedProposals", "read_proposals", "write_proposals"]

FORMAT = "detkit-proposals-v1"
_SUFFIXES = (".npz", ".json")


# ----------------------------------------------------------------------------------------------
# Reading and writing the file
# ----------------------------------------------------------------------------------------------


def _check_boxes(boxes, where: str) -> np.ndarray:
    try:
        array = np.asarray(boxes, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: boxes are not numbers ({exc})") from None
    if array.size == 0:
        return np.zeros((0, 4), np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise DataError(f"{where}: boxes must be [P, 4] xyxy, got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise DataError(f"{where}: boxes contain NaN or infinite values")
    bad = (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{where}: box {first} {array[first].tolist()} has x2 < x1 or y2 < y1 "
            f"(boxes must be xyxy; xywh or yxyx files need converting)"
        )
    return array


def write_proposals(path: str | os.PathLike, proposals: Mapping[str, np.ndarray]) -> Path:
    """Write ``{image key: float [P, 4] xyxy original-image boxes}`` to ``path`` (``.npz`` or ``.json``).

    Keys are file names (``"000005.jpg"``), stems or image ids (see the module docstring). Boxes
    are validated (shape, finite, x2 >= x1, y2 >= y1). The file is written to a temporary name and
    renamed, so a crash never leaves half a file. Returns the path.
    """
    path = Path(path)
    if path.suffix.lower() not in _SUFFIXES:
        raise ConfigError(f"{path}: proposal files end in .npz or .json")
    names = [str(k) for k in proposals]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: two entries have the same key after conversion to text")
    arrays = [_check_boxes(proposals[k], f"{path}: entry '{n}'") for k, n in zip(proposals, names)]
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp" + path.suffix)
    if path.suffix.lower() == ".npz":
        offsets = np.zeros(len(arrays) + 1, np.int64)
        offsets[1:] = np.cumsum([len(a) for a in arrays])
        boxes = np.concatenate(arrays) if arrays else np.zeros((0, 4), np.float32)
        np.savez(temp, format=np.array(FORMAT), names=np.array(names, dtype=str), offsets=offsets, boxes=boxes)
    else:
        content = {"format": FORMAT, "proposals": {n: a.tolist() for n, a in zip(names, arrays)}}
        temp.write_text(json.dumps(content))
    os.replace(temp, path)
    return path


def read_proposals(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a proposal file into ``{key: float32 [P, 4]}``; a bad file raises DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"proposal file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".json":
        return _read_json(path)
    raise DataError(f"{path}: unknown proposal file type '{path.suffix}' (use .npz or .json)")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {k: data[k] for k in data.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise DataError(f"{path}: not a detkit proposal file ({exc})") from None
    except Exception as exc:  # zip / header corruption
        raise DataError(f"{path}: cannot read the .npz file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("names", "offsets", "boxes") if k not in contents]
    if missing:
        raise DataError(f"{path}: not a detkit proposal file: missing array(s) {', '.join(missing)} "
                        f"(found: {', '.join(sorted(contents)) or 'none'}); write it with write_proposals()")
    _check_format(path, str(contents["format"]) if "format" in contents else None)
    names, offsets = contents["names"], contents["offsets"]
    boxes = _check_boxes(contents["boxes"], str(path))
    if names.ndim != 1 or offsets.shape != (len(names) + 1,) or offsets.dtype.kind not in "iu":
        raise DataError(f"{path}: 'offsets' must be integers [len(names) + 1] = [{len(names) + 1}], "
                        f"got {offsets.dtype} {tuple(offsets.shape)}")
    if len(offsets) and (offsets[0] != 0 or offsets[-1] != len(boxes) or (np.diff(offsets) < 0).any()):
        raise DataError(f"{path}: 'offsets' must rise from 0 to the number of boxes ({len(boxes)})")
    return {str(n): boxes[offsets[i]:offsets[i + 1]] for i, n in enumerate(names.tolist())}


def _read_json(path: Path) -> dict[str, np.ndarray]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the JSON file ({exc})") from None
    if not isinstance(content, Mapping) or not isinstance(content.get("proposals"), Mapping):
        raise DataError(f"{path}: expected {{\"format\": \"{FORMAT}\", "
                        f"\"proposals\": {{image: [[x1, y1, x2, y2], ...]}}}}")
    _check_format(path, content.get("format"))
    return {str(k): _check_boxes(v, f"{path}: entry '{k}'") for k, v in content["proposals"].items()}


def _check_format(path: Path, found) -> None:
    if found is not None and found != FORMAT:
        raise DataError(f"{path}: format '{found}' is not '{FORMAT}', the one this detkit reads")


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------


def _lookup_keys(meta: Mapping) -> list[str]:
    keys = []
    for name in (meta.get("file_name"), os.path.basename(str(meta["path"])) if meta.get("path") else None):
        if name:
            keys += [str(name), os.path.splitext(str(name))[0]]
    if meta.get("image_id") is not None:
        keys.append(str(meta["image_id"]))
    return list(dict.fromkeys(keys))  # unique, in order


class PrecomputedProposals:
    """Proposals looked up per image in a file (format and keys: see the module docstring).

    Args:
        path: the ``.npz`` or ``.json`` proposal file (read once, when the generator is built).
        max_proposals: keep the first this many of each image (``None``: all).
        min_size: drop boxes narrower or lower than this many pixels *at the model input*.

    ``generator(image, meta)`` returns the image's boxes mapped to the pixels of ``image`` (the
    model's input) with ``meta``'s resize record, clipped to it. ``meta`` must name the image
    (``file_name`` / ``path`` / ``image_id``): the data sets' targets do; a bare image array does not,
    so precomputed proposals serve data sets, not ``detkit infer`` on arbitrary images.
    """

    uses_meta = True

    def __init__(self, path: str | os.PathLike, max_proposals: int | None = None, min_size: float = 0.0):
        self.max_proposals, self.min_size = check_limits("precomputed", max_proposals, min_size)
        self.path = Path(path)
        self.proposals = read_proposals(self.path)

    def __repr__(self) -> str:
        return (f"PrecomputedProposals(path={str(self.path)!r}, images={len(self.proposals)}, "
                f"max_proposals={self.max_proposals}, min_size={self.min_size:g})")

    def __len__(self) -> int:
        return len(self.proposals)

    def lookup(self, meta: Mapping) -> np.ndarray:
        """The stored boxes (original-image pixels) of the image ``meta`` names."""
        keys = _lookup_keys(meta or {})
        for key in keys:
            found = self.proposals.get(key)
            if found is not None:
                return found
        if not keys:
            raise DataError(
                f"precomputed proposals ({self.path}): the image has no file name, path or image id in its "
                f"meta, so its proposals cannot be looked up (precomputed proposals serve data sets; use a "
                f"generator that runs on the image, e.g. sliding_window, for arbitrary images)"
            )
        name = meta.get("path") or meta.get("file_name") or meta.get("image_id")
        raise DataError(f"{self.path}: no proposals for image {name} (looked up as {', '.join(map(repr, keys))}); "
                        f"the file holds {len(self.proposals)} images")

    def __call__(self, image: np.ndarray | None = None, meta: Mapping | None = None) -> np.ndarray:
        meta = dict(meta or {})
        boxes = self.lookup(meta)
        if meta.get("augmented"):
            name = meta.get("path") or meta.get("file_name") or meta.get("image_id")
            raise ConfigError(
                f"precomputed proposals ({self.path}): image {name} went through training augmentation "
                f"(preset / augment in its transforms), whose geometry is not recorded, so boxes of the "
                f"original image cannot be placed on it. Remove the augmentation from that split, or use a "
                f"generator that runs on the input image (sliding_window, selective_search)"
            )
        if image is not None:
            height, width = image.shape[:2]
        elif meta.get("input_size"):
            height, width = meta["input_size"]
        else:
            height, width = meta.get("orig_size", (None, None))
        sx, sy = meta.get("scale", (1.0, 1.0))
        left, top = meta.get("pad", (0.0, 0.0))
        boxes = boxes * np.array([sx, sy, sx, sy], np.float32) + np.array([left, top, left, top], np.float32)
        if height is not None:
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_size)
        boxes = boxes[keep]
        if self.max_proposals is not None:
            boxes = boxes[: self.max_proposals]
        return np.ascontiguousarray(boxes, dtype=np.float32)
