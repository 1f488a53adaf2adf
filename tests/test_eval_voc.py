"""VOCEvaluator against the devkit rules: a slow transcription, hand-computed cases, state/merge."""

from __future__ import annotations

import math

import pickle

import numpy as np
import pytest
import torch

from detkit.errors import ConfigError, DataError
from detkit.evaluation import VOCEvaluator, build_evaluators, format_table
from voc_reference import voc_eval_all_reference

NUM_CLASSES = 6
NAMES = [f"c{i}" for i in range(NUM_CLASSES)]
NO_DET_CLASS = 4  # has ground truth, never detected
NO_GT_CLASS = 5  # detected, never in the ground truth


def random_dataset(seed: int, num_images: int = 40):
    """Per-image dicts (numpy) with difficult flags, duplicated GT boxes and detections, empty images,
    a class without detections, a class without ground truth and many score ties."""
    rng = np.random.default_rng(seed)
    image_ids = rng.permutation(np.arange(100, 100 + 3 * num_images, 3))[:num_images]
    images = []
    for n in range(num_images):
        kind = n % 7
        k = 0 if kind == 0 else int(rng.integers(1, 6))
        xy = rng.uniform(0, 200, (k, 2))
        wh = rng.uniform(8, 80, (k, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, NO_GT_CLASS, k)
        if k >= 2 and rng.random() < 0.3:  # a duplicated ground-truth box (argmax tie)
            gt[1], labels[1] = gt[0], labels[0]
        difficult = rng.random(k) < 0.2
        dets, scores, dlabels = [], [], []
        if kind not in (0, 1):  # kind 1: ground truth but no detections at all
            for j in range(k):
                for _ in range(int(rng.integers(0, 3))):  # 0..2 detections per object (duplicates)
                    jitter = rng.normal(0, rng.choice([1.0, 4.0, 15.0]), 4)
                    dets.append(gt[j] + jitter)
                    lab = labels[j] if rng.random() < 0.85 else rng.integers(0, NUM_CLASSES)
                    dlabels.append(lab)
            for _ in range(int(rng.integers(0, 4))):  # background false positives
                p = rng.uniform(0, 220, 2)
                dets.append(np.concatenate([p, p + rng.uniform(5, 60, 2)]))
                dlabels.append(rng.integers(0, NUM_CLASSES))
            scores = list(np.round(rng.random(len(dets)), 1))  # coarse scores: many ties
        dets = np.array(dets, dtype=np.float64).reshape(-1, 4)
        dlabels = np.array(dlabels, dtype=np.int64)
        dlabels[dlabels == NO_DET_CLASS] = NO_GT_CLASS
        if kind == 6:  # detections in an image without any ground truth
            gt, labels, difficult = np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool)
        images.append(dict(
            image_id=int(image_ids[n]),
            gt_boxes=gt.astype(np.float64), gt_labels=labels.astype(np.int64), difficult=difficult,
            det_boxes=dets, det_scores=np.array(scores, dtype=np.float64), det_labels=dlabels,
        ))
    return images


def as_inputs(images, to_tensor=False):
    conv = torch.as_tensor if to_tensor else np.asarray
    dets = [dict(boxes=conv(im["det_boxes"]), scores=conv(im["det_scores"]), labels=conv(im["det_labels"]))
            for im in images]
    targets = [dict(boxes=conv(im["gt_boxes"]), labels=conv(im["gt_labels"]), difficult=conv(im["difficult"]),
                    image_id=im["image_id"]) for im in images]
    return dets, targets


def to_xml_convention(boxes):
    """detkit's continuous boxes (xmin - 1, ymin - 1, xmax, ymax) back to VOC XML's 1-based inclusive
    pixel indices, which the devkit reads (detectron2 writes its results files this way)."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + np.array([1.0, 1.0, 0.0, 0.0])


def reference_aps(images, use_07_metric, xml_convention=True):
    ordered = sorted(images, key=lambda im: im["image_id"])  # results file in image-id order
    if xml_convention:
        ordered = [dict(im, gt_boxes=to_xml_convention(im["gt_boxes"]), det_boxes=to_xml_convention(im["det_boxes"]))
                   for im in ordered]
    return voc_eval_all_reference(ordered, NUM_CLASSES, 0.5, use_07_metric)


def evaluate(images, batch=5, **kwargs):
    ev = VOCEvaluator(NAMES, **kwargs)
    dets, targets = as_inputs(images)
    for i in range(0, len(images), batch):
        ev.update(dets[i:i + batch], targets[i:i + batch])
    return ev.compute()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_slow_devkit_reference(seed):
    images = random_dataset(seed)
    metrics = evaluate(images, metrics=("voc07", "voc"))
    for metric, use07 in (("voc07", True), ("voc", False)):
        ref = reference_aps(images, use07)
        ours = [metrics[f"per_class_{metric}"][n] for n in NAMES]
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
        assert metrics[f"{metric}_ap50"] == pytest.approx(np.mean(ref), abs=1e-9)
    # boxes given in the XML's own inclusive convention: the devkit's +1, same data
    inclusive = evaluate(images, metrics=("voc07", "voc"), box_convention="inclusive")
    for metric, use07 in (("voc07", True), ("voc", False)):
        ref = reference_aps(images, use07, xml_convention=False)
        np.testing.assert_allclose([inclusive[f"per_class_{metric}"][n] for n in NAMES], ref, rtol=0, atol=1e-9)
    # the data really exercises the edge cases
    assert metrics["per_class_stats"][NAMES[NO_DET_CLASS]]["num_det"] == 0
    assert metrics["per_class_stats"][NAMES[NO_DET_CLASS]]["num_gt"] > 0
    assert metrics["per_class_stats"][NAMES[NO_GT_CLASS]]["num_gt"] == 0
    assert metrics["per_class_stats"][NAMES[NO_GT_CLASS]]["num_det"] > 0
    assert metrics["per_class_voc07"][NAMES[NO_DET_CLASS]] == 0.0
    assert 0.05 < metrics["voc_ap50"] < 0.95  # neither trivially perfect nor empty


def test_single_metric_keys_and_one_pass_equals_two_evaluators():
    images = random_dataset(5)
    both = evaluate(images, metrics=("voc", "voc07"))
    m07 = evaluate(images, use_07_metric=True)
    m10 = evaluate(images, use_07_metric=False)
    assert "voc07_ap50" in m07 and "voc_ap50" not in m07
    assert "voc_ap50" in m10 and "voc07_ap50" not in m10
    assert both["voc07_ap50"] == m07["voc07_ap50"] and both["voc_ap50"] == m10["voc_ap50"]
    assert both["per_class"] == m10["per_class"]  # the first metric listed fills per_class
    assert m07["per_class"] == m07["per_class_voc07"]
    assert m07["voc07_ap50"] != m10["voc_ap50"]


# ---------------------------------------------------------------------------------------------
# Hand-computed cases (one class unless stated; boxes in the devkit's inclusive pixel convention,
# A = pixels 0..9 = 10 x 10)
# ---------------------------------------------------------------------------------------------

A = [0.0, 0.0, 9.0, 9.0]  # 10 x 10 pixels
FAR = [100.0, 100.0, 119.0, 119.0]


def one_image(gt, dets, scores, difficult=None, det_labels=None, gt_labels=None, names=("a",),
              box_convention="inclusive", **kwargs):
    ev = VOCEvaluator(list(names), metrics=("voc07", "voc"), box_convention=box_convention, **kwargs)
    ev.update([dict(boxes=np.array(dets, float).reshape(-1, 4), scores=np.array(scores, float),
                    labels=np.array(det_labels if det_labels is not None else [0] * len(dets)))],
              [dict(boxes=np.array(gt, float).reshape(-1, 4),
                    labels=np.array(gt_labels if gt_labels is not None else [0] * len(gt)),
                    difficult=None if difficult is None else np.array(difficult), image_id=1)])
    return ev.compute()


def test_hand_tp_then_fp():
    # rec = [1, 1], prec = [1, 1/2]: every recall level reaches precision 1
    m = one_image([A], [A, FAR], [0.9, 0.8])
    assert m["voc07_ap50"] == pytest.approx(1.0) and m["voc_ap50"] == pytest.approx(1.0)


def test_hand_fp_then_tp():
    # rec = [0, 1], prec = [0, 1/2]: 11-point -> 11 * (1/2) / 11; area -> 1 * 1/2
    m = one_image([A], [FAR, A], [0.9, 0.8])
    assert m["voc07_ap50"] == pytest.approx(0.5) and m["voc_ap50"] == pytest.approx(0.5)


def test_hand_duplicate_is_false_positive():
    # two GT; dets: TP (0.9), duplicate on the same GT (0.8) -> FP, TP on the second GT (0.7)
    # rec = [.5, .5, 1], prec = [1, .5, 2/3]
    # 11-point: t in {0,..,.5} -> 1 (6 points), t in {.6,..,1} -> 2/3 (5 points) => (6 + 10/3) / 11
    # area: .5 * 1 + .5 * 2/3 = 5/6
    m = one_image([A, FAR], [A, A, FAR], [0.9, 0.8, 0.7])
    assert m["voc07_ap50"] == pytest.approx(28 / 33) and m["voc_ap50"] == pytest.approx(5 / 6)
    assert m["per_class_stats"]["a"] == {"num_gt": 2, "num_det": 3, "recall": 1.0}


def test_hand_best_ground_truth_already_taken_gives_false_positive():
    # The devkit assigns a detection to its highest-IoU GT even when that GT is already matched:
    # det2 overlaps B by 0.875 (> 0.5) but A more (0.952), A is taken -> FP, B stays unmatched.
    B = [0.0, 0.0, 9.0, 11.0]
    m = one_image([A, B], [A, [0.0, 0.0, 9.0, 9.5]], [0.9, 0.8])
    # rec = [.5, .5], prec = [1, .5]: 11-point 6/11, area .5
    assert m["voc07_ap50"] == pytest.approx(6 / 11) and m["voc_ap50"] == pytest.approx(0.5)


def test_hand_difficult_is_neither_tp_nor_fp():
    # GT A normal, GT far difficult; det on the difficult one (0.9) ignored, TP on A (0.8), FP (0.7)
    # npos = 1; counted: TP, FP -> rec [1, 1], prec [1, .5] -> AP 1 (it would be .5 if the ignored
    # detection were a false positive)
    m = one_image([A, FAR], [FAR, A, [300, 300, 310, 310]], [0.9, 0.8, 0.7], difficult=[False, True])
    assert m["voc07_ap50"] == pytest.approx(1.0) and m["voc_ap50"] == pytest.approx(1.0)
    assert m["per_class_stats"]["a"]["num_gt"] == 1


def test_hand_only_difficult_matches_give_zero_not_nan():
    m = one_image([A, FAR], [FAR], [0.9], difficult=[False, True])
    assert m["voc07_ap50"] == 0.0 and m["voc_ap50"] == 0.0


def test_iou_threshold_is_strict_and_pixel_conventions():
    # inclusive (+1): GT 10x10 = 100 px; det [0,0,9,4] is 10x5 = 50 px -> IoU exactly 0.5 -> no match
    assert one_image([A], [[0.0, 0.0, 9.0, 4.0]], [0.9])["voc_ap50"] == 0.0
    # det [0,0,9,4.2]: 10 x 5.2 = 52 px inside the GT -> IoU .52 (+1) but 9*4.2/81 = .467 continuous
    assert one_image([A], [[0.0, 0.0, 9.0, 4.2]], [0.9])["voc_ap50"] == pytest.approx(1.0)
    assert one_image([A], [[0.0, 0.0, 9.0, 4.2]], [0.9], box_convention="continuous")["voc_ap50"] == 0.0
    # continuous (the default): GT [0,0,10,10] = 100, det [0,0,10,5] = 50 -> exactly 0.5 -> no match
    ev = VOCEvaluator(["a"], use_07_metric=False)
    assert ev.box_convention == "continuous"
    for det, expected in (([0.0, 0.0, 10.0, 5.0], 0.0), ([0.0, 0.0, 10.0, 5.2], 1.0)):
        ev.reset()
        ev.update([dict(boxes=np.array([det]), scores=np.array([0.9]), labels=np.array([0]))],
                  [dict(boxes=np.array([[0.0, 0.0, 10.0, 10.0]]), labels=np.array([0]), image_id=1)])
        assert ev.compute()["voc_ap50"] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="box_convention"):
        VOCEvaluator(["a"], box_convention="xyxy")


def test_class_without_ground_truth_counts_as_zero_and_class_without_detections_too():
    # class a: perfect; class b: detections only (AP 0, counted); class c: GT only (AP 0)
    m = one_image([A, FAR], [A, [50, 50, 60, 60]], [0.9, 0.8], det_labels=[0, 1], gt_labels=[0, 2],
                  names=("a", "b", "c"))
    assert m["per_class_voc"] == {"a": pytest.approx(1.0), "b": 0.0, "c": 0.0}
    assert m["voc_ap50"] == pytest.approx(1 / 3) and m["voc07_ap50"] == pytest.approx(1 / 3)


def test_score_ties_follow_image_id_order():
    # Two images, one GT each; equal scores. The image with the smaller id ranks first (stable sort
    # over the results file in image-id order), whatever the order of update() calls.
    def run(order):
        ev = VOCEvaluator(["a"], use_07_metric=False)
        for image_id, det in order:
            ev.update([dict(boxes=np.array([det]), scores=np.array([0.5]), labels=np.array([0]))],
                      [dict(boxes=np.array([A]), labels=np.array([0]), image_id=image_id)])
        return ev.compute()["voc_ap50"]

    # image 1: a miss (FP), image 2: a hit (TP) -> ranked FP, TP: rec [0, .5], prec [0, .5] -> AP .25
    assert run([(1, FAR), (2, A)]) == pytest.approx(0.25)
    assert run([(2, A), (1, FAR)]) == pytest.approx(0.25)
    # the other way round: TP first: rec [.5, .5], prec [1, .5] -> AP .5
    assert run([(1, A), (2, FAR)]) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# Order, distributed state, input types
# ---------------------------------------------------------------------------------------------


def test_order_invariance():
    images = random_dataset(7)
    base = evaluate(images, metrics=("voc07", "voc"))
    rng = np.random.default_rng(0)
    shuffled = [images[i] for i in rng.permutation(len(images))]
    assert evaluate(shuffled, batch=3, metrics=("voc07", "voc")) == base
    assert evaluate(images[::-1], batch=11, metrics=("voc07", "voc")) == base


def test_state_merge_equals_single_process():
    images = random_dataset(8, num_images=31)
    single = evaluate(images, metrics=("voc07", "voc"))
    world = 4
    # DistributedSampler: interleaved shards, padded with repeats up to equal length
    padded = images + images[: (-len(images)) % world]
    states = []
    for rank in range(world):
        ev = VOCEvaluator(NAMES, metrics=("voc07", "voc"))
        dets, targets = as_inputs(padded[rank::world])
        ev.update(dets, targets)
        states.append(pickle.loads(pickle.dumps(ev.state())))  # what all_gather_object transports
    rank0 = VOCEvaluator(NAMES, metrics=("voc07", "voc"))
    rank0.update(*as_inputs(images[:3]))  # load_states replaces whatever rank 0 had collected
    rank0.load_states(states)
    assert rank0.num_images == len(images) and rank0.num_duplicates == (-len(images)) % world
    assert rank0.compute() == single
    merged = VOCEvaluator(NAMES, metrics=("voc07", "voc"))
    for s in reversed(states):
        merged.merge(s)
    assert merged.compute() == single


def test_merge_rejects_foreign_state():
    ev = VOCEvaluator(["a", "b"])
    with pytest.raises(ValueError, match="classes"):
        ev.merge(VOCEvaluator(["a", "c"]).state())
    with pytest.raises(ValueError, match="state()"):
        ev.merge({"records": []})


def test_group_state_merge():
    images = random_dataset(9, num_images=12)
    group = build_evaluators(["voc07", "voc"], NAMES)
    group.update(*as_inputs(images))
    halves = []
    for part in (images[:5], images[5:]):
        g = build_evaluators(["voc07", "voc"], NAMES)
        g.update(*as_inputs(part))
        halves.append(g.state())
    other = build_evaluators(["voc07", "voc"], NAMES)
    other.load_states(halves)
    assert other.compute() == group.compute()


def test_images_without_id_are_kept_and_counted():
    images = random_dataset(10, num_images=8)
    dets, targets = as_inputs(images)
    for t in targets:
        del t["image_id"]
    ev = VOCEvaluator(NAMES)
    ev.update(dets, targets)
    ev.update(dets, targets)  # no id: the same image twice is two images
    assert ev.compute()["num_images"] == 16


def test_torch_inputs_match_numpy():
    images = random_dataset(11, num_images=10)
    ev_np, ev_t = VOCEvaluator(NAMES), VOCEvaluator(NAMES)
    ev_np.update(*as_inputs(images))
    dets, targets = as_inputs(images, to_tensor=True)
    dets = [{k: v.float() if v.is_floating_point() else v for k, v in d.items()} for d in dets]
    targets = [{k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in t.items()}
               for t in targets]
    ev_t.update(dets, targets)
    a, b = ev_np.compute(), ev_t.compute()
    # float32 boxes move IoUs by ~1e-7, which can flip no match in this data
    assert b["voc07_ap50"] == pytest.approx(a["voc07_ap50"], abs=1e-6)


def test_mixed_input_kinds_match_numpy():
    # lists, numpy, tensors of several dtypes, legacy empty boxes of shape (0,), within one batch
    images = random_dataset(15, num_images=12)
    dets, targets = as_inputs(images)
    expected = VOCEvaluator(NAMES)
    expected.update(dets, targets)
    mixed_dets, mixed_targets = [], []
    for i, (d, t) in enumerate(zip(dets, targets)):
        kind = i % 4
        if kind == 0:
            d = {k: v.tolist() for k, v in d.items()}
            t = dict(t, boxes=t["boxes"].tolist(), labels=t["labels"].tolist())
        elif kind == 1:
            d = {k: torch.as_tensor(v) for k, v in d.items()}
            d["labels"] = d["labels"].int()
            if len(d["labels"]) == 0:
                d["boxes"] = torch.zeros(0)
        elif kind == 2:
            t = dict(t, boxes=torch.as_tensor(t["boxes"]), labels=torch.as_tensor(t["labels"]),
                     difficult=torch.as_tensor(t["difficult"]))
        mixed_dets.append(d)
        mixed_targets.append(t)
    got = VOCEvaluator(NAMES)
    got.update(mixed_dets, mixed_targets)
    assert got.compute() == expected.compute()


def test_all_tensor_batch_with_empty_images():
    # the fast path of update() (one concatenation per batch) on empty images of either empty shape
    images = random_dataset(16, num_images=10)
    dets, targets = as_inputs(images, to_tensor=True)
    for i in (0, 3):
        dets[i] = dict(boxes=torch.zeros(0), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64))
    dets[5] = dict(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64))
    ref = [dict(im) for im in images]
    for i in (0, 3, 5):
        ref[i].update(det_boxes=np.zeros((0, 4)), det_scores=np.zeros(0), det_labels=np.zeros(0, np.int64))
    ev = VOCEvaluator(NAMES, use_07_metric=False)
    ev.update(dets, targets)
    np.testing.assert_allclose([ev.compute()["per_class"][n] for n in NAMES], reference_aps(ref, False), atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors():
    images = random_dataset(12, num_images=6)
    dets, targets = as_inputs(images, to_tensor=True)
    dets = [{k: v.cuda() for k, v in d.items()} for d in dets]
    targets = [{k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]
    ev, ref = VOCEvaluator(NAMES), VOCEvaluator(NAMES)
    ev.update(dets, targets)
    ref.update(*as_inputs(images))
    assert ev.compute() == ref.compute()


def test_reset():
    images = random_dataset(13, num_images=6)
    ev = VOCEvaluator(NAMES)
    ev.update(*as_inputs(images))
    ev.reset()
    assert ev.num_images == 0
    assert math.isnan(ev.compute()["voc07_ap50"])  # nothing evaluated: undefined, not 0


@pytest.mark.parametrize("num_images", [0, 3])
def test_a_set_without_ground_truth_has_nan_ap_in_voc_and_coco_alike(num_images, caplog):
    """One defined behaviour for an empty validation set (no images, or only negatives): every AP is NaN."""
    import torch

    from detkit.evaluation import build_evaluators

    group = build_evaluators("all", ["a", "b"])
    detections = [{"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "scores": torch.tensor([0.9]),
                   "labels": torch.tensor([1])} for _ in range(num_images)]
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": i}
               for i in range(num_images)]
    if num_images:
        group.update(detections, targets)
    with caplog.at_level("WARNING"):
        metrics = group.compute()
    for key in ("voc07_ap50", "voc_ap50", "coco_ap", "coco_ap50", "coco_ap75"):
        assert math.isnan(metrics[key]), key
    assert all(math.isnan(v) for v in metrics["per_class_voc07"].values())
    warned = [r.getMessage() for r in caplog.records if "undefined and reported as NaN" in r.getMessage()]
    assert len(warned) == 2  # VOC and COCO each say why


# ---------------------------------------------------------------------------------------------
# Bad input, builder, table
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_have_clear_errors():
    ev = VOCEvaluator(["a", "b"])
    det = dict(boxes=np.zeros((1, 4)), scores=np.ones(1), labels=np.zeros(1, np.int64))
    tgt = dict(boxes=np.array([A]), labels=np.array([0]), image_id=4)
    with pytest.raises(ValueError, match="1 detections for 2 targets"):
        ev.update([det], [tgt, tgt])
    with pytest.raises(DataError, match=r"image_id=4.*0\.\.1"):
        ev.update([det], [dict(tgt, labels=np.array([2]))])
    with pytest.raises(ValueError, match=r"detection labels must lie in 0\.\.1"):
        ev.update([dict(det, labels=np.array([-1]))], [tgt])
    with pytest.raises(ValueError, match=r"shape \[N, 4\]"):
        ev.update([dict(det, boxes=np.zeros((1, 5)))], [tgt])
    with pytest.raises(ValueError, match="2 entries for 1 boxes"):
        ev.update([dict(det, scores=np.ones(2))], [tgt])
    with pytest.raises(TypeError, match="one dict per image"):
        ev.update(det, tgt)
    with pytest.raises(ConfigError, match="metrics"):
        VOCEvaluator(["a"], metrics=("coco",))
    assert ev.num_images == 0  # nothing half-added


def test_non_finite_detections_are_dropped_and_counted():
    ev = VOCEvaluator(["a"], use_07_metric=False)
    ev.update([dict(boxes=np.array([A, [np.nan, 0, 1, 1], A]), scores=np.array([0.9, 0.95, np.inf]),
                    labels=np.array([0, 0, 0]))],
              [dict(boxes=np.array([A]), labels=np.array([0]), image_id=0)])
    assert ev.num_nonfinite_dropped == 2
    assert ev.compute()["voc_ap50"] == pytest.approx(1.0)


def test_build_evaluators():
    group = build_evaluators("all", NAMES)
    assert [type(e).__name__ for e in group.evaluators] == ["VOCEvaluator", "COCOEvaluator"]
    assert group.evaluators[0].metrics == ("voc07", "voc")
    assert build_evaluators(["voc", "voc07"], NAMES).evaluators[0].metrics == ("voc", "voc07")
    with pytest.raises(ConfigError, match="unknown metric 'map'"):
        build_evaluators("map", NAMES)
    images = random_dataset(14, num_images=10)
    group.update(*as_inputs(images))
    metrics = group.compute()
    for key in ("voc07_ap50", "voc_ap50", "coco_ap", "coco_ap50", "coco_ap75", "per_class", "per_class_coco"):
        assert key in metrics
    assert metrics["per_class"] == metrics["per_class_voc07"]  # VOC listed first wins the shared key


def test_format_table():
    m = one_image([A, FAR], [A, [50, 50, 60, 60]], [0.9, 0.8], det_labels=[0, 1], gt_labels=[0, 1],
                  names=("aeroplane", "bicycle"))
    table = format_table(m)
    lines = table.splitlines()
    assert "aeroplane" in table and "bicycle" in table and "voc07_ap50" in table
    row = next(line for line in lines if line.startswith("aeroplane")).split()
    assert row[1:4] == ["1", "1", "1.0000"] and row[-1] == "1.0000"
    row = next(line for line in lines if line.startswith("bicycle")).split()
    assert row[1:4] == ["1", "1", "0.0000"] and row[-1] == "0.0000"
    assert next(line for line in lines if line.startswith("mean")).split()[-1] == "0.5000"
