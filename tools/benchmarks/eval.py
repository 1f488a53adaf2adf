"""Evaluation speed: detkit's VOC evaluator vs the slow devkit transcription; COCO backends.

    python tools/bench.py eval [--images 5000] [--classes 20] [--dets-per-image 30] [--seed 0]
                               [--skip-reference] [--skip-coco]

On one synthetic data set (VOC-like: ~3 objects per image, 10% difficult, detections = jittered
copies of the objects plus background boxes, torch tensors as a detector returns them):

* VOC AP (07 + area from one pass): ``VOCEvaluator`` (update from tensors + compute) vs
  ``tests/voc_reference.py`` (the devkit's voc_eval, Python loops, fed the boxes in VOC XML's
  inclusive convention), which the tests also use. The two must agree to 1e-9; the ratio is printed.
* COCO AP: ``COCOEvaluator`` with ``backend='pycocotools'`` vs ``backend='faster'``
  (faster-coco-eval), same numbers expected.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np


def make_data(num_images: int, num_classes: int, dets_per_image: int, seed: int):
    import torch

    rng = np.random.default_rng(seed)
    detections, targets, images = [], [], []
    for n in range(num_images):
        k = int(rng.integers(1, 6))
        xy = rng.uniform(0, 400, (k, 2))
        wh = rng.uniform(10, 200, (k, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, num_classes, k)
        difficult = rng.random(k) < 0.1
        m_obj = min(dets_per_image // 2, 2 * k)
        owner = rng.integers(0, k, m_obj)
        boxes = gt[owner] + rng.normal(0, 0.1, (m_obj, 4)) * np.concatenate([wh[owner], wh[owner]], 1)
        det_labels = np.where(rng.random(m_obj) < 0.8, labels[owner], rng.integers(0, num_classes, m_obj))
        m_bg = dets_per_image - m_obj
        p = rng.uniform(0, 450, (m_bg, 2))
        boxes = np.concatenate([boxes, np.concatenate([p, p + rng.uniform(10, 150, (m_bg, 2))], 1)])
        det_labels = np.concatenate([det_labels, rng.integers(0, num_classes, m_bg)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, m_obj), rng.uniform(0.0, 0.6, m_bg)])
        boxes32, scores32 = boxes.astype(np.float32), scores.astype(np.float32)
        detections.append(dict(boxes=torch.from_numpy(boxes32), scores=torch.from_numpy(scores32),
                               labels=torch.from_numpy(det_labels.astype(np.int64))))
        targets.append(dict(boxes=torch.from_numpy(gt.astype(np.float32)),
                            labels=torch.from_numpy(labels.astype(np.int64)),
                            difficult=torch.from_numpy(difficult), iscrowd=torch.zeros(k, dtype=torch.bool),
                            image_id=n))
        # the devkit reads the same float32 values as float64, in VOC XML's 1-based inclusive convention
        # (detkit boxes are xmin - 1, ymin - 1, xmax, ymax: shift back, as detectron2 does)
        to_xml = np.array([1.0, 1.0, 0.0, 0.0])
        images.append(dict(gt_boxes=gt.astype(np.float32).astype(np.float64) + to_xml, gt_labels=labels,
                           difficult=difficult, det_boxes=boxes32.astype(np.float64) + to_xml,
                           det_scores=scores32.astype(np.float64), det_labels=det_labels))
    return detections, targets, images


def _timed(fn, repeat: int = 1):
    """Best wall time of ``repeat`` runs (the machine may be shared), garbage collected before each."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main(argv: list[str]) -> list[tuple[str, str]]:
    parser = argparse.ArgumentParser(prog="bench.py eval", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--dets-per-image", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="images per update() call")
    parser.add_argument("--repeat", type=int, default=3, help="report the best of this many runs of each")
    parser.add_argument("--skip-reference", action="store_true", help="skip the slow devkit transcription")
    parser.add_argument("--skip-coco", action="store_true")
    args = parser.parse_args(argv)

    from detkit.evaluation import COCOEvaluator, VOCEvaluator

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the reference is not shipped
    from voc_reference import voc_eval_all_reference

    names = [f"class{i}" for i in range(args.classes)]
    dets, targets, images = make_data(args.images, args.classes, args.dets_per_image, args.seed)
    total_dets = sum(len(d["labels"]) for d in dets)
    total_gts = sum(len(t["labels"]) for t in targets)
    print(f"data: {args.images} images, {args.classes} classes, {total_gts} objects, {total_dets} detections")

    compute_times: dict[tuple, list[float]] = {}
    rows = []  # what the README's benchmark table shows (see tools/bench.py --record)

    def ours(metrics_wanted):
        ev = VOCEvaluator(names, metrics=metrics_wanted)
        for i in range(0, len(dets), args.batch_size):
            ev.update(dets[i:i + args.batch_size], targets[i:i + args.batch_size])
        start = time.perf_counter()
        metrics = ev.compute()
        compute_times.setdefault(metrics_wanted, []).append(time.perf_counter() - start)
        return metrics

    metrics, t_ours = _timed(lambda: ours(("voc07", "voc")), args.repeat)
    _, t_ours07 = _timed(lambda: ours(("voc07",)), args.repeat)
    t_compute, t_compute07 = min(compute_times[("voc07", "voc")]), min(compute_times[("voc07",)])
    print(f"VOCEvaluator 07 + area (one pass): {t_ours:8.3f} s  (compute alone {t_compute:.3f} s)"
          f"    voc07={metrics['voc07_ap50']:.4f} voc={metrics['voc_ap50']:.4f}")
    print(f"VOCEvaluator 07 only:              {t_ours07:8.3f} s  (compute {t_compute07:.3f} s)")

    if not args.skip_reference:
        ref07, t_ref07 = _timed(lambda: voc_eval_all_reference(images, args.classes, 0.5, True), args.repeat)
        ref10, t_ref10 = _timed(lambda: voc_eval_all_reference(images, args.classes, 0.5, False), args.repeat)
        err = max(np.max(np.abs(np.array([metrics["per_class_voc07"][n] for n in names]) - ref07)),
                  np.max(np.abs(np.array([metrics["per_class_voc"][n] for n in names]) - ref10)))
        print(f"slow devkit reference, 07:         {t_ref07:8.3f} s  voc07={np.mean(ref07):.4f}")
        print(f"slow devkit reference, area:       {t_ref10:8.3f} s  voc={np.mean(ref10):.4f}  "
              f"max |AP diff| vs VOCEvaluator = {err:.1e}")
        print(f"speed-up vs reference (07 only, update + compute): {t_ref07 / t_ours07:.1f}x; "
              f"07 + area: {(t_ref07 + t_ref10) / t_ours:.1f}x; compute alone (07): {t_ref07 / t_compute07:.1f}x")
        if err > 1e-9:
            print("WARNING: VOCEvaluator and the reference disagree")
        rows.append((f"VOC07 and area AP on {args.images:,} images vs the devkit-rules reference",
                     f"{t_ref07 / t_ours07:.1f}× (07 only), {(t_ref07 + t_ref10) / t_ours:.1f}× (07 + area) "
                     f"faster, max AP difference {err:.0e}"))

    if not args.skip_coco:
        results = {}
        for backend in ("pycocotools", "faster"):
            def run():
                ev = COCOEvaluator(names, backend=backend)
                for i in range(0, len(dets), args.batch_size):
                    ev.update(dets[i:i + args.batch_size], targets[i:i + args.batch_size])
                return ev.compute()

            results[backend] = _timed(run, 1 if backend == "pycocotools" else args.repeat)
        (m_py, t_py), (m_fast, t_fast) = results["pycocotools"], results["faster"]
        diff = max(abs(m_py[k] - m_fast[k]) for k in ("coco_ap", "coco_ap50", "coco_ap75", "coco_ar100"))
        print(f"COCOEvaluator pycocotools:     {t_py:8.3f} s  coco_ap={m_py['coco_ap']:.4f}")
        print(f"COCOEvaluator faster-coco-eval: {t_fast:7.3f} s  coco_ap={m_fast['coco_ap']:.4f}  "
              f"max |diff| = {diff:.1e}")
        print(f"speed-up faster-coco-eval vs pycocotools: {t_py / t_fast:.1f}x")
        rows.append((f"COCO AP on {args.images:,} images, faster-coco-eval vs pycocotools",
                     f"{t_py / t_fast:.1f}× faster, max difference {diff:.0e}"))
    return rows
