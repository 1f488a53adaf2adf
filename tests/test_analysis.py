"""Evaluation diagnostics: the confusion matrix and PR / F1 curves against the devkit-rules reference
(tests/voc_reference.py), a hand-counted confusion matrix, the per-class table and report, and the
figures (PR, F1, confusion, data statistics, mosaics, loss on a log scale) as real PNGs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from test_eval_voc import NAMES, as_inputs, random_dataset

from detkit.evaluation import VOCEvaluator
from detkit.evaluation.analysis import analyse, confusion_matrix, format_report, per_class_rows
from voc_reference import voc_eval_reference


def inclusive_records(images):
    """The records a VOC evaluator collects, in its (image-id) order, boxes in the devkit's inclusive
    convention so that the reference (which adds 1 to widths) and pixel_offset=1 compute the same IoU."""
    ev = VOCEvaluator(NAMES, box_convention="inclusive")
    ev.update(*as_inputs(images))
    return ev.sorted_records(), ev


def reference(records, c, ovthresh=0.5):
    images = [dict(gt_boxes=r.gt_boxes, gt_labels=r.gt_labels, difficult=r.difficult, det_boxes=r.det_boxes,
                   det_scores=r.det_scores, det_labels=r.det_labels) for r in records]
    return voc_eval_reference(images, c, ovthresh, details=True)


@pytest.mark.parametrize("seed,iou,score", [(0, 0.5, 0.25), (1, 0.5, 0.0), (2, 0.3, 0.55), (3, 0.7, 0.4)])
def test_confusion_matrix_counts_are_the_voc_matchers(seed, iou, score):
    records, _ = inclusive_records(random_dataset(seed, 50))
    cm = confusion_matrix(records, len(NAMES), iou_threshold=iou, score_threshold=score, pixel_offset=1.0)
    C = len(NAMES)
    assert cm.shape == (C + 1, C + 1) and cm[C, C] == 0
    confusions = 0
    for c in range(C):
        ref = reference(records, c, iou)
        kept = ref["confidence"] >= score
        tp, fp = int(ref["tp"][kept].sum()), int(ref["fp"][kept].sum())
        assert cm[c, c] == tp  # the diagonal is the VOC true positives above the threshold
        assert cm[:, c].sum() == tp + fp  # every counted detection of class c is in its column
        assert cm[c].sum() == ref["npos"]  # every non-difficult object once in its row
        assert cm[c, C] + (cm[c, :C].sum() - tp) == ref["npos"] - tp  # missed + confused = not found
        confusions += cm[c, :C].sum() - tp
    assert confusions > 0 or iou == 0.7  # the random cases do hold class confusions


def box(x, y, s=10):
    return [x, y, x + s, y + s]


def test_confusion_matrix_of_a_hand_counted_case():
    # classes: 0 cat, 1 dog
    images = [
        dict(image_id=1, gt_boxes=np.array([box(0, 0), box(20, 20)], float), gt_labels=np.array([0, 1]),
             difficult=np.array([False, False]),
             det_boxes=np.array([box(0, 0), box(0, 0), box(0, 0), box(20, 20)], float),
             det_scores=np.array([0.9, 0.8, 0.7, 0.6]), det_labels=np.array([0, 0, 1, 0])),
        dict(image_id=2, gt_boxes=np.array([box(0, 0), box(50, 50)], float), gt_labels=np.array([1, 0]),
             difficult=np.array([True, False]),
             det_boxes=np.array([box(0, 0), box(50, 50), box(100, 100)], float),
             det_scores=np.array([0.9, 0.1, 0.5]), det_labels=np.array([1, 0, 1])),
    ]
    ev = VOCEvaluator(["cat", "dog"])
    ev.update(*as_inputs(images))
    analysis = analyse(ev.sorted_records(), ["cat", "dog"], iou_threshold=0.5, score_threshold=0.25)
    # cat: found in image 1 (its duplicate at 0.8 is a false detection), missed in image 2 (0.1 < 0.25);
    # dog of image 1: boxed as a cat (0.6); the dog box on the found cat (0.7) and the one on nothing
    # (0.5) are false detections; the dog on the difficult dog (0.9) is ignored, as the metric does.
    np.testing.assert_array_equal(analysis.confusion, [[1, 0, 1], [1, 0, 0], [1, 2, 0]])
    assert analysis.counts(0) == {"tp": 1, "fp": 2, "missed": 1, "confused": 0, "false_det": 1}
    assert analysis.counts(1) == {"tp": 0, "fp": 2, "missed": 0, "confused": 1, "false_det": 2}
    assert analysis.image_errors.tolist() == [3, 2]
    rows = per_class_rows(analysis)
    assert rows[0]["precision"] == pytest.approx(1 / 3) and rows[0]["recall"] == 0.5
    assert rows[1]["confused_most_with"] == "cat (1)" and rows[1]["images"] == 1
    report = format_report(analysis)
    assert "dog -> cat: 1 (100% of dog)" in report and "IoU > 0.5, score >= 0.25" in report


@pytest.mark.parametrize("seed", [0, 5])
def test_pr_curves_are_the_evaluators_arrays(seed):
    records, ev = inclusive_records(random_dataset(seed, 50))
    ev.metrics = ("voc", "voc07")
    metrics = ev.compute()
    analysis = analyse(records, NAMES, pixel_offset=1.0)
    for c, curve in enumerate(analysis.curves):
        ref = reference(records, c)
        if ref["npos"] == 0:
            assert curve.recall.size == 0 and curve.ap == 0.0
            continue
        np.testing.assert_array_equal(curve.recall, ref["rec"])
        np.testing.assert_array_equal(curve.precision, ref["prec"])
        np.testing.assert_array_equal(curve.scores, ref["confidence"])
        assert curve.ap == metrics["per_class_voc"][NAMES[c]]
        assert curve.ap07 == metrics["per_class_voc07"][NAMES[c]]
        if curve.recall.size:  # end point: recall and precision at the lowest score
            assert curve.recall[-1] == metrics["per_class_stats"][NAMES[c]]["recall"]
            # F1 at a threshold is the F1 of the detections scoring at least that much
            for t in (0.0, 0.3, 0.6):
                kept = ref["confidence"] >= t
                # precision as the devkit's: detections on difficult objects count neither way
                tp, n = ref["tp"][kept].sum(), ref["tp"][kept].sum() + ref["fp"][kept].sum()
                i = int(np.searchsorted(analysis.thresholds, t - 1e-12))
                assert analysis.thresholds[i] == pytest.approx(t)
                if n == 0:
                    assert analysis.f1_at[c, i] == 0
                    continue
                p, r = tp / n, tp / ref["npos"]
                assert analysis.f1_at[c, i] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)


def test_best_f1_threshold_is_the_maximum_of_the_mean_curve():
    records, _ = inclusive_records(random_dataset(4, 50))
    analysis = analyse(records, NAMES, pixel_offset=1.0)
    thr, best = analysis.best_threshold
    mean = analysis.f1_at[analysis.num_gt > 0].mean(axis=0)
    assert best == pytest.approx(mean.max()) and thr == analysis.thresholds[np.argmax(mean)]


# ----------------------------------------------------------------------------------------------
# Files and figures
# ----------------------------------------------------------------------------------------------


def png_shape(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image[..., :3].std() > 0.01, f"{path} is blank"
    return image.shape[:2]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from detkit.data.shapes import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, num=10, size=64, seed=1, val_fraction=0.5, workers=1)
    return root


@pytest.fixture(scope="module")
def shapes(shapes_root):
    from detkit.data.shapes import ShapesDataset

    return ShapesDataset(shapes_root, split="val")


def records_of(dataset, seed=0):
    """Ground truth of ``dataset`` and noisy detections of it (some wrong classes, some misses)."""
    rng = np.random.default_rng(seed)
    dets, targets = [], []
    for i in range(len(dataset)):
        ann = dataset.load_annotation(i)
        boxes = ann.boxes + rng.normal(0, 1.5, ann.boxes.shape)
        labels = np.where(rng.random(len(ann.labels)) < 0.2, (ann.labels + 1) % len(dataset.classes), ann.labels)
        keep = rng.random(len(labels)) < 0.8
        dets.append(dict(boxes=boxes[keep], scores=rng.uniform(0.2, 1.0, int(keep.sum())), labels=labels[keep]))
        targets.append(dict(boxes=ann.boxes, labels=ann.labels, difficult=ann.difficult, image_id=ann.image_id))
    ev = VOCEvaluator(dataset.classes)
    ev.update(dets, targets)
    return ev


def test_evaluation_plots_are_written(shapes, tmp_path):
    from detkit.plots.evaluation import (CURVE_FIGSIZE, MOSAIC_CELL, confusion_figsize,
                                         write_evaluator_plots)
    from detkit.plots.figure import DPI

    ev = records_of(shapes)
    metrics = ev.compute()
    written = write_evaluator_plots(ev, tmp_path / "plots", dataset=shapes, metrics=metrics, mosaic_images=4,
                                    score_threshold=0.3, iou_threshold=0.5)
    C = len(shapes.classes)
    assert png_shape(written["pr_curve"]) == (CURVE_FIGSIZE[1] * DPI, CURVE_FIGSIZE[0] * DPI)
    assert png_shape(written["f1_curve"]) == (CURVE_FIGSIZE[1] * DPI, CURVE_FIGSIZE[0] * DPI)
    w, h = confusion_figsize(C)
    for name in ("confusion_matrix", "confusion_matrix_normalized"):
        assert png_shape(written[name]) == (round(h * DPI), round(w * DPI))
    # 4 pairs in one row: each pair is two cells, a 4-pixel gap and an 18-pixel caption; 6-pixel borders
    assert png_shape(written["val_mosaic"]) == (6 + MOSAIC_CELL + 18 + 6, 6 + 4 * (2 * MOSAIC_CELL + 4 + 6))
    assert png_shape(written["val_mosaic_worst"])[1] > 2 * MOSAIC_CELL

    with open(written["per_class"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == list(shapes.classes)
    for row in rows:
        assert float(row["ap50_voc07"]) == pytest.approx(metrics["per_class_voc07"][row["class"]], abs=5e-5)
        assert int(row["instances"]) == metrics["per_class_stats"][row["class"]]["num_gt"]
    report = written["report"].read_text()
    assert report == written["report_text"] and "worst classes by AP50" in report
    assert "score >= 0.3" in report


def test_box_statistics_and_their_figure(shapes, tmp_path):
    from detkit.data.stats import box_statistics
    from detkit.plots.data import FIGSIZE, plot_box_statistics
    from detkit.plots.figure import DPI

    stats = box_statistics(shapes)
    anns = [shapes.load_annotation(i) for i in range(len(shapes))]
    labels = np.concatenate([a.labels for a in anns])
    np.testing.assert_array_equal(stats.instances, np.bincount(labels, minlength=len(shapes.classes)))
    ann = next(a for a in anns if len(a.boxes))  # the first box of the split
    first = ann.boxes[0]
    assert stats.empty_images == sum(not len(a.boxes) for a in anns) and stats.num_images == len(shapes)
    assert stats.widths[0] == pytest.approx(first[2] - first[0])
    assert stats.centres[0, 0] == pytest.approx((first[0] + first[2]) / 2 / ann.width)
    assert ((stats.centres >= 0) & (stats.centres <= 1)).all()
    assert stats.aspect_ratios[0] == pytest.approx((first[2] - first[0]) / (first[3] - first[1]))
    path = plot_box_statistics(stats, tmp_path / "data.png", "val")
    assert png_shape(path) == (FIGSIZE[1] * DPI, FIGSIZE[0] * DPI)


def test_check_data_plots_option(shapes_root, tmp_path):
    from click.testing import CliRunner

    from detkit.cli import main

    config = tmp_path / "cfg.py"
    config.write_text(f"data = dict(val=dict(type='shapes', root={str(shapes_root)!r}, split='val'))\n"
                      "model = dict(type='yolov1')\n")
    result = CliRunner().invoke(main, ["check-data", str(config), "--split", "val", "--plots", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert png_shape(tmp_path / "p" / "data_val.png")[0] > 100


def test_eval_plots_draw_the_evaluated_and_the_training_split(shapes_root, shapes, tmp_path, caplog):
    import logging

    from detkit.evaluation.run import _write_data_statistics
    from detkit.plots.data import FIGSIZE
    from detkit.plots.figure import DPI

    data = {"train": dict(type="shapes", root=str(shapes_root), split="train"),
            "val": dict(type="shapes", root=str(shapes_root), split="val")}
    _write_data_statistics({"data": data}, "val", shapes, tmp_path / "a")
    for name in ("data_val.png", "data_train.png"):
        assert png_shape(tmp_path / "a" / name) == (FIGSIZE[1] * DPI, FIGSIZE[0] * DPI)
    # two splits, two figures (the make_shapes split holds different boxes)
    assert (tmp_path / "a" / "data_val.png").read_bytes() != (tmp_path / "a" / "data_train.png").read_bytes()

    # training files absent on the evaluating machine: the evaluated split is drawn, one warning
    data["train"]["root"] = str(tmp_path / "absent")
    with caplog.at_level(logging.WARNING, logger="detkit"):
        _write_data_statistics({"data": data}, "val", shapes, tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["data_val.png"]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "no training-split statistics" in warning.getMessage() and "absent" in warning.getMessage()


def test_loss_is_drawn_on_a_log_scale(tmp_path, monkeypatch):
    import json

    from detkit.plots import training

    records = [{"type": "train", "epoch": 1, "iter": 1, "lr": 0.1, "loss": 46.0},
               {"type": "epoch", "epoch": 1, "iter": 2, "lr": 0.1, "loss": 40.0},
               {"type": "train", "epoch": 2, "iter": 3, "lr": 0.1, "loss": 0.8},
               {"type": "epoch", "epoch": 2, "iter": 4, "lr": 0.1, "loss": 0.7}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figures = {}
    save = training.save_figure
    monkeypatch.setattr(training, "save_figure", lambda fig, path: figures.setdefault(path.name, fig) and save(fig, path))
    training.plot_metrics(tmp_path / "m.jsonl", tmp_path)
    assert figures["loss.png"].axes[0].get_yscale() == "log"
    records[0]["loss"] = -1.0  # a loss that can be negative stays on a linear axis
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figures.clear()
    training.plot_metrics(tmp_path / "m.jsonl", tmp_path)
    assert figures["loss.png"].axes[0].get_yscale() == "linear"
