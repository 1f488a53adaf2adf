"""What the model gets wrong, in numbers: PR and F1 curves, a confusion matrix, a per-class table.

Everything here is computed from the evaluator's per-image records (ground truth and detections in
original-image pixels) with the VOC matcher itself (:func:`detkit.evaluation.voc.match_voc`), so the
curves and counts agree with the metric exactly:

* **PR curves** (IoU > 0.5, the VOC rule): the devkit's ``rec`` / ``prec`` arrays per class, i.e.
  what the VOC AP is the area under; their last point is the recall and precision at the lowest score.
* **F1 vs score threshold**: precision and recall of the detections scoring at least ``t``, on a
  grid of ``t``; the curve over all classes is the mean over classes that have ground truth (as
  ultralytics draws it) and its maximum is the suggested ``--conf``.
* **Confusion matrix** at a stated IoU and score threshold, rows = true class, columns = predicted
  class (scikit-learn's orientation), the last row / column is *background*. Detections scoring
  below the threshold are left out. A detection the VOC matcher calls a true positive is on the
  diagonal; a detection matching an ignored (difficult / crowd) object is left out, as the metric
  does. A false positive that overlaps (IoU > threshold) an object of *another* class that no
  detection found is a confusion (that object's row, the detection's column); other false
  positives (background, duplicates, poor boxes) are in the background row. Objects neither found
  nor confused are in the background column (missed). Hence row ``c`` sums to the class's
  non-ignored objects, column ``c`` to its detections above the threshold, and the diagonal is the
  VOC true-positive count at that threshold.

:func:`format_report` and :func:`write_per_class_csv` turn an :class:`Analysis` into the short text
report and the per-class table ``detkit eval --plots`` writes; figures are drawn by
:mod:`detkit.plots.evaluation`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detkit.errors import ConfigError
from detkit.evaluation.base import ImageRecord
from detkit.evaluation.voc import VOCMatch, _pairwise_iou, match_voc, voc_ap_07, voc_ap_area

__all__ = ["Analysis", "ClassCurve", "analyse", "confusion_matrix", "format_report", "write_per_class_csv",
           "PR_IOU"]

PR_IOU = 0.5  # the VOC rule the PR curves and AP50 use (IoU > 0.5)
_GRID = 101  # score thresholds of the F1 curves


@dataclass
class ClassCurve:
    """The PR curve of one class: per ranked detection its score, recall and precision."""

    name: str
    scores: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    ap: float  # VOC area AP50 (the curve's area)
    ap07: float  # VOC07 11-point AP50


@dataclass
class Analysis:
    class_names: tuple[str, ...]
    iou_threshold: float  # of the confusion matrix and the counts at the threshold
    score_threshold: float
    curves: list[ClassCurve]
    thresholds: np.ndarray  # [T] score thresholds of the F1 / precision / recall curves
    precision_at: np.ndarray  # [C, T] (NaN where a class has no detection above the threshold)
    recall_at: np.ndarray  # [C, T]
    f1_at: np.ndarray  # [C, T]
    confusion: np.ndarray  # [C + 1, C + 1] rows true, columns predicted, last = background
    num_gt: np.ndarray  # [C] non-ignored objects
    num_images_with: np.ndarray  # [C] images with at least one non-ignored object of the class
    num_det: np.ndarray  # [C] detections at any score
    image_errors: np.ndarray  # [N] missed + confused + false detections per record, at the thresholds
    num_images: int

    @property
    def has_gt(self) -> np.ndarray:
        return self.num_gt > 0

    @property
    def mean_f1(self) -> np.ndarray:
        """F1 over classes with ground truth, per threshold (0 where there is none)."""
        if not self.has_gt.any():
            return np.zeros(len(self.thresholds))
        return self.f1_at[self.has_gt].mean(axis=0)

    @property
    def best_threshold(self) -> tuple[float, float]:
        """``(threshold, mean F1)`` at the maximum of :attr:`mean_f1` (the lowest such threshold)."""
        mean = self.mean_f1
        i = int(np.argmax(mean))
        return float(self.thresholds[i]), float(mean[i])

    def counts(self, c: int) -> dict:
        """True positives, false detections, missed and confused objects of class ``c`` at the thresholds."""
        cm, C = self.confusion, len(self.class_names)
        return {"tp": int(cm[c, c]), "fp": int(cm[:, c].sum() - cm[c, c]), "missed": int(cm[c, C]),
                "confused": int(cm[c, :C].sum() - cm[c, c]), "false_det": int(cm[C, c])}


def _check_threshold(value: float, name: str, upper_open: bool) -> float:
    value = float(value)
    if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
        raise ConfigError(f"{name}: expected a number in [0, {'1)' if upper_open else '1]'}, got {value!r}")
    return value


def analyse(records: Sequence[ImageRecord], class_names: Sequence[str], *, iou_threshold: float = 0.5,
            score_threshold: float = 0.25, pixel_offset: float = 0.0) -> Analysis:
    """Curves, confusion matrix and counts of ``records`` (see the module docstring).

    ``records``: as :meth:`~detkit.evaluation.base.Evaluator.sorted_records` returns them (the order
    decides score ties, as in the metric). ``pixel_offset``: the VOC evaluator's box convention.
    """
    iou_threshold = _check_threshold(iou_threshold, "IoU threshold", upper_open=True)
    score_threshold = _check_threshold(score_threshold, "score threshold", upper_open=False)
    names = tuple(str(c) for c in class_names)
    C = len(names)
    pr_match = match_voc(records, C, PR_IOU, pixel_offset)
    match = pr_match if iou_threshold == PR_IOU else match_voc(records, C, iou_threshold, pixel_offset)

    curves = []
    for c, name in enumerate(names):
        rec, prec = pr_match.pr(c)
        lo, hi = pr_match.bounds[c], pr_match.bounds[c + 1]
        scores = pr_match.scores[lo:hi] if rec.size else np.zeros(0)
        curves.append(ClassCurve(name, scores, rec, prec, voc_ap_area(rec, prec) if rec.size else 0.0,
                                 voc_ap_07(rec, prec)))

    top = max(1.0, float(pr_match.scores.max())) if len(pr_match.scores) else 1.0
    thresholds = np.linspace(0.0, top, _GRID)
    precision_at = np.full((C, _GRID), np.nan)
    recall_at = np.zeros((C, _GRID))
    for c, curve in enumerate(curves):
        if not curve.recall.size:
            continue
        # detections scoring >= t are the first k of the ranking (scores descend)
        k = np.searchsorted(-curve.scores, -thresholds, side="right")
        some = k > 0
        precision_at[c, some] = curve.precision[k[some] - 1]
        recall_at[c, some] = curve.recall[k[some] - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.nan_to_num(precision_at)
        f1_at = np.where(p + recall_at > 0, 2 * p * recall_at / (p + recall_at), 0.0)

    confusion, image_errors = _confusion(match, len(records), score_threshold, iou_threshold, pixel_offset)
    counted = ~match.gt_ignore
    images_with = np.zeros(C, np.int64)
    if counted.any():
        pairs = np.unique(np.stack([match.gt_image[counted], match.gt_labels[counted]], 1), axis=0)
        images_with = np.bincount(pairs[:, 1], minlength=C)
    return Analysis(
        class_names=names, iou_threshold=iou_threshold, score_threshold=score_threshold, curves=curves,
        thresholds=thresholds, precision_at=precision_at, recall_at=recall_at, f1_at=f1_at,
        confusion=confusion, num_gt=pr_match.num_gt, num_images_with=images_with,
        num_det=np.diff(pr_match.bounds), image_errors=image_errors, num_images=len(records),
    )


def confusion_matrix(records: Sequence[ImageRecord], num_classes: int, *, iou_threshold: float = 0.5,
                     score_threshold: float = 0.25, pixel_offset: float = 0.0) -> np.ndarray:
    """The ``[C + 1, C + 1]`` confusion matrix alone (see the module docstring)."""
    match = match_voc(records, num_classes, _check_threshold(iou_threshold, "IoU threshold", True), pixel_offset)
    return _confusion(match, len(records), float(score_threshold), float(iou_threshold), pixel_offset)[0]


def _confusion(match: VOCMatch, num_images: int, score_threshold: float, iou_threshold: float,
               pixel_offset: float) -> tuple[np.ndarray, np.ndarray]:
    C = match.num_classes
    cm = np.zeros((C + 1, C + 1), np.int64)
    errors = np.zeros(num_images, np.int64)
    kept = match.scores >= score_threshold
    tp = match.tp & kept
    np.add.at(cm, (match.labels[tp], match.labels[tp]), 1)
    found = np.zeros(len(match.gt_labels), bool)
    found[match.gt_index[tp]] = True

    # False positives above the threshold, best first: a duplicate of an object of its own class
    # (IoU > threshold with it) is a false detection; otherwise it may be a confusion with an
    # object of another class that no detection found.
    fp = np.flatnonzero(match.fp & kept)
    fp = fp[np.lexsort((fp, -match.scores[fp]))]
    duplicate = match.iou[fp] > iou_threshold
    for d in fp[duplicate]:
        cm[C, match.labels[d]] += 1
        errors[match.image[d]] += 1
    candidates = fp[~duplicate]
    open_gt = np.flatnonzero(~found & ~match.gt_ignore)
    by_image: dict[int, np.ndarray] = {}
    if len(open_gt):
        images, starts = np.unique(match.gt_image[open_gt], return_index=True)
        for image, part in zip(images.tolist(), np.split(open_gt, starts[1:])):
            by_image[image] = part
    for d in candidates:
        label, image = match.labels[d], match.image[d]
        gts = by_image.get(int(image))
        best = -1
        if gts is not None and len(gts):
            other = gts[match.gt_labels[gts] != label]
            if len(other):
                iou = _pairwise_iou(np.repeat(match.boxes[d:d + 1], len(other), 0), match.gt_boxes[other],
                                    pixel_offset)
                j = int(np.argmax(iou))
                if iou[j] > iou_threshold:
                    best = int(other[j])
        if best < 0:
            cm[C, label] += 1
        else:
            cm[match.gt_labels[best], label] += 1
            found[best] = True
            by_image[int(image)] = gts[gts != best]
        errors[image] += 1
    missed = np.flatnonzero(~found & ~match.gt_ignore)
    np.add.at(cm, (match.gt_labels[missed], C), 1)
    np.add.at(errors, match.gt_image[missed], 1)
    return cm, errors


# ----------------------------------------------------------------------------------------------
# The per-class table and the text report
# ----------------------------------------------------------------------------------------------

CSV_COLUMNS = ("class", "images", "instances", "detections", "ap50", "ap50_voc07", "tp", "fp", "missed",
               "confused", "false_det", "precision", "recall", "f1", "best_f1", "best_f1_score", "confused_most_with")


def per_class_rows(analysis: Analysis, metrics: Mapping | None = None) -> list[dict]:
    """One row per class: counts, APs, precision / recall / F1 at the score threshold, the best F1
    and its threshold, the class it is most often taken for. ``metrics``' ``per_class_coco`` (COCO
    AP) is added as a column when present."""
    C = len(analysis.class_names)
    coco = (metrics or {}).get("per_class_coco") if isinstance((metrics or {}).get("per_class_coco"), Mapping) else None
    rows = []
    for c, curve in enumerate(analysis.curves):
        counts = analysis.counts(c)
        kept = counts["tp"] + counts["fp"]
        precision = counts["tp"] / kept if kept else float("nan")
        recall = counts["tp"] / analysis.num_gt[c] if analysis.num_gt[c] else float("nan")
        f1 = (2 * precision * recall / (precision + recall)
              if kept and analysis.num_gt[c] and precision + recall > 0 else 0.0)
        best = int(np.argmax(analysis.f1_at[c]))
        off = analysis.confusion[c, :C].copy()
        off[c] = 0
        worst = int(np.argmax(off))
        row = {
            "class": curve.name, "images": int(analysis.num_images_with[c]), "instances": int(analysis.num_gt[c]),
            "detections": int(analysis.num_det[c]), "ap50": curve.ap, "ap50_voc07": curve.ap07,
            "tp": counts["tp"], "fp": counts["fp"], "missed": counts["missed"], "confused": counts["confused"],
            "false_det": counts["false_det"],
            "precision": precision, "recall": recall, "f1": f1,
            "best_f1": float(analysis.f1_at[c, best]), "best_f1_score": float(analysis.thresholds[best]),
            "confused_most_with": f"{analysis.class_names[worst]} ({off[worst]})" if off[worst] else "",
        }
        if coco is not None:
            row["coco_ap"] = coco.get(curve.name)
        rows.append(row)
    return rows


def write_per_class_csv(path: str | os.PathLike, analysis: Analysis, metrics: Mapping | None = None) -> Path:
    """``per_class.csv``: :func:`per_class_rows` with a header; numbers to 4 decimals."""
    rows = per_class_rows(analysis, metrics)
    columns = list(CSV_COLUMNS) + (["coco_ap"] if rows and "coco_ap" in rows[0] else [])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def confused_pairs(analysis: Analysis) -> list[tuple[str, str, int]]:
    """``(true class, predicted class, count)`` of every non-zero off-diagonal class cell, most first."""
    C = len(analysis.class_names)
    pairs = [(analysis.class_names[g], analysis.class_names[p], int(analysis.confusion[g, p]))
             for g in range(C) for p in range(C) if g != p and analysis.confusion[g, p]]
    return sorted(pairs, key=lambda x: -x[2])


def format_report(analysis: Analysis, metrics: Mapping | None = None, *, worst: int = 5, pairs: int = 5,
                  extra_sections: Sequence[tuple[str, Sequence[str]]] = ()) -> str:
    """A short text report: the thresholds, the best F1 threshold, the ``worst`` classes by AP50
    and what goes wrong with them, the ``pairs`` most confused class pairs.

    ``extra_sections``: ``(title, lines)`` appended at the end (e.g. box-fit diagnostics)."""
    rows = per_class_rows(analysis, metrics)
    thr, best_f1 = analysis.best_threshold
    lines = [
        f"detkit evaluation report: {analysis.num_images} images, {len(analysis.class_names)} classes, "
        f"{int(analysis.num_gt.sum())} objects (difficult / crowd ones ignored)",
        f"PR curves and AP50: VOC rule, IoU > {PR_IOU:g}. Counts below: IoU > {analysis.iou_threshold:g}, "
        f"score >= {analysis.score_threshold:g}.",
        f"best mean F1 over classes: {best_f1:.3f} at score >= {thr:.2f}",
        "",
        f"worst classes by AP50 (of {len(rows)}):",
    ]
    ranked = sorted((r for r in rows if r["instances"]), key=lambda r: r["ap50"])[:worst]
    width = max([len(r["class"]) for r in ranked] + [5])
    lines.append(f"  {'class':<{width}}  {'AP50':>6}  {'recall':>6}  {'prec.':>6}  {'objects':>7}  {'missed':>6}  "
                 f"{'confused':>8}  {'false det':>9}  taken for")
    for r in ranked:
        lines.append(f"  {r['class']:<{width}}  {r['ap50']:6.3f}  {_num(r['recall'])}  {_num(r['precision'])}  "
                     f"{r['instances']:7d}  {r['missed']:6d}  {r['confused']:8d}  {r['false_det']:9d}  "
                     f"{r['confused_most_with'] or '-'}")
    no_gt = [r["class"] for r in rows if not r["instances"]]
    if no_gt:
        lines.append(f"  without ground truth (AP 0 by definition): {', '.join(no_gt)}")
    lines += ["", "most confused pairs (true -> predicted):"]
    top = confused_pairs(analysis)[:pairs]
    if not top:
        lines.append("  none at these thresholds")
    for true, pred, n in top:
        total = analysis.num_gt[analysis.class_names.index(true)]
        lines.append(f"  {true} -> {pred}: {n} ({n / total:.0%} of {true})" if total else f"  {true} -> {pred}: {n}")
    for title, section in extra_sections:
        lines += ["", title, *(f"  {line}" for line in section)]
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return "   nan" if value != value else f"{value:6.3f}"
