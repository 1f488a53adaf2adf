"""Box-fit diagnostics (detkit/evaluation/diagnostics.py) on constructed images with hand-computed
values, and their place in `detkit eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detkit.evaluation.base import ImageRecord
from detkit.evaluation.coco import COCOEvaluator
from detkit.evaluation.diagnostics import box_fit_diagnostics, format_diagnostics


def record(image_id, gt, gt_labels, dets, scores, det_labels, difficult=None):
    gt = np.asarray(gt, np.float64).reshape(-1, 4)
    return ImageRecord(
        image_id=image_id, gt_boxes=gt, gt_labels=np.asarray(gt_labels, np.int64),
        difficult=np.zeros(len(gt), bool) if difficult is None else np.asarray(difficult, bool),
        iscrowd=np.zeros(len(gt), bool), gt_area=None,
        det_boxes=np.asarray(dets, np.float64).reshape(-1, 4), det_scores=np.asarray(scores, np.float64),
        det_labels=np.asarray(det_labels, np.int64))


@pytest.fixture
def records():
    one = record(
        1,
        gt=[[0, 0, 10, 10],      # A: matched, IoU 100/125 = 0.8, 25% too tall, centre +0.125 h lower
            [50, 50, 70, 70],    # B: matched, IoU 360/440, centre 0.1 w to the right
            [0, 50, 20, 90],     # C: found but IoU 300/800 = 0.375: a localisation miss
            [80, 0, 100, 20]],   # D: difficult, a detection on it is neither right nor wrong
        gt_labels=[0, 0, 0, 0],
        dets=[[0, 0, 10, 12.5], [52, 50, 72, 70], [0, 50, 20, 65], [0, 0, 10, 11],  # duplicate of A
              [30, 0, 40, 10],   # false positive
              [80, 0, 100, 20],  # on the difficult D: ignored
              [50, 50, 70, 70]], # scores below the threshold: not a box the user sees
        scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.1], det_labels=[0, 0, 0, 0, 0, 0, 0],
        difficult=[False, False, False, True])
    two = record(2, gt=[[10, 10, 30, 30], [60, 60, 80, 80]], gt_labels=[0, 1],
                 dets=[[10, 10, 30, 30]], scores=[0.9], det_labels=[1])  # E under another class; F missed
    return [one, two]


def test_counts_and_fit_of_matched_boxes_are_the_hand_computed_ones(records):
    diag = box_fit_diagnostics(records, ["a", "b"], {1: (100, 100), 2: (100, 100)})
    s = diag["summary"]
    assert (s["num_gt"], s["matched"], s["localization_misses"], s["class_confusions"], s["missed"]) == (5, 2, 1, 1, 1)
    # false positives: the stray box, the one on C (IoU too low) and the one on E (wrong class)
    assert (s["duplicates"], s["false_positives"]) == (1, 3)
    assert s["num_detections_at_conf"] == 7 and s["recall_at_conf"] == pytest.approx(2 / 5)
    assert s["localization_misses_fraction"] == pytest.approx(1 / 5)
    ious = [0.8, 360 / 440]
    assert s["iou_median"] == pytest.approx(np.median(ious))
    assert s["iou_q1"] == pytest.approx(np.percentile(ious, 25))
    assert s["iou_ge_75"] == 1.0 and s["iou_mean"] == pytest.approx(np.mean(ious))
    assert s["width_ratio_median"] == pytest.approx(1.0)
    assert s["height_ratio_median"] == pytest.approx((1.25 + 1.0) / 2)
    assert s["center_offset_x_median"] == pytest.approx(0.05)  # (0 + 0.1) / 2
    assert s["center_offset_y_median"] == pytest.approx(0.0625)  # (0.125 + 0) / 2
    # every object's best same-class IoU: A .909 (the duplicate fits better), B .818, C .375, E 0, F 0
    assert s["best_iou_median"] == pytest.approx(0.375)
    text = format_diagnostics(diag)
    assert "recall 0.40: 2 matched, 1 found but IoU < 0.5, 1 under another class, 1 missed" in text
    assert "height x1.12" in text


def test_size_slope_measures_sizes_pulled_toward_a_typical_size():
    # Images 200 wide, 100 high; true widths 20..160 px; predicted relative widths = sqrt(true relative
    # width) * 0.6, i.e. slope 0.5 in log-log (pulled toward 0.36 of the width), heights exact.
    recs, sizes = [], {}
    for i, w in enumerate([20.0, 40.0, 80.0, 120.0, 160.0]):
        pw = 200 * 0.6 * np.sqrt(w / 200)
        cx = 100.0
        recs.append(record(i, gt=[[cx - w / 2, 20, cx + w / 2, 80]], gt_labels=[0],
                           dets=[[cx - pw / 2, 20, cx + pw / 2, 80]], scores=[0.9], det_labels=[0]))
        sizes[i] = (100, 200)
    s = box_fit_diagnostics(recs, ["a"], sizes, iou_match=0.1)["summary"]
    assert s["matched"] == 5
    assert s["width_size_slope"] == pytest.approx(0.5)
    assert s["height_size_slope"] is None  # every true height is the same: no slope to fit
    # small boxes too wide, large ones too narrow: a median ratio alone would show neither
    assert s["width_ratio_q3"] > 1 > s["width_ratio_q1"]
    text = format_diagnostics({"summary": s, "settings": {"score_threshold": 0.25, "iou_match": 0.1},
                               "by_size": [], "by_objects_per_image": []})
    assert "width 0.50, height -" in text
    # without image sizes the slope is not computed (sizes relative to the image are unknown)
    assert box_fit_diagnostics(recs, ["a"], None, iou_match=0.1)["summary"]["width_size_slope"] is None


def test_ap_by_object_size_uses_the_size_relative_to_the_image():
    # image 1 is 100x100, image 2 is 400x400: the same 20-pixel box is 0.2 of one and 0.05 of the other
    small = record(2, gt=[[0, 0, 20, 20]], gt_labels=[0], dets=[[0, 0, 20, 20]], scores=[0.9], det_labels=[0])
    # IoU 0.62 (a 20x20 box against 20x12.4 inside it): passes thresholds .5 .55 .6 of ten -> AP 0.3
    medium = record(1, gt=[[0, 0, 20, 20]], gt_labels=[0], dets=[[0, 0, 20, 12.4]], scores=[0.9], det_labels=[0])
    diag = box_fit_diagnostics([medium, small], ["a"], {1: (100, 100), 2: (400, 400)},
                               size_edges=(0.0, 0.1, 0.3, np.inf))
    rows = {row["bin"]: row for row in diag["by_size"]}
    assert [r["num_gt"] for r in diag["by_size"]] == [1, 1, 0]
    assert rows["0-0.1"]["coco_ap"] == pytest.approx(1.0) and rows["0-0.1"]["coco_ap75"] == pytest.approx(1.0)
    assert rows["0.1-0.3"]["coco_ap"] == pytest.approx(0.3) and rows["0.1-0.3"]["coco_ap50"] == pytest.approx(1.0)
    assert rows["0.1-0.3"]["coco_ap75"] == pytest.approx(0.0)
    assert rows[">=0.3"]["coco_ap"] is None  # no object of that size: undefined, not 0
    # an image of unknown size is left out of the size rows, and counted
    diag = box_fit_diagnostics([medium, small], ["a"], {1: (100, 100)}, size_edges=(0.0, 0.1, 0.3, np.inf))
    assert diag["images_without_size"] == 1 and [r["num_gt"] for r in diag["by_size"]] == [0, 1, 0]


def test_ap_by_objects_per_image_equals_the_coco_metric_on_those_images(records):
    crowded = record(3, gt=[[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]],
                     gt_labels=[0, 0, 0, 0], dets=[[0, 0, 10, 10], [20, 0, 31, 10], [40, 0, 46, 10]],
                     scores=[0.9, 0.8, 0.7], det_labels=[0, 0, 0])
    alone = record(4, gt=[[0, 0, 50, 50]], gt_labels=[1], dets=[[5, 0, 50, 50]], scores=[0.6], det_labels=[1])
    everything = records + [crowded, alone]
    diag = box_fit_diagnostics(everything, ["a", "b"], {})
    rows = {row["bin"]: row for row in diag["by_objects_per_image"]}
    assert {k: rows[k]["num_images"] for k in rows} == {"1": 1, "2-3": 2, "4+": 1}
    # image 1 holds 3 real objects (D is difficult): it sits in "2-3" with image 2
    for name, chosen in (("1", [alone]), ("2-3", records), ("4+", [crowded])):
        reference = COCOEvaluator(["a", "b"], backend="pycocotools")
        for r in chosen:
            reference.update([{"boxes": r.det_boxes, "scores": r.det_scores, "labels": r.det_labels}],
                             [{"boxes": r.gt_boxes, "labels": r.gt_labels, "difficult": r.difficult,
                               "image_id": r.image_id}])
        expected = reference.compute()
        for key in ("coco_ap", "coco_ap50", "coco_ap75"):
            assert rows[name][key] == pytest.approx(expected[key]), (name, key)
    assert rows["4+"]["recall_at_conf"] == pytest.approx(3 / 4)  # IoUs 1, 10/11, 6/10; the 4th has none


def test_detkit_eval_prints_and_writes_the_diagnostics(tmp_path, capsys):
    from test_runner import tiny_cfg
    from test_trainer import TinyDataset, TinyDet

    from detkit import registry
    from detkit.engine.runner import train
    from detkit.evaluation.run import evaluate

    with registry.register("detectors", "tiny_test_det", TinyDet), \
            registry.register("datasets", "tiny_test_ds", TinyDataset):
        cfg = tiny_cfg(epochs=1, eval_interval=0)
        summary = train(cfg, work_dir=tmp_path / "w", device="cpu")
        evaluate(cfg, summary["last_checkpoint"], metric="coco", device="cpu",
                 diagnostics_out=tmp_path / "diagnostics.json")
    written = json.loads((tmp_path / "diagnostics.json").read_text())
    assert written["summary"]["num_gt"] == 6 and written["summary"]["num_images"] == 6
    assert {row["bin"] for row in written["by_objects_per_image"]} == {"1", "2-3", "4+"}
    assert "box fit (detections scoring >= 0.25" in capsys.readouterr().out


def test_a_box_around_two_objects_counts_as_a_group_box():
    # Two objects side by side; one detection frames both: IoU 200/400 = 0.5 with each (it matches
    # the first, ties go to the first listed), 1.0 with the box around both, so the second is lost.
    both = record(1, gt=[[0, 0, 10, 20], [10, 0, 20, 20]], gt_labels=[0, 0],
                  dets=[[0, 0, 20, 20]], scores=[0.9], det_labels=[0])
    diag = box_fit_diagnostics([both], ["a"], {1: (20, 20)})
    s = diag["summary"]
    assert (s["matched"], s["group_boxes"], s["grouped_objects"], s["images_with_group_box"]) == (1, 1, 1, 1)
    assert s["grouped_objects_fraction"] == 0.5
    assert "group boxes: 1 detection(s) in 1 image(s)" in format_diagnostics(diag)
    not_groups = [
        # each object boxed on its own
        record(2, gt=[[0, 0, 10, 20], [10, 0, 20, 20]], gt_labels=[0, 0], dets=[[0, 0, 10, 20], [10, 0, 20, 20]],
               scores=[0.9, 0.8], det_labels=[0, 0]),
        # two tiny objects inside a huge box: the box around them (10x10) overlaps it at 100/900 only
        record(3, gt=[[0, 0, 2, 2], [8, 8, 10, 10]], gt_labels=[0, 0], dets=[[0, 0, 30, 30]], scores=[0.9],
               det_labels=[0]),
        # the second object is of another class, or difficult: not part of a group of this class
        record(4, gt=[[0, 0, 10, 20], [10, 0, 20, 20]], gt_labels=[0, 1], dets=[[0, 0, 20, 20]], scores=[0.9],
               det_labels=[0]),
        record(5, gt=[[0, 0, 10, 20], [10, 0, 20, 20]], gt_labels=[0, 0], dets=[[0, 0, 20, 20]], scores=[0.9],
               det_labels=[0], difficult=[False, True]),
        # under the score threshold: not a box the user sees
        record(6, gt=[[0, 0, 10, 20], [10, 0, 20, 20]], gt_labels=[0, 0], dets=[[0, 0, 20, 20]], scores=[0.1],
               det_labels=[0]),
    ]
    diag = box_fit_diagnostics(not_groups, ["a", "b"], {})
    s = diag["summary"]
    assert (s["group_boxes"], s["grouped_objects"], s["images_with_group_box"]) == (0, 0, 0)
    assert "group boxes" not in format_diagnostics(diag)
