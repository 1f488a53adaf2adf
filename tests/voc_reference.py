"""The slow reference for Pascal VOC AP: a line-by-line transcription of the devkit's ``voc_eval``.

Not part of detkit (so it lives beside the tests and is not shipped). It exists so that the tests
(tests/test_eval_voc.py) and the benchmark (tools/benchmarks/eval.py) check
:class:`detkit.evaluation.VOCEvaluator` against one independent implementation written straight from the devkit's rules, with Python loops and no shared code:
``voc_eval.py`` of py-faster-rcnn / detectron2 (itself a port of the MATLAB ``VOCevaldet.m``),
reading per-image dicts instead of XML and results files.

Two deliberate differences from that file, both stated in :mod:`detkit.evaluation.voc`:

* detections are ranked with a *stable* sort over ``-score`` (MATLAB ``sort`` is stable; the Python
  port's default quicksort is not, which makes its tie order arbitrary);
* a class without non-difficult ground truth gets AP 0 (the Python port divides by ``npos = 0``).

And one extension: ground truth flagged ``iscrowd`` is handled like ``difficult``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["voc_ap_reference", "voc_eval_reference", "write_results_reference", "voc_eval_all_reference"]


def voc_ap_reference(rec, prec, use_07_metric=False):
    """The devkit's ``voc_ap``, unchanged."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def write_results_reference(images, num_classes):
    """The per-class "results files" of the devkit: for each class, ``(image index, score, box)``
    lines, image by image, in one pass over the detections."""
    files = [[] for _ in range(num_classes)]
    for imagename, rec in enumerate(images):
        for m in range(len(rec["det_labels"])):
            files[int(rec["det_labels"][m])].append(
                (imagename, float(rec["det_scores"][m]), [float(z) for z in rec["det_boxes"][m]]))
    return files


def voc_eval_all_reference(images, num_classes, ovthresh=0.5, use_07_metric=False):
    """AP of every class, as the devkit's driver does: write the results files, then ``voc_eval``
    per class."""
    files = write_results_reference(images, num_classes)
    return [voc_eval_reference(images, c, ovthresh, use_07_metric, lines=files[c]) for c in range(num_classes)]


def voc_eval_reference(images, classname, ovthresh=0.5, use_07_metric=False, lines=None, details=False):
    """AP of class ``classname`` over ``images``, a list of per-image dicts (in results-file order):

    ``dict(gt_boxes=[K,4], gt_labels=[K], difficult=[K], iscrowd=[K] (optional),
    det_boxes=[M,4], det_scores=[M], det_labels=[M])`` as numpy arrays, boxes xyxy in pixels
    (inclusive convention: width = x2 - x1 + 1). ``lines``: this class's results file from
    :func:`write_results_reference` (computed here when not given). ``details``: return
    ``dict(ap, tp, fp, confidence, rec, prec, npos)`` (per ranked detection) instead of the AP.
    """
    # extract gt objects for this class
    class_recs = {}
    npos = 0
    for imagename, rec in enumerate(images):
        keep = [k for k in range(len(rec["gt_labels"])) if rec["gt_labels"][k] == classname]
        bbox = np.array([rec["gt_boxes"][k] for k in keep]).reshape(-1, 4)
        crowd = rec.get("iscrowd")
        difficult = np.array(
            [bool(rec["difficult"][k]) or (crowd is not None and bool(crowd[k])) for k in keep]
        ).astype(bool)
        det = [False] * len(keep)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}

    # read dets (the results file lists them image by image)
    if lines is None:
        lines = [(imagename, float(rec["det_scores"][m]), [float(z) for z in rec["det_boxes"][m]])
                 for imagename, rec in enumerate(images)
                 for m in range(len(rec["det_labels"])) if rec["det_labels"][m] == classname]
    image_ids = [x[0] for x in lines]
    confidence = np.array([x[1] for x in lines])
    BB = np.array([x[2] for x in lines]).reshape(-1, 4)

    # sort by confidence
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]

    # go down dets and mark TPs and FPs
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)

        if BBGT.size > 0:
            # compute overlaps
            # intersection
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih

            # union
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)

            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)

        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0

    if details:
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        rec = ctp / float(npos) if npos else np.zeros(nd)
        return {"ap": voc_ap_reference(rec, prec, use_07_metric) if npos else 0.0, "tp": tp, "fp": fp,
                "confidence": confidence[sorted_ind], "rec": rec, "prec": prec, "npos": int(npos)}
    if npos == 0:
        return 0.0

    # compute precision recall
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    # avoid divide by zero in case the first detection matches a difficult
    # ground truth
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = voc_ap_reference(rec, prec, use_07_metric)
    return float(ap)
