"""Pascal VOC mAP with the devkit's semantics, vectorised with numpy.

Rules (those of the VOC devkit's ``VOCevaldet.m`` and its Python port ``voc_eval.py`` used by
py-faster-rcnn and detectron2):

* per class, detections are ranked by score, descending; ties keep the order of a results file
  written image by image in image-id order (a stable sort, see :mod:`detkit.evaluation.base`);
* each detection is compared with the ground truth of its image and class; IoU counts pixels the
  devkit's way (see *Box coordinates* below);
* the detection goes to the ground truth of **highest** IoU (already matched or not). If that IoU is
  ``> iou_threshold`` (strictly) and the ground truth is *difficult*, the detection is ignored
  (neither true nor false positive); if it is not difficult and not yet matched, the detection is a
  true positive and the ground truth becomes matched; if it was already matched, a false positive.
  Otherwise (IoU too low, or no ground truth of that class in the image) a false positive;
* recall is over the non-difficult ground truth; precision is ``tp / max(tp + fp, eps)``;
* ``voc07``: the VOC2007 11-point metric, mean over t in 0, 0.1, ..., 1 of max precision at
  recall >= t; ``voc`` (VOC2010+): the area under the precision envelope, summed where recall changes.

Box coordinates: the devkit reads VOC XML, whose boxes are 1-based *inclusive* pixel indices, and
so adds 1 to every width and height (``w = x2 - x1 + 1``). detkit datasets turn such a box into
continuous coordinates ``(xmin - 1, ymin - 1, xmax, ymax)`` (detectron2's convention, see
:mod:`detkit.data.voc`), whose plain width ``x2 - x1`` already is the devkit's ``xmax - xmin + 1``.
So with the default ``box_convention='continuous'`` IoU has no ``+1`` and reproduces the devkit's
numbers on detkit boxes exactly (this is what detectron2 does when it writes ``xmin + 1, ymin + 1``
into the devkit's results files); ``box_convention='inclusive'`` applies the devkit's ``+1`` to boxes
given in the XML's own 1-based inclusive convention.

detkit choices where the devkit is silent:

* ``iscrowd`` ground truth (COCO-style data evaluated with VOC metrics) is treated like *difficult*.
* A class with no detections has AP 0 (it is not skipped).
* An evaluation set without any (non-difficult) ground-truth box -- no images, or only negatives --
  has no defined AP: every AP is NaN (with a warning), as the COCO metric reports it; ``save_best``
  skips NaN. (One behaviour for VOC and COCO; a mean of zeros would look like a model that found
  nothing.)
* Otherwise a class with no (non-difficult) ground truth has AP 0 and counts in the mean, as in detectron2's
  ``PascalVOCDetectionEvaluator``, which averages over every class. (detectron2 gets that 0 from
  the 11-point metric and from a class without detections; for the area metric on a class *with*
  detections its ``tp / npos`` is 0/0 and it reports NaN -- detkit reports 0 there too so that the
  mAP stays a number.) ``per_class_stats[name]['num_gt']`` shows which classes had no ground truth.

Speed: one pass over all images builds every (detection, ground truth) pair of the same image and
class, computes their IoUs at once and takes each detection's best ground truth with ``reduceat``.
Because the devkit assigns a detection to its best ground truth whether or not it is already taken,
the greedy matching needs no loop: for each ground truth, the first (highest ranked) detection
assigned to it above the threshold is the true positive and later ones are false positives.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from detkit.errors import ConfigError
from detkit.evaluation.base import Evaluator, ImageRecord
from detkit.evaluation.names import METRIC_KEYS, VOC_METRICS

__all__ = ["VOCEvaluator", "evaluate_voc", "voc_ap_07", "voc_ap_area", "match_detections"]

logger = logging.getLogger(__name__)

# what IoU adds to widths / heights for each box convention (module docstring, *Box coordinates*)
BOX_CONVENTIONS = {"continuous": 0.0, "inclusive": 1.0}
# np.arange(0, 1.1, 0.1) exactly as the devkit builds its recall thresholds (0.30000000000000004, ...)
_RECALL_POINTS_07 = np.arange(0.0, 1.1, 0.1)


def voc_ap_07(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2007 11-point AP: mean over t in 0, 0.1, ..., 1 of ``max(prec[rec >= t])`` (0 if none)."""
    if rec.size == 0:
        return 0.0
    # max of prec over rec >= t == the right-to-left running max of prec at the first index with
    # rec >= t (rec is non-decreasing along the ranking)
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    first = np.searchsorted(rec, _RECALL_POINTS_07, side="left")
    p = np.where(first < rec.size, envelope[np.minimum(first, rec.size - 1)], 0.0)
    ap = 0.0
    for value in p:  # summed in the devkit's order, so the result is bit-identical
        ap = ap + value / 11.0
    return float(ap)


def voc_ap_area(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2010+ AP: area under the monotone precision envelope, at the points where recall changes."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _pairwise_iou(det: np.ndarray, gt: np.ndarray, pixel_offset: float) -> np.ndarray:
    """IoU of det[i] with gt[i] (row by row), the devkit's formula term for term."""
    ixmin = np.maximum(gt[:, 0], det[:, 0])
    iymin = np.maximum(gt[:, 1], det[:, 1])
    ixmax = np.minimum(gt[:, 2], det[:, 2])
    iymax = np.minimum(gt[:, 3], det[:, 3])
    iw = np.maximum(ixmax - ixmin + pixel_offset, 0.0)
    ih = np.maximum(iymax - iymin + pixel_offset, 0.0)
    inters = iw * ih
    uni = ((det[:, 2] - det[:, 0] + pixel_offset) * (det[:, 3] - det[:, 1] + pixel_offset)
           + (gt[:, 2] - gt[:, 0] + pixel_offset) * (gt[:, 3] - gt[:, 1] + pixel_offset) - inters)
    # degenerate boxes (zero or negative union) overlap nothing instead of producing inf / NaN
    safe = uni > 0
    return np.where(safe, inters / np.where(safe, uni, 1.0), 0.0)


def match_detections(det_group: np.ndarray, det_boxes: np.ndarray, gt_group: np.ndarray, gt_boxes: np.ndarray,
                     pixel_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Best ground truth of every detection among those of the same group (image x class).

    ``gt_group`` must be sorted. ``pixel_offset`` is added to widths and heights (1: inclusive pixel
    indices, 0: continuous coordinates). Returns ``(ovmax, jmax)``: the highest IoU (``-inf`` when the group
    has no ground truth) and the index of the first ground truth reaching it (``-1`` when none).
    """
    nd = len(det_group)
    start = np.searchsorted(gt_group, det_group, side="left")
    count = np.searchsorted(gt_group, det_group, side="right") - start
    ovmax = np.full(nd, -np.inf)
    jmax = np.full(nd, -1, dtype=np.int64)
    total = int(count.sum())
    if total == 0:
        return ovmax, jmax
    # all (detection, ground truth) pairs, detection-major: pair p belongs to detection pair_det[p]
    pair_det = np.repeat(np.arange(nd), count)
    seg_start = np.cumsum(count) - count
    pair_gt = start[pair_det] + (np.arange(total) - seg_start[pair_det])
    iou = _pairwise_iou(det_boxes[pair_det], gt_boxes[pair_gt], pixel_offset)

    has = count > 0
    best = np.maximum.reduceat(iou, seg_start[has])
    ovmax[has] = best
    # np.argmax semantics: the first ground truth (in input order) reaching the maximum
    at_max = np.flatnonzero(iou == ovmax[pair_det])
    owners = pair_det[at_max]
    first = np.ones(len(at_max), bool)
    first[1:] = owners[1:] != owners[:-1]
    jmax[owners[first]] = pair_gt[at_max[first]]
    return ovmax, jmax


class VOCEvaluator(Evaluator):
    """Pascal VOC AP@0.5 (see the module docstring for the exact rules).

    Args:
        class_names: names of labels ``0..C-1``.
        use_07_metric: report ``voc07_ap50`` (True) or ``voc_ap50`` (False); ignored if ``metrics``
            is given.
        metrics: any of ``('voc07', 'voc')``: compute several from one matching pass. The first one
            fills ``per_class``.
        iou_threshold: a detection matches when IoU > this (strictly), 0.5 in VOC.
        box_convention: ``'continuous'`` (detkit boxes: VOC ``xmin - 1, ymin - 1, xmax, ymax``; plain IoU
            reproduces the devkit) or ``'inclusive'`` (1-based inclusive pixel indices as in the XML;
            the devkit's ``w = x2 - x1 + 1``). See *Box coordinates* in the module docstring.

    ``compute()`` returns ``voc07_ap50`` and/or ``voc_ap50`` (fractions), ``per_class`` (name -> AP of
    the first metric), ``per_class_voc07`` / ``per_class_voc``, ``per_class_stats`` (name ->
    ``num_gt`` non-difficult ground truths, ``num_det`` detections, ``recall`` at the lowest score)
    and ``num_images``.
    """

    def __init__(self, class_names: Sequence[str], use_07_metric: bool = True, *,
                 metrics: Sequence[str] | None = None, iou_threshold: float = 0.5,
                 box_convention: str = "continuous"):
        if metrics is None:
            metrics = ("voc07",) if use_07_metric else ("voc",)
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [m for m in metrics if m not in VOC_METRICS]
        if not metrics or unknown:
            raise ConfigError(f"VOCEvaluator: metrics must be a non-empty subset of {VOC_METRICS}, got {metrics}")
        if not 0.0 <= float(iou_threshold) < 1.0:
            raise ConfigError(f"VOCEvaluator: iou_threshold must lie in [0, 1), got {iou_threshold}")
        self.metrics = tuple(dict.fromkeys(metrics))
        self.iou_threshold = float(iou_threshold)
        if box_convention not in BOX_CONVENTIONS:
            raise ConfigError(f"VOCEvaluator: box_convention must be one of {tuple(BOX_CONVENTIONS)}, "
                              f"got {box_convention!r}")
        self.box_convention = box_convention
        self.pixel_offset = BOX_CONVENTIONS[box_convention]
        super().__init__(class_names)

    def compute(self) -> dict:
        records = self.sorted_records()
        per_class_ap, stats = evaluate_voc(records, self.num_classes, self.metrics, self.iou_threshold,
                                           self.pixel_offset)
        out: dict = {}
        if not stats["num_gt"].any():
            # No ground truth at all: AP is undefined, as COCO says (NaN), not 0 (see the module docstring).
            logger.warning("VOCEvaluator: the %d evaluated images hold no (non-difficult) ground-truth box: AP is "
                           "undefined and reported as NaN", len(records))
            per_class_ap = {m: [float("nan")] * self.num_classes for m in self.metrics}
        for metric in self.metrics:
            aps = per_class_ap[metric]
            (key,) = METRIC_KEYS[metric]  # voc07_ap50 / voc_ap50
            out[key] = float(np.mean(aps))
        for metric in self.metrics:
            out[f"per_class_{metric}"] = dict(zip(self.class_names, per_class_ap[metric]))
        out["per_class"] = dict(out[f"per_class_{self.metrics[0]}"])
        out["per_class_stats"] = {
            name: {"num_gt": int(stats["num_gt"][c]), "num_det": int(stats["num_det"][c]),
                   "recall": float(stats["recall"][c])}
            for c, name in enumerate(self.class_names)
        }
        out["num_images"] = len(records)
        return out


def evaluate_voc(records: Sequence[ImageRecord], num_classes: int, metrics: Sequence[str] = VOC_METRICS,
                 iou_threshold: float = 0.5, pixel_offset: float = 0.0) -> tuple[dict, dict]:
    """Per-class APs over ``records`` taken in the given order (the order decides score ties).

    Returns ``({metric: [AP per class]}, {'num_gt': [...], 'num_det': [...], 'recall': [...]})``.
    """
    C = num_classes
    n_gt = np.fromiter((len(r.gt_labels) for r in records), dtype=np.int64, count=len(records))
    n_det = np.fromiter((len(r.det_labels) for r in records), dtype=np.int64, count=len(records))
    gt_img = np.repeat(np.arange(len(records)), n_gt)
    det_img = np.repeat(np.arange(len(records)), n_det)

    def cat(parts, empty_shape, dtype):
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(empty_shape, dtype)

    gt_boxes = cat([r.gt_boxes for r in records], (0, 4), np.float64).reshape(-1, 4)
    gt_labels = cat([r.gt_labels for r in records], (0,), np.int64)
    gt_ignore = cat([r.difficult for r in records], (0,), bool) | cat([r.iscrowd for r in records], (0,), bool)
    det_boxes = cat([r.det_boxes for r in records], (0, 4), np.float64).reshape(-1, 4)
    det_scores = cat([r.det_scores for r in records], (0,), np.float64)
    det_labels = cat([r.det_labels for r in records], (0,), np.int64)

    # ground truth grouped by (image, class); a stable sort keeps each group's input order, which
    # decides np.argmax-style ties between equally overlapping ground truths
    gt_group = gt_img * C + gt_labels
    gt_order = np.argsort(gt_group, kind="stable")
    gt_group, gt_boxes, gt_ignore, gt_labels = (gt_group[gt_order], gt_boxes[gt_order], gt_ignore[gt_order],
                                                gt_labels[gt_order])
    ovmax, jmax = match_detections(det_img * C + det_labels, det_boxes, gt_group, gt_boxes, pixel_offset)

    # rank: by class, then score descending, then position in the image-by-image listing (stable)
    rank = np.lexsort((np.arange(len(det_scores)), -det_scores, det_labels))
    ovmax, jmax, ranked_labels = ovmax[rank], jmax[rank], det_labels[rank]
    above = ovmax > iou_threshold
    ignored = above & gt_ignore[np.where(above, jmax, 0)] if len(gt_ignore) else np.zeros_like(above)
    candidate = above & ~ignored
    tp = np.zeros(len(rank), bool)
    cand_pos = np.flatnonzero(candidate)
    # the highest-ranked detection claiming a ground truth wins it; ground truths of different
    # classes have different indices, so this is per class automatically
    _, first = np.unique(jmax[cand_pos], return_index=True)
    tp[cand_pos[first]] = True
    fp = ~above | (candidate & ~tp)

    num_gt = np.bincount(gt_labels[~gt_ignore], minlength=C)
    bounds = np.searchsorted(ranked_labels, np.arange(C + 1), side="left")
    aps: dict[str, list[float]] = {m: [] for m in metrics}
    num_det = np.zeros(C, np.int64)
    recall = np.zeros(C)
    for c in range(C):
        lo, hi = bounds[c], bounds[c + 1]
        num_det[c] = hi - lo
        if num_gt[c] == 0 or hi == lo:
            # no ground truth: precision is 0 wherever defined (detkit/detectron2 give AP 0);
            # no detections: nothing recalled
            for m in metrics:
                aps[m].append(0.0)
            continue
        ctp = np.cumsum(tp[lo:hi], dtype=np.float64)
        cfp = np.cumsum(fp[lo:hi], dtype=np.float64)
        rec = ctp / float(num_gt[c])
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        recall[c] = rec[-1]
        for m in metrics:
            aps[m].append(voc_ap_07(rec, prec) if m == "voc07" else voc_ap_area(rec, prec))
    return aps, {"num_gt": num_gt, "num_det": num_det, "recall": recall}
