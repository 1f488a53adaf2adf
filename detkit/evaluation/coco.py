"""COCO box mAP through pycocotools (or faster-coco-eval, same numbers, when installed).

The ground truth is built in memory from the targets (no annotation file needed), so any detkit
dataset, VOC included, can be scored with COCO metrics:

* images get ids ``1..N`` in image-key order (see :mod:`detkit.evaluation.base`);
* categories are ``1..C`` for labels ``0..C-1``, or ``cat_ids[label]`` when the real COCO category
  ids are given (they only matter for results files: :func:`to_coco_results`);
* boxes are converted ``xyxy -> xywh``; ``area`` is the target's ``area`` when it carries one (COCO's
  mask area, which decides small / medium / large), else the box area ``w * h``;
* ``iscrowd`` ground truth is a crowd region as in COCO. ``difficult`` ground truth (VOC) becomes a
  crowd region too (``difficult_as_crowd=True``, as mmdetection does): detections on it are ignored
  rather than counted as false positives -- the nearest COCO analogue of the VOC rule.

Metrics (fractions; ``nan`` where pycocotools reports -1, i.e. no ground truth in that area range,
as detectron2 does): ``coco_ap, coco_ap50, coco_ap75, coco_ap_s, coco_ap_m, coco_ap_l, coco_ar1,
coco_ar10, coco_ar100, coco_ar_s, coco_ar_m, coco_ar_l``, ``per_class_coco`` (name -> AP@[.5:.95])
and ``per_class_coco50`` / ``per_class`` (name -> AP@0.5, COCO's 101-point interpolation), both
``nan`` for a class without ground truth (pycocotools leaves such classes out of the mean).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from detkit.errors import ConfigError
from detkit.evaluation.base import Evaluator, ImageRecord
from detkit.evaluation.names import COCO_STAT_KEYS

__all__ = ["COCOEvaluator", "to_coco_results", "COCO_STAT_KEYS"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "pycocotools", "faster")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] -= out[:, :2]
    return out


def _category_ids(cat_ids: Sequence[int] | None, num_classes: int) -> list[int]:
    if cat_ids is None:
        return list(range(1, num_classes + 1))
    ids = [int(c) for c in cat_ids]
    if len(ids) != num_classes:
        raise ConfigError(f"cat_ids lists {len(ids)} category ids for {num_classes} classes")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"cat_ids has repeated ids: {ids}")
    return ids


def to_coco_results(detections: Sequence[Mapping], image_ids: Sequence, cat_ids: Sequence[int] | None = None,
                    *, class_names: Sequence[str] | None = None, file_names: Sequence[str] | None = None,
                    decimals: tuple[int, int] | None = None) -> list[dict]:
    """COCO results (``[{image_id, category_id, bbox: [x, y, w, h], score}]``): the one writer of them,
    for ``detkit eval --results-out``, ``detkit infer --save-json`` and the evaluator's own COCOeval input.

    ``detections[i]`` belongs to ``image_ids[i]``; label ``l`` becomes ``cat_ids[l]`` (default ``l + 1``).
    ``class_names`` adds each record's ``category_name`` and ``file_names`` (one per image) its
    ``file_name``, for people reading the file. ``decimals=(box, score)`` rounds, for a smaller file;
    without it values stay exact, so a results file re-scores to the evaluator's numbers.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"got {len(detections)} detections for {len(image_ids)} image ids")
    results = []
    for i, (det, image_id) in enumerate(zip(detections, image_ids)):
        boxes, scores, labels = (_numpy(det[key]) for key in ("boxes", "scores", "labels"))
        image_id = image_id.item() if hasattr(image_id, "item") else image_id
        records = _results_for_image(image_id, boxes, scores.reshape(-1), labels.reshape(-1), cat_ids, decimals)
        for record, label in zip(records, labels.reshape(-1).tolist()):
            if class_names is not None:
                record["category_name"] = class_names[label]
            if file_names is not None:
                record["file_name"] = file_names[i]
        results += records
    return results


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _results_for_image(image_id, boxes, scores, labels, cat_ids, decimals=None) -> list[dict]:
    xywh = _xywh(boxes)
    scores = np.asarray(scores, dtype=np.float64)
    if decimals is not None:
        xywh, scores = xywh.round(decimals[0]), scores.round(decimals[1])
    if cat_ids is None:
        cats = (np.asarray(labels, dtype=np.int64) + 1).tolist()
    else:
        lookup = np.asarray(cat_ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= len(lookup)):
            raise ValueError(f"image {image_id!r}: labels {labels.min()}..{labels.max()} outside the "
                             f"{len(lookup)} cat_ids")
        cats = lookup[labels].tolist()
    return [
        {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
        for c, b, s in zip(cats, xywh.tolist(), scores.tolist())
    ]


def coco_ground_truth(records: Sequence[ImageRecord], class_names: Sequence[str], cat_ids: Sequence[int],
                      difficult_as_crowd: bool = True) -> dict:
    """COCO-format ground-truth dict of ``records``, image ``i`` with id ``i + 1``."""
    images, annotations = [], []
    for index, rec in enumerate(records):
        images.append({"id": index + 1})
        xywh = _xywh(rec.gt_boxes)
        area = xywh[:, 2] * xywh[:, 3]
        if rec.gt_area is not None:
            area = np.where(np.isnan(rec.gt_area), area, rec.gt_area)
        crowd = rec.iscrowd | rec.difficult if difficult_as_crowd else rec.iscrowd
        for box, label, a, c in zip(xywh.tolist(), rec.gt_labels.tolist(), np.asarray(area).tolist(),
                                    crowd.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": cat_ids[label],
                                "bbox": box, "area": float(a), "iscrowd": int(c)})
    categories = [{"id": cid, "name": name} for cid, name in zip(cat_ids, class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_detections(records: Sequence[ImageRecord], cat_ids: Sequence[int]) -> list[dict]:
    """COCO results of ``records`` against :func:`coco_ground_truth`'s image ids."""
    results = []
    for index, rec in enumerate(records):
        results += _results_for_image(index + 1, rec.det_boxes, rec.det_scores, rec.det_labels, cat_ids)
    return results


def _faster_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"COCOEvaluator: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "faster" if _faster_available() else "pycocotools"
    if backend == "faster" and not _faster_available():
        raise ConfigError("COCOEvaluator: backend='faster' needs faster-coco-eval "
                          "(pip install 'detkit[fast-eval]' or pip install faster-coco-eval)")
    return backend


def run_cocoeval(gt_dict: dict, results: list[dict], backend: str = "auto", verbose: bool = False):
    """Run COCOeval (bbox) and return ``(stats[12], precision[T,R,K,A,M], cat_ids in eval order)``."""
    backend = resolve_backend(backend)
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        printer = print if verbose else logger.debug
        # (the dicts are built afresh by every compute(), so the in-place edits of loadRes are harmless)
        gt = COCO(gt_dict, print_function=printer)
        dt = gt.loadRes(results)  # handles an empty result list itself
        ev = COCOeval_faster(gt, dt, "bbox", print_function=printer)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return np.asarray(ev.stats[:12], dtype=np.float64), np.asarray(ev.eval["precision"]), list(ev.params.catIds)

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:
            # pycocotools' loadRes indexes results[0]; an empty result set is an empty dataset
            dt = COCO()
            dt.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                          "categories": copy.deepcopy(gt.dataset["categories"])}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12], dtype=np.float64), np.asarray(ev.eval["precision"]), list(ev.params.catIds)


def _nan_if_missing(value: float) -> float:
    return float("nan") if value < 0 else float(value)


class COCOEvaluator(Evaluator):
    """COCO box metrics on the collected images (see the module docstring).

    Args:
        class_names: names of labels ``0..C-1``.
        cat_ids: COCO category id of each label (default ``1..C``).
        backend: ``'auto'`` (faster-coco-eval when installed), ``'pycocotools'`` or ``'faster'``.
        verbose: let pycocotools / faster-coco-eval print their usual output.
        difficult_as_crowd: score ``difficult`` ground truth as crowd regions (ignored) instead of as
            ordinary objects.
    """

    def __init__(self, class_names: Sequence[str], *, cat_ids: Sequence[int] | None = None, backend: str = "auto",
                 verbose: bool = False, difficult_as_crowd: bool = True):
        super().__init__(class_names)
        self.cat_ids = _category_ids(cat_ids, self.num_classes)
        self.backend = resolve_backend(backend)
        self.verbose = bool(verbose)
        self.difficult_as_crowd = bool(difficult_as_crowd)

    def compute(self) -> dict:
        records = self.sorted_records()
        gt_dict = coco_ground_truth(records, self.class_names, self.cat_ids, self.difficult_as_crowd)
        results = coco_detections(records, self.cat_ids)
        if not any(not a["iscrowd"] for a in gt_dict["annotations"]):
            # Undefined, reported as NaN (pycocotools' -1), the same as VOCEvaluator does.
            logger.warning("COCOEvaluator: the %d evaluated images hold no (non-crowd) ground-truth box: AP is "
                           "undefined and reported as NaN", len(records))
        stats, precision, eval_cat_ids = run_cocoeval(gt_dict, results, self.backend, self.verbose)
        out = {key: _nan_if_missing(v) for key, v in zip(COCO_STAT_KEYS, stats)}

        # precision: [IoU thresholds, recall points, classes, area ranges (all first), max dets (100 last)]
        name_of = dict(zip(self.cat_ids, self.class_names))
        per_class, per_class50 = {}, {}
        for k, cid in enumerate(eval_cat_ids):
            p = precision[:, :, k, 0, -1]
            valid = p[p > -1]
            per_class[name_of[cid]] = float(valid.mean()) if valid.size else float("nan")
            p50 = p[0][p[0] > -1]
            per_class50[name_of[cid]] = float(p50.mean()) if p50.size else float("nan")
        out["per_class_coco"] = {n: per_class.get(n, float("nan")) for n in self.class_names}
        out["per_class_coco50"] = {n: per_class50.get(n, float("nan")) for n in self.class_names}
        out["per_class"] = dict(out["per_class_coco50"])
        out["num_images"] = len(records)
        return out
