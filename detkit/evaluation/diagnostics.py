"""Box-fit diagnostics: why a detector's COCO AP is low, without looking at images.

``detkit eval`` computes them from the evaluated images (:func:`box_fit_diagnostics`), prints
:func:`format_diagnostics` after the metrics table and writes the dict as ``diagnostics.json``
(``--diagnostics-out``). A high AP50 with a low COCO AP means boxes are found but do not fit; these
numbers say how they miss:

* **Matching** (the boxes a user sees): detections scoring at least ``score_threshold`` (0.25, what
  ``detkit infer`` draws), per image and class in descending score order, each take the unmatched
  ground truth they overlap most if that IoU is at least ``iou_match`` (0.5, the AP50 rule; ties:
  the first listed). ``difficult`` / ``iscrowd`` ground truth is ignored (a detection on it is
  neither right nor wrong), as in both metrics. A detection overlapping only already matched ground
  truth is a *duplicate*; any other unmatched detection a *false positive*.
* **Per ground truth**: matched, or a *class confusion* (a detection of another class reaches
  ``iou_match``), or a *localisation miss* (its best same-class detection reaches IoU 0.1 but not
  ``iou_match``), or *missed*. ``best_iou_*`` describe every object's best same-class IoU (0 when
  nothing overlaps), so misses and fit show in one distribution.
* **Fit of the matched pairs**: IoU median and quartiles, the share reaching 0.75 (what AP75 needs),
  width and height ratio predicted / true (1.12 = 12% too wide), centre offset (predicted minus true
  centre, in units of the true width / height: +0.05 = 5% of the width to the right).
* **Size slope**: the least-squares slope of log predicted against log true width (and height), both
  relative to the image side. 1 means predicted sizes follow the objects'; below 1 they are pulled
  toward a typical size (small objects get boxes too big, large ones too small), the signature of an
  under-fitted size regression, which a median ratio alone shows only as a bias in one direction
  (when most objects lie on one side of the typical size). Needs image sizes and at least 3 pairs
  whose true sizes differ.
* **AP by object size**: COCO AP / AP50 / AP75 for objects binned by their size relative to the
  image, ``sqrt(box area / image area)`` (a YOLOv1 grid cell at S=7 is 0.14 of the side), computed by
  COCOeval with those area ranges on coordinates scaled per image to unit area (IoU does not change;
  COCO's rule holds: ground truth outside the range and unmatched detections outside it are
  ignored). Images of unknown size are left out of these rows (counted).
* **AP by objects per image**: COCO AP / AP50 / AP75 over the images holding 1, 2-3, 4+ (non-ignored)
  objects: groups of objects, where a grid detector loses objects sharing a cell.
* **Group boxes**: a detection that frames several objects of its class together, as one: at least
  two same-class objects lie mostly inside it (``GROUP_COVER``: 50% of each object's area), the box
  around those objects overlaps it at ``iou_match`` or more, and more than it overlaps any one of
  them. ``group_boxes`` counts them, ``grouped_objects`` the objects inside them left unmatched (lost
  to the group box), ``images_with_group_box`` the images with one. A detector trained mostly on
  photos with one large object tends to box a huddle of animals as one animal; the AP-by-count rows
  show that something is lost in groups, this says how.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from detkit.evaluation.base import ImageRecord
from detkit.evaluation.coco import _category_ids, coco_detections, coco_ground_truth, run_cocoeval
from detkit.evaluation.voc import _pairwise_iou

__all__ = ["box_fit_diagnostics", "format_diagnostics", "SIZE_EDGES", "COUNT_EDGES"]

SIZE_EDGES = (0.0, 0.1, 0.25, 0.5, math.inf)  # sqrt(box area / image area)
COUNT_EDGES = (1, 2, 4)  # objects per image: 1, 2-3, 4+
LOCALISATION_IOU = 0.1  # below it a detection has not found the object at all
GROUP_COVER = 0.5  # share of an object's area inside a detection for it to count as framed by it


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas ``[len(a), len(b)]`` of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(rb - lt, 0, None), axis=2)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of xyxy boxes (0 where the union is empty)."""
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match_image(rec: ImageRecord, score_threshold: float, iou_match: float) -> dict:
    """Greedy matching of one image (see the module docstring)."""
    keep = rec.det_scores >= score_threshold
    order = np.argsort(-rec.det_scores[keep], kind="stable")
    det_boxes, det_labels = rec.det_boxes[keep][order], rec.det_labels[keep][order]
    ignore = rec.difficult | rec.iscrowd
    iou = _iou(det_boxes, rec.gt_boxes)
    same = det_labels[:, None] == rec.gt_labels[None, :]
    matched_det = np.full(len(rec.gt_labels), -1)
    duplicates = false_positives = 0
    for d in range(len(det_labels)):
        candidates = np.where(same[d] & ~ignore & (matched_det < 0), iou[d], -1.0)
        g = int(np.argmax(candidates)) if candidates.size else -1
        if g >= 0 and candidates[g] >= iou_match:
            matched_det[g] = d
            continue
        overlaps = same[d] & (iou[d] >= iou_match)
        if (overlaps & ignore).any():
            continue
        if overlaps.any():
            duplicates += 1
        else:
            false_positives += 1
    best_same = np.where(same, iou, 0.0).max(axis=0) if len(det_labels) else np.zeros(len(rec.gt_labels))
    best_other = np.where(~same, iou, 0.0).max(axis=0) if len(det_labels) else np.zeros(len(rec.gt_labels))
    grouped = _group_boxes(det_boxes, rec.gt_boxes, same & ~ignore[None, :], iou, iou_match)
    return {"det_boxes": det_boxes, "matched_det": matched_det, "ignore": ignore, "best_same": best_same,
            "best_other": best_other, "duplicates": duplicates, "false_positives": false_positives,
            "num_dets": int(len(det_labels)), "group_boxes": len(grouped),
            "in_group_box": np.isin(np.arange(len(rec.gt_labels)), [g for gs in grouped for g in gs])}


def _group_boxes(det_boxes: np.ndarray, gt_boxes: np.ndarray, same: np.ndarray, iou: np.ndarray,
                 iou_match: float) -> list[np.ndarray]:
    """The ground truth each group box frames (see the module docstring), one array per group box.
    ``same``: ``[detections, objects]``, the objects of the detection's class that count."""
    if not len(det_boxes) or not len(gt_boxes):
        return []
    gt_area = np.maximum(_area(gt_boxes), 1e-12)
    covered = same & (_intersection(det_boxes, gt_boxes) >= GROUP_COVER * gt_area[None, :])
    groups = []
    for d in np.flatnonzero(covered.sum(axis=1) >= 2):
        inside = np.flatnonzero(covered[d])
        union = np.concatenate([gt_boxes[inside, :2].min(axis=0), gt_boxes[inside, 2:].max(axis=0)])[None]
        fit = _iou(det_boxes[d:d + 1], union)[0, 0]
        if fit >= iou_match and fit > iou[d, inside].max():
            groups.append(inside)
    return groups


def _quantiles(values: np.ndarray, prefix: str) -> dict:
    if values.size == 0:
        return {f"{prefix}_median": None, f"{prefix}_q1": None, f"{prefix}_q3": None}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {f"{prefix}_median": float(median), f"{prefix}_q1": float(q1), f"{prefix}_q3": float(q3)}


def _log_slope(true: np.ndarray, pred: np.ndarray) -> float | None:
    """Least-squares slope of ``log pred`` on ``log true`` (None: under 3 usable pairs or no spread)."""
    ok = (true > 0) & (pred > 0) & np.isfinite(true) & np.isfinite(pred)
    if ok.sum() < 3:
        return None
    x, y = np.log(true[ok]), np.log(pred[ok])
    var = float(np.var(x))
    if var < 1e-12:
        return None
    return float(np.mean((x - x.mean()) * (y - y.mean())) / var)


def _fit_stats(pairs_gt: np.ndarray, pairs_det: np.ndarray, best_iou: np.ndarray, image_wh: np.ndarray) -> dict:
    """IoU, size ratio, size slope and centre offset of matched (ground truth, detection) pairs ``[n, 4]``
    each; ``image_wh`` ``[n, 2]``: each pair's image width and height (NaN when unknown)."""
    ious = _pairwise_iou(pairs_det, pairs_gt, pixel_offset=0.0)  # row by row, not an n x n matrix
    gw, gh = pairs_gt[:, 2] - pairs_gt[:, 0], pairs_gt[:, 3] - pairs_gt[:, 1]
    dw, dh = pairs_det[:, 2] - pairs_det[:, 0], pairs_det[:, 3] - pairs_det[:, 1]
    dx = ((pairs_det[:, 0] + pairs_det[:, 2]) - (pairs_gt[:, 0] + pairs_gt[:, 2])) / 2 / gw
    dy = ((pairs_det[:, 1] + pairs_det[:, 3]) - (pairs_gt[:, 1] + pairs_gt[:, 3])) / 2 / gh
    out = {}
    out.update(_quantiles(ious, "iou"))
    out["iou_mean"] = float(ious.mean()) if ious.size else None
    out["iou_ge_75"] = float((ious >= 0.75).mean()) if ious.size else None
    out.update(_quantiles(dw / gw, "width_ratio"))
    out.update(_quantiles(dh / gh, "height_ratio"))
    out["width_size_slope"] = _log_slope(gw / image_wh[:, 0], dw / image_wh[:, 0])
    out["height_size_slope"] = _log_slope(gh / image_wh[:, 1], dh / image_wh[:, 1])
    out.update(_quantiles(dx, "center_offset_x"))
    out.update(_quantiles(dy, "center_offset_y"))
    out["center_offset_abs_x_median"] = float(np.median(np.abs(dx))) if dx.size else None
    out["center_offset_abs_y_median"] = float(np.median(np.abs(dy))) if dy.size else None
    out.update(_quantiles(best_iou, "best_iou"))
    return out


def _bin_label(lo, hi, integer: bool) -> str:
    if integer:
        return f"{lo}+" if hi is None else (f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}")
    return f">={lo:g}" if math.isinf(hi) else f"{lo:g}-{hi:g}"


def _coco_aps(records: Sequence[ImageRecord], class_names, area_ranges=None) -> list[dict]:
    """COCO AP, AP50, AP75 (area range by area range) of ``records``; None where nothing is defined."""
    cat_ids = _category_ids(None, len(class_names))
    gt = coco_ground_truth(records, class_names, cat_ids)
    dets = coco_detections(records, cat_ids)
    _, precision, _ = run_cocoeval(gt, dets, "pycocotools", area_ranges=area_ranges or [(0, 1e10)])
    out = []
    for a in range(precision.shape[3]):
        p = precision[:, :, :, a, -1]  # [IoU thresholds, recall points, classes], 100 detections

        def mean(x):
            return float(x[x > -1].mean()) if (x > -1).any() else None

        out.append({"coco_ap": mean(p), "coco_ap50": mean(p[0]), "coco_ap75": mean(p[5])})
    return out


def _scaled(rec: ImageRecord, size) -> ImageRecord:
    """The record with its boxes in units of sqrt(image area): areas become fractions of the image."""
    s = 1.0 / math.sqrt(size[0] * size[1])
    return ImageRecord(image_id=rec.image_id, gt_boxes=rec.gt_boxes * s, gt_labels=rec.gt_labels,
                       difficult=rec.difficult, iscrowd=rec.iscrowd, gt_area=None, det_boxes=rec.det_boxes * s,
                       det_scores=rec.det_scores, det_labels=rec.det_labels)


def box_fit_diagnostics(records: Sequence[ImageRecord], class_names: Sequence[str],
                        image_sizes: Mapping | None = None, *, score_threshold: float = 0.25,
                        iou_match: float = 0.5, size_edges: Sequence[float] = SIZE_EDGES,
                        count_edges: Sequence[int] = COUNT_EDGES) -> dict:
    """The diagnostics of the module docstring. ``records``: the evaluator's images (original pixels);
    ``image_sizes``: ``image_id -> (height, width)`` (needed for the object-size rows)."""
    image_sizes = dict(image_sizes or {})
    matches = [_match_image(r, score_threshold, iou_match) for r in records]

    pairs_gt, pairs_det, best, gt_size, gt_image_count, gt_matched = [], [], [], [], [], []
    pair_image_wh = []  # (width, height) of each matched pair's image, NaN when unknown
    outcome = {"matched": 0, "localization_misses": 0, "class_confusions": 0, "missed": 0}
    grouped_objects = 0
    for rec, m in zip(records, matches):
        real = ~m["ignore"]
        size = image_sizes.get(rec.image_id)
        sides = np.sqrt(np.prod(rec.gt_boxes[:, 2:] - rec.gt_boxes[:, :2], axis=1) / (size[0] * size[1])) \
            if size else np.full(len(rec.gt_labels), np.nan)
        for g in np.flatnonzero(real):
            d = m["matched_det"][g]
            if d >= 0:
                outcome["matched"] += 1
                pairs_gt.append(rec.gt_boxes[g])
                pairs_det.append(m["det_boxes"][d])
                pair_image_wh.append((size[1], size[0]) if size else (np.nan, np.nan))
            elif m["best_other"][g] >= iou_match:  # boxed well, but under another class
                outcome["class_confusions"] += 1
            elif m["best_same"][g] >= LOCALISATION_IOU:
                outcome["localization_misses"] += 1
            else:
                outcome["missed"] += 1
            grouped_objects += int(d < 0 and m["in_group_box"][g])
            best.append(m["best_same"][g])
            gt_matched.append(d >= 0)
            gt_size.append(sides[g])
            gt_image_count.append(int(real.sum()))
    num_gt = sum(outcome.values())
    pairs_gt = np.asarray(pairs_gt, np.float64).reshape(-1, 4)
    pairs_det = np.asarray(pairs_det, np.float64).reshape(-1, 4)
    summary = {
        "num_images": len(records),
        "num_gt": num_gt,
        "num_detections_at_conf": sum(m["num_dets"] for m in matches),
        **outcome,
        "duplicates": sum(m["duplicates"] for m in matches),
        "false_positives": sum(m["false_positives"] for m in matches),
        "recall_at_conf": outcome["matched"] / num_gt if num_gt else None,
        "group_boxes": sum(m["group_boxes"] for m in matches),
        "grouped_objects": grouped_objects,
        "images_with_group_box": sum(m["group_boxes"] > 0 for m in matches),
    }
    counts = {**outcome, "grouped_objects": grouped_objects}
    for key in ("localization_misses", "class_confusions", "missed", "grouped_objects"):
        summary[f"{key}_fraction"] = counts[key] / num_gt if num_gt else None
    summary.update(_fit_stats(pairs_gt, pairs_det, np.asarray(best, np.float64),
                              np.asarray(pair_image_wh, np.float64).reshape(-1, 2)))

    # AP by object size: COCOeval on per-image unit-area coordinates, one area range per bin
    sized = [_scaled(r, image_sizes[r.image_id]) for r in records if image_sizes.get(r.image_id)]
    ranges = [(lo * lo, hi * hi if math.isfinite(hi) else 1e10) for lo, hi in zip(size_edges[:-1], size_edges[1:])]
    size_aps = _coco_aps(sized, class_names, ranges) if sized else [{} for _ in ranges]
    gt_size = np.asarray(gt_size, np.float64)
    best = np.asarray(best, np.float64)
    gt_matched = np.asarray(gt_matched, bool)

    def subset_stats(inside: np.ndarray) -> dict:
        return {"recall_at_conf": float(gt_matched[inside].mean()) if inside.any() else None,
                "best_iou_median": float(np.median(best[inside])) if inside.any() else None}

    by_size = []
    for (lo, hi), aps in zip(zip(size_edges[:-1], size_edges[1:]), size_aps):
        inside = (gt_size >= lo) & (gt_size < hi)
        by_size.append({"bin": _bin_label(lo, hi, False), "range": [lo, None if math.isinf(hi) else hi],
                        "num_gt": int(inside.sum()), **aps, **subset_stats(inside)})

    # AP by objects per image
    counts = np.asarray([int((~m["ignore"]).sum()) for m in matches])
    by_count = []
    edges = list(count_edges) + [None]
    gt_image_count = np.asarray(gt_image_count)
    for lo, hi in zip(edges[:-1], edges[1:]):
        chosen = [r for r, c in zip(records, counts) if c >= lo and (hi is None or c < hi)]
        aps = _coco_aps(chosen, class_names)[0] if chosen else {}
        inside = (gt_image_count >= lo) & ((gt_image_count < hi) if hi is not None else True)
        by_count.append({"bin": _bin_label(lo, hi, True), "num_images": len(chosen), "num_gt": int(inside.sum()),
                         **aps, **subset_stats(inside)})

    return {
        "settings": {"score_threshold": score_threshold, "iou_match": iou_match,
                     "localization_iou": LOCALISATION_IOU, "group_cover": GROUP_COVER,
                     "size_edges": [None if math.isinf(e) else e for e in size_edges],
                     "count_edges": list(count_edges)},
        "summary": summary,
        "by_size": by_size,
        "by_objects_per_image": by_count,
        "images_without_size": len(records) - len(sized),
    }


def _f(value, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_diagnostics(diag: Mapping) -> str:
    """A short text summary of :func:`box_fit_diagnostics` (printed by ``detkit eval``)."""
    s, cfg = diag["summary"], diag["settings"]
    lines = [
        f"box fit (detections scoring >= {cfg['score_threshold']:g}, matched at IoU >= {cfg['iou_match']:g}; "
        f"{s['num_gt']} objects in {s['num_images']} images):",
        f"  recall {_f(s['recall_at_conf'])}: {s['matched']} matched, {s['localization_misses']} found but "
        f"IoU < {cfg['iou_match']:g}, {s['class_confusions']} under another class, {s['missed']} missed; "
        f"{s['duplicates']} duplicates, {s['false_positives']} false positives",
        f"  matched IoU median {_f(s['iou_median'])} (q1 {_f(s['iou_q1'])}, q3 {_f(s['iou_q3'])}), "
        f"{_f(s['iou_ge_75'])} of them >= 0.75; every object's best IoU: median {_f(s['best_iou_median'])}",
        f"  predicted / true size: width x{_f(s['width_ratio_median'])} (q1 {_f(s['width_ratio_q1'])}, q3 "
        f"{_f(s['width_ratio_q3'])}), height x{_f(s['height_ratio_median'])} (q1 {_f(s['height_ratio_q1'])}, "
        f"q3 {_f(s['height_ratio_q3'])})",
        f"  size slope, log predicted vs log true (1 = sizes follow the objects, < 1 = pulled toward a "
        f"typical size): width {_f(s.get('width_size_slope'))}, height {_f(s.get('height_size_slope'))}",
        f"  centre offset (median, in true widths / heights): x {_f(s['center_offset_x_median'], signed=True)}, "
        f"y {_f(s['center_offset_y_median'], signed=True)}; |offset| median x "
        f"{_f(s['center_offset_abs_x_median'])}, y {_f(s['center_offset_abs_y_median'])}",
    ]
    if s.get("group_boxes"):
        lines.append(f"  group boxes: {s['group_boxes']} detection(s) in {s['images_with_group_box']} image(s) frame "
                     f"2+ objects together as one; {s['grouped_objects']} object(s) inside them unmatched")
    for title, key, count in (("by object size, sqrt(box area / image area)", "by_size", "num_gt"),
                              ("by objects per image", "by_objects_per_image", "num_images")):
        parts = [f"{row['bin']}: {row[count]} {'objects' if count == 'num_gt' else 'images'}, AP "
                 f"{_f(row.get('coco_ap'))} / AP50 {_f(row.get('coco_ap50'))} / AP75 {_f(row.get('coco_ap75'))}"
                 for row in diag[key]]
        lines.append(f"  {title}: " + "; ".join(parts))
    if diag.get("images_without_size"):
        lines.append(f"  ({diag['images_without_size']} image(s) of unknown size left out of the size rows)")
    return "\n".join(lines)
