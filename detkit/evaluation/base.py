"""What every detkit evaluator shares: per-image records, distributed state, grouping.

An evaluator collects, for every image, its ground truth and its detections as plain numpy arrays
(:class:`ImageRecord`), keyed by the target's ``image_id``. Metrics are computed only in
``compute()``, always over the images sorted by key, so

* the order in which images arrive does not change the result (see *Tie order* below);
* ``state()`` is a plain picklable object (a dict of lists and numpy arrays); gathering the states of
  all ranks on rank 0 and calling ``load_states(states)`` (or ``merge(state)`` for each) gives exactly
  the metrics of a single process that saw every image;
* an ``image_id`` seen twice is kept once (the first copy): a ``DistributedSampler`` pads the last
  batch by repeating images, and counting them twice would bias the metric. Duplicates are counted
  (``num_duplicates``) and logged.

Images without an ``image_id`` are keyed by arrival order and sorted after all images that have one;
for them the result can depend on the order of arrival (only through score ties), so distributed
evaluation should always pass ``image_id`` (every detkit dataset does).

Tie order: detections with equal scores are ranked by image key, then by their position in the
image's detection list, i.e. a stable sort over ``-score`` of the detections listed image by image in
key order. This is the Pascal VOC devkit's rule (MATLAB ``sort`` is stable) applied to a results file
written in image-id order.

Inputs follow the detkit contracts (``detkit.structures``); tensors may live on any device, numpy
arrays and lists are accepted too. Detections with a non-finite box or score (a diverged model) are
dropped, counted (``num_nonfinite_dropped``) and logged instead of poisoning the metric.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from detkit.errors import ConfigError, DataError

__all__ = ["ImageRecord", "Evaluator", "EvaluatorGroup"]

logger = logging.getLogger(__name__)

STATE_FORMAT = "detkit-eval-state"
STATE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Per-image records
# ----------------------------------------------------------------------------------------------


@dataclass
class ImageRecord:
    """Ground truth and detections of one image, as float64 / int64 / bool numpy arrays."""

    image_id: int | str | None  # as the target gave it (None: the target had none)
    gt_boxes: np.ndarray  # [K, 4] xyxy
    gt_labels: np.ndarray  # [K] 0..C-1
    difficult: np.ndarray  # [K] bool
    iscrowd: np.ndarray  # [K] bool
    gt_area: np.ndarray | None  # [K] area override for COCO (e.g. mask area); None / NaN = box area
    det_boxes: np.ndarray  # [M, 4] xyxy
    det_scores: np.ndarray  # [M]
    det_labels: np.ndarray  # [M]


def _image_id(value):
    """``image_id`` as a plain int or str (tensors, numpy scalars accepted), or None."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        raise ValueError(f"image_id must be an int or a str, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"image_id must be an int or a str, got {type(value).__name__} {value!r}")


def _where(i: int, targets: Sequence[Mapping]) -> str:
    image_id = targets[i].get("image_id") if isinstance(targets[i], Mapping) else None
    return f"image {i} of the batch" + (f" (image_id={_image_id(image_id)!r})" if image_id is not None else "")


def _gather(values: list, dtype, boxes: bool, what: str, targets) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-image tensors / arrays into one numpy array of ``dtype``.

    ``boxes``: each value is ``[K, 4]`` (or empty) and the result is ``[sum K, 4]``; otherwise each is a
    vector and the result is flat. Returns the array and the per-image counts. Tensors (any device)
    are concatenated on their device and copied to the host once per batch rather than once per
    image: that is most of the cost of ``update()``.
    """
    fast = _gather_tensors(values, dtype, boxes)
    if fast is not None:
        return fast
    # general path (numpy, lists, mixed kinds or devices, legacy shapes): image by image
    values = [v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for v in values]
    counts = np.zeros(len(values), np.int64)
    for i, v in enumerate(values):
        if boxes and v.ndim == 2 and v.shape[1] == 4:
            counts[i] = v.shape[0]
        elif boxes and v.size:
            raise ValueError(f"{_where(i, targets)}: {what} must have shape [N, 4] (xyxy), got {v.shape}")
        else:
            counts[i] = v.size
    if not values:
        return np.zeros((0, 4) if boxes else 0, dtype), counts
    joined = np.concatenate([v.reshape((-1, 4) if boxes else -1).astype(dtype, copy=False) for v in values])
    return joined, counts


def _gather_tensors(values: list, dtype, boxes: bool):
    """Fast path of :func:`_gather` for well-formed torch tensors on one device; None otherwise."""
    torch = sys.modules.get("torch")  # no tensors are possible unless torch was imported by the caller
    if torch is None or not values or not all(isinstance(v, torch.Tensor) for v in values):
        return None
    try:
        with torch.no_grad():
            joined = torch.cat(values)  # also accepts the legacy empty shape (0,) among [K, 4] boxes
    except (RuntimeError, TypeError):
        return None
    if joined.ndim != (2 if boxes else 1) or (boxes and joined.shape[1] != 4):
        return None
    counts = np.fromiter((v.shape[0] if v.ndim else 1 for v in values), dtype=np.int64, count=len(values))
    if int(counts.sum()) != joined.shape[0]:
        return None
    return joined.cpu().numpy().astype(dtype, copy=False), counts


def _split(array: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Per-image views of ``array`` (faster than np.split for many small pieces)."""
    ends = np.cumsum(counts).tolist()
    starts = [0] + ends[:-1]
    return [array[a:b] for a, b in zip(starts, ends)]


def _check_counts(counts: np.ndarray, expected: np.ndarray, what: str, targets) -> None:
    bad = np.flatnonzero(counts != expected)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{_where(i, targets)}: {what} has {counts[i]} entries for {expected[i]} boxes")


def _check_labels(labels: np.ndarray, counts: np.ndarray, num_classes: int, what: str, targets, error) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.searchsorted(np.cumsum(counts), np.flatnonzero(bad)[0], side="right"))
        lab = _split(labels, counts)[i]
        raise error(f"{_where(i, targets)}: {what} must lie in 0..{num_classes - 1} ({num_classes} classes), "
                    f"found {lab.min()}..{lab.max()}")


def make_records(detections: Sequence[Mapping], targets: Sequence[Mapping], num_classes: int
                 ) -> tuple[list[ImageRecord], list[int]]:
    """Validate and convert a batch; returns one record per image and the number of non-finite
    detections dropped in each. Errors name the image (batch index and ``image_id``)."""
    for i, (det, tgt) in enumerate(zip(detections, targets)):
        if not isinstance(tgt, Mapping) or "boxes" not in tgt or "labels" not in tgt:
            raise ValueError(f"image {i} of the batch: target must be a dict with 'boxes' and 'labels'")
        if not isinstance(det, Mapping) or not {"boxes", "scores", "labels"} <= set(det):
            raise ValueError(f"{_where(i, targets)}: detection must be a dict with 'boxes', 'scores' and 'labels'")
    n = len(targets)

    # ground truth
    gt_boxes, k = _gather([t["boxes"] for t in targets], np.float64, True, "target boxes", targets)
    gt_labels, counts = _gather([t["labels"] for t in targets], np.int64, False, "target labels", targets)
    _check_counts(counts, k, "target labels", targets)
    _check_labels(gt_labels, k, num_classes, "ground-truth labels", targets, DataError)
    optional = {}
    for name, dtype in (("difficult", bool), ("iscrowd", bool), ("area", np.float64)):
        given = [t.get(name) for t in targets]
        if all(v is None for v in given):
            optional[name] = None
            continue
        # an image without the field: flags False; area NaN = "use the box area" (see coco.py)
        fill = np.nan if name == "area" else False
        values, counts = _gather([np.full(k[i], fill, dtype) if v is None else v for i, v in enumerate(given)],
                                 dtype, False, f"target {name}", targets)
        _check_counts(counts, k, f"target {name}", targets)
        optional[name] = _split(values, k)

    # detections
    det_boxes, m = _gather([d["boxes"] for d in detections], np.float64, True, "detection boxes", targets)
    det_scores, counts = _gather([d["scores"] for d in detections], np.float64, False, "detection scores", targets)
    _check_counts(counts, m, "detection scores", targets)
    det_labels, counts = _gather([d["labels"] for d in detections], np.int64, False, "detection labels", targets)
    _check_counts(counts, m, "detection labels", targets)
    _check_labels(det_labels, m, num_classes, "detection labels", targets, ValueError)
    finite = np.isfinite(det_boxes).all(axis=1) & np.isfinite(det_scores)
    dropped = np.zeros(n, np.int64)
    if not finite.all():
        dropped = np.bincount(np.repeat(np.arange(n), m)[~finite], minlength=n)
        det_boxes, det_scores, det_labels = det_boxes[finite], det_scores[finite], det_labels[finite]
        m = m - dropped

    split_gt_boxes, split_gt_labels = _split(gt_boxes, k), _split(gt_labels, k)
    split_det_boxes, split_scores, split_det_labels = _split(det_boxes, m), _split(det_scores, m), _split(det_labels, m)
    absent = np.zeros(len(gt_labels), bool)
    absent.flags.writeable = False  # shared by the records whose targets carry no flags
    no_flags = _split(absent, k)
    difficult = optional["difficult"] or no_flags
    iscrowd = optional["iscrowd"] or no_flags
    records = []
    for i in range(n):
        records.append(ImageRecord(
            image_id=_image_id(targets[i].get("image_id")),
            gt_boxes=split_gt_boxes[i], gt_labels=split_gt_labels[i], difficult=difficult[i],
            iscrowd=iscrowd[i], gt_area=None if optional["area"] is None else optional["area"][i],
            det_boxes=split_det_boxes[i], det_scores=split_scores[i], det_labels=split_det_labels[i],
        ))
    return records, dropped.tolist()


def _sort_key(key):
    # ints before strings before images without an id (kept in arrival order)
    kind, value = key
    return (0, value, "") if kind == "int" else (1, 0, value) if kind == "str" else (2, value, "")


# ----------------------------------------------------------------------------------------------
# Evaluator base class
# ----------------------------------------------------------------------------------------------


class Evaluator:
    """Collects per-image records; subclasses implement :meth:`compute`.

    ``update(detections, targets)`` takes per-image lists of dicts; ``reset()`` forgets everything;
    ``state()`` / ``merge(state)`` / ``load_states(states)`` move the collected images between
    processes (see the module docstring for the guarantees).
    """

    # what state() writes and merge() accepts (evaluators of one kind exchange states)
    state_format = STATE_FORMAT
    state_version = STATE_VERSION

    def __init__(self, class_names: Sequence[str]):
        if isinstance(class_names, str) or not class_names:
            raise ConfigError(f"{type(self).__name__}: class_names must be a non-empty list of names, "
                              f"got {class_names!r}")
        self.class_names = tuple(str(c) for c in class_names)
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return len(self._records)

    def reset(self) -> None:
        self._records: dict[tuple, ImageRecord] = {}
        self._arrivals = 0  # keys of images without an image_id
        self.num_duplicates = 0
        self.num_nonfinite_dropped = 0

    def update(self, detections: Sequence[Mapping], targets: Sequence[Mapping]) -> None:
        """Add a batch: ``detections[i]`` are the model's detections for the image of ``targets[i]``."""
        for items, what in ((detections, "detections"), (targets, "targets")):
            if not isinstance(items, Sequence) or isinstance(items, (str, bytes, Mapping)):
                raise TypeError(f"{what} must be a list with one dict per image, got {type(items).__name__}")
        if len(detections) != len(targets):
            raise ValueError(f"got {len(detections)} detections for {len(targets)} targets; "
                             "pass one detections dict per target image")
        records, dropped = make_records(detections, targets, self.num_classes)
        for i, (record, n_dropped) in enumerate(zip(records, dropped)):
            if n_dropped:
                self.num_nonfinite_dropped += n_dropped
                logger.warning("%s: dropped %d detection(s) with non-finite boxes or scores",
                               _where(i, targets), n_dropped)
            self._add(record)

    def _add(self, record: ImageRecord) -> None:
        if record.image_id is None:
            key = ("arrival", self._arrivals)
            self._arrivals += 1
        else:
            key = ("int" if isinstance(record.image_id, int) else "str", record.image_id)
        if key in self._records:
            self.num_duplicates += 1
            return
        self._records[key] = record

    def sorted_records(self, log: bool = True) -> list[ImageRecord]:
        """The collected images in key order (the order every metric is computed in); ``log``
        reports ignored duplicates and dropped detections (once per compute)."""
        if log and self.num_duplicates:
            logger.info("%s: ignored %d repeated image_id(s) (expected when a DistributedSampler pads "
                        "the last batch)", type(self).__name__, self.num_duplicates)
        if log and self.num_nonfinite_dropped:
            logger.warning("%s: %d detection(s) with non-finite boxes or scores were dropped",
                           type(self).__name__, self.num_nonfinite_dropped)
        return [self._records[k] for k in sorted(self._records, key=_sort_key)]

    # -- distributed ---------------------------------------------------------------------------
    def state(self) -> dict:
        """Plain picklable state for ``all_gather_object``: the images in key order, packed into a
        few flat numpy arrays (cheap to pickle) plus per-image counts and ids."""
        records = self.sorted_records(log=False)

        def pack(field, width=None, dtype=np.float64):
            parts = [getattr(r, field) for r in records]
            if not parts:
                return np.zeros((0, width) if width else 0, dtype)
            return np.concatenate(parts).astype(dtype, copy=False)

        areas = [np.full(len(r.gt_labels), np.nan) if r.gt_area is None else r.gt_area for r in records]
        return {
            "format": self.state_format,
            "version": self.state_version,
            "evaluator": type(self).__name__,
            "class_names": list(self.class_names),
            "image_ids": [r.image_id for r in records],  # None: no id (kept in this order)
            "gt_counts": np.array([len(r.gt_labels) for r in records], np.int64),
            "det_counts": np.array([len(r.det_labels) for r in records], np.int64),
            "gt_boxes": pack("gt_boxes", 4), "gt_labels": pack("gt_labels", dtype=np.int64),
            "difficult": pack("difficult", dtype=bool), "iscrowd": pack("iscrowd", dtype=bool),
            "gt_area": np.concatenate(areas) if areas else np.zeros(0),
            "det_boxes": pack("det_boxes", 4), "det_scores": pack("det_scores"),
            "det_labels": pack("det_labels", dtype=np.int64),
            "num_duplicates": self.num_duplicates,
            "num_nonfinite_dropped": self.num_nonfinite_dropped,
        }

    def check_state(self, state: Mapping) -> None:
        """Refuse a :meth:`state` of another kind of evaluator (``state_format``), another detkit
        version or other classes."""
        if not isinstance(state, Mapping) or state.get("format") != self.state_format:
            raise ValueError(f"merge() expects the dict returned by a state() of a {type(self).__name__} "
                             f"(or an evaluator of the same kind)")
        if state.get("version") != self.state_version:
            raise ValueError(f"evaluator state version {state.get('version')} is not {self.state_version}: "
                             "all ranks must run the same detkit")
        if tuple(state["class_names"]) != self.class_names:
            raise ValueError(f"cannot merge a state over classes {state['class_names']} into an evaluator "
                             f"over {list(self.class_names)}")

    def merge(self, state: Mapping) -> None:
        """Add the images of another evaluator's :meth:`state` (any detection evaluator, same classes)."""
        self.check_state(state)
        k, m = state["gt_counts"], state["det_counts"]
        gt = {name: _split(state[name], k) for name in ("gt_boxes", "gt_labels", "difficult", "iscrowd", "gt_area")}
        det = {name: _split(state[name], m) for name in ("det_boxes", "det_scores", "det_labels")}
        for i, image_id in enumerate(state["image_ids"]):
            area = gt["gt_area"][i]
            self._add(ImageRecord(  # images without an id are renumbered after this evaluator's own
                image_id=image_id, gt_boxes=gt["gt_boxes"][i], gt_labels=gt["gt_labels"][i],
                difficult=gt["difficult"][i], iscrowd=gt["iscrowd"][i],
                gt_area=None if np.isnan(area).all() else area,
                det_boxes=det["det_boxes"][i], det_scores=det["det_scores"][i], det_labels=det["det_labels"][i],
            ))
        self.num_duplicates += int(state.get("num_duplicates", 0))
        self.num_nonfinite_dropped += int(state.get("num_nonfinite_dropped", 0))

    def load_states(self, states: Sequence[Mapping]) -> None:
        """Replace what was collected by the union of ``states`` (e.g. gathered from every rank)."""
        self.reset()
        for state in states:
            self.merge(state)

    def compute(self) -> dict:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Several evaluators as one
# ----------------------------------------------------------------------------------------------


class EvaluatorGroup:
    """Feeds every evaluator the same batches and merges their metrics into one dict.

    When two evaluators report the same key (``per_class``, ``num_images``), the first one listed
    wins: with ``build_evaluators('all', ...)`` that makes ``per_class`` the VOC AP@0.5.
    """

    def __init__(self, evaluators: Sequence[Evaluator]):
        if not evaluators:
            raise ConfigError("an evaluator group needs at least one evaluator")
        self.evaluators = list(evaluators)

    def update(self, detections, targets) -> None:
        for ev in self.evaluators:
            ev.update(detections, targets)

    def reset(self) -> None:
        for ev in self.evaluators:
            ev.reset()

    def compute(self) -> dict:
        metrics: dict = {}
        for ev in self.evaluators:
            for key, value in ev.compute().items():
                metrics.setdefault(key, value)
        return metrics

    def state(self) -> list:
        return [ev.state() for ev in self.evaluators]

    def merge(self, state: Sequence[Mapping]) -> None:
        if len(state) != len(self.evaluators):
            raise ValueError(f"state holds {len(state)} evaluators, this group has {len(self.evaluators)}")
        for ev, s in zip(self.evaluators, state):
            ev.merge(s)

    def load_states(self, states: Sequence[Sequence[Mapping]]) -> None:
        self.reset()
        for state in states:
            self.merge(state)

    @property
    def num_images(self) -> int:
        return self.evaluators[0].num_images
