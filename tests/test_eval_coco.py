"""COCOEvaluator against pycocotools called directly on the same data; both backends; edge cases."""

from __future__ import annotations

import contextlib
import io
import math
import pickle

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.errors import ConfigError
from detkit.evaluation import COCOEvaluator, to_coco_results

NAMES = ["person", "car", "dog", "cat"]
STAT_KEYS = ["coco_ap", "coco_ap50", "coco_ap75", "coco_ap_s", "coco_ap_m", "coco_ap_l",
             "coco_ar1", "coco_ar10", "coco_ar100", "coco_ar_s", "coco_ar_m", "coco_ar_l"]
try:
    import faster_coco_eval  # noqa: F401  (the optional `fast-eval` extra)

    HAVE_FASTER = True
except ImportError:
    HAVE_FASTER = False
needs_faster = pytest.mark.skipif(not HAVE_FASTER, reason="faster-coco-eval not installed (extra fast-eval)")
BACKENDS = ["pycocotools", pytest.param("faster", marks=needs_faster)]


def random_dataset(seed: int, num_images: int = 25, crowd=True):
    """Per-image (detections, target) with objects of all sizes, crowd regions, duplicates, misses."""
    rng = np.random.default_rng(seed)
    dets, targets = [], []
    for n in range(num_images):
        k = int(rng.integers(0, 7))
        xy = rng.uniform(0, 400, (k, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(200), (k, 2)))  # small, medium and large objects
        gt = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, len(NAMES) - 1, k)  # the last class never has ground truth
        iscrowd = (rng.random(k) < 0.1) if crowd else np.zeros(k, bool)
        boxes, scores, dl = [], [], []
        for j in range(k):
            for _ in range(int(rng.integers(0, 3))):
                boxes.append(gt[j] + rng.normal(0, 0.08, 4) * np.r_[wh[j], wh[j]])
                dl.append(labels[j] if rng.random() < 0.9 else rng.integers(0, len(NAMES)))
        for _ in range(int(rng.integers(0, 5))):
            p = rng.uniform(0, 400, 2)
            boxes.append(np.r_[p, p + rng.uniform(4, 100, 2)])
            dl.append(rng.integers(0, len(NAMES)))
        scores = np.round(rng.random(len(boxes)), 2)
        dets.append(dict(boxes=np.array(boxes, float).reshape(-1, 4), scores=scores, labels=np.array(dl, np.int64)))
        targets.append(dict(boxes=gt, labels=labels.astype(np.int64), iscrowd=iscrowd, image_id=1000 + 7 * n))
    return dets, targets


def pycocotools_direct(dets, targets, cat_ids=None, results=None):
    """The textbook pycocotools recipe, written independently of detkit: ``(stats, per-class AP,
    per-class AP50)``, each class's numbers from a COCOeval restricted to that class
    (``params.catIds``), i.e. pycocotools' own summary, not a slice of its precision array.
    ``results``: score these COCO results instead of the ones built here from ``dets``."""
    cat_ids = cat_ids or list(range(1, len(NAMES) + 1))
    images, anns, own_results = [], [], []
    for det, tgt in zip(dets, targets):
        images.append({"id": tgt["image_id"]})
        for box, label, crowd in zip(np.asarray(tgt["boxes"]), np.asarray(tgt["labels"]),
                                     np.asarray(tgt.get("iscrowd", np.zeros(len(tgt["labels"]), bool)))):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": tgt["image_id"], "category_id": cat_ids[int(label)],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd)})
        for box, score, label in zip(np.asarray(det["boxes"]), np.asarray(det["scores"]), np.asarray(det["labels"])):
            x1, y1, x2, y2 = (float(v) for v in box)
            own_results.append({"image_id": tgt["image_id"], "category_id": cat_ids[int(label)],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    results = own_results if results is None else results

    def summarize(only_cat=None):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {"images": images, "annotations": anns,
                          "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, NAMES)]}
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(results), "bbox")
            if only_cat is not None:
                ev.params.catIds = [only_cat]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return [float("nan") if s < 0 else float(s) for s in ev.stats]

    per_class, per_class50 = {}, {}
    for name, cid in zip(NAMES, cat_ids):
        class_stats = summarize(cid)
        per_class[name], per_class50[name] = class_stats[0], class_stats[1]
    return summarize(), per_class, per_class50


def assert_close(a, b, tol):
    assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol, (a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pycocotools_direct(backend, seed):
    dets, targets = random_dataset(seed)
    ev = COCOEvaluator(NAMES, backend=backend)
    ev.update(dets[:10], targets[:10])
    ev.update(dets[10:], targets[10:])
    m = ev.compute()
    stats, per_class, per_class50 = pycocotools_direct(dets, targets)
    tol = 1e-12 if backend == "pycocotools" else 1e-6
    for key, ref in zip(STAT_KEYS, stats):
        assert_close(m[key], ref, tol)
    for name in NAMES:
        assert_close(m["per_class_coco"][name], per_class[name], tol)
        assert_close(m["per_class_coco50"][name], per_class50[name], tol)
    assert math.isnan(m["per_class_coco"]["cat"])  # no ground truth: undefined, as in pycocotools
    assert 0.05 < m["coco_ap"] < 0.95 and not math.isnan(m["coco_ap_s"]) and not math.isnan(m["coco_ap_l"])
    assert m["per_class"] == m["per_class_coco50"]


@needs_faster
def test_backends_agree():
    dets, targets = random_dataset(2, num_images=40)
    results = {}
    for backend in ("pycocotools", "faster"):
        ev = COCOEvaluator(NAMES, backend=backend)
        ev.update(dets, targets)
        results[backend] = ev.compute()
    a, b = results["pycocotools"], results["faster"]
    for key in STAT_KEYS:
        assert_close(a[key], b[key], 1e-6)
    for name in NAMES:
        assert_close(a["per_class_coco"][name], b["per_class_coco"][name], 1e-6)
        assert_close(a["per_class_coco50"][name], b["per_class_coco50"][name], 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_detections(backend):
    dets, targets = random_dataset(3, num_images=6)
    empty = [dict(boxes=np.zeros((0, 4)), scores=np.zeros(0), labels=np.zeros(0, np.int64)) for _ in dets]
    ev = COCOEvaluator(NAMES, backend=backend)
    ev.update(empty, targets)
    m = ev.compute()
    assert m["coco_ap"] == 0.0 and m["coco_ap50"] == 0.0 and m["coco_ar100"] == 0.0
    assert m["per_class_coco"]["person"] == 0.0 and math.isnan(m["per_class_coco"]["cat"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_crowd_region_detections_are_ignored(backend):
    # One object and one crowd region; the top detection lies inside the crowd region (IoU with it
    # only 0.16, but COCO scores crowd matches by intersection over the detection's area: 1.0).
    # With the crowd ignored only the detection on the object counts: AP = AR = 1. Scored as an
    # ordinary object, the region is a missed ground truth (AR 0.5) and the detection in it a false
    # positive ranked first (AP < 1).
    obj, region, inside = [10.0, 10.0, 60.0, 60.0], [200.0, 200.0, 300.0, 300.0], [210.0, 210.0, 250.0, 250.0]
    det = dict(boxes=np.array([inside, obj]), scores=np.array([0.9, 0.8]), labels=np.array([0, 0]))
    tgt = dict(boxes=np.array([obj, region]), labels=np.array([0, 0]), iscrowd=np.array([False, True]),
               image_id=1)
    ev = COCOEvaluator(["person"], backend=backend)
    ev.update([det], [tgt])
    m = ev.compute()
    assert m["coco_ap"] == pytest.approx(1.0) and m["coco_ar100"] == pytest.approx(1.0)
    ev.reset()
    ev.update([det], [dict(tgt, iscrowd=np.array([False, False]))])
    m = ev.compute()
    assert m["coco_ar100"] == pytest.approx(0.5)
    # 101-point AP: precision 1/2 at the recall thresholds 0, .01, ..., .5 (51 of 101), 0 above
    assert m["coco_ap"] == pytest.approx(51 * 0.5 / 101)


def test_difficult_as_crowd():
    dets, targets = random_dataset(4, num_images=12, crowd=False)
    rng = np.random.default_rng(0)
    voc_targets = [dict(t, difficult=rng.random(len(t["labels"])) < 0.3) for t in targets]
    coco_targets = [dict(t, iscrowd=v["difficult"]) for t, v in zip(targets, voc_targets)]
    a, b, c = COCOEvaluator(NAMES), COCOEvaluator(NAMES), COCOEvaluator(NAMES, difficult_as_crowd=False)
    a.update(dets, voc_targets)
    b.update(dets, coco_targets)
    c.update(dets, voc_targets)
    ma, mb, mc = a.compute(), b.compute(), c.compute()
    assert ma["coco_ap"] == mb["coco_ap"]
    assert mc["coco_ap"] != ma["coco_ap"]
    assert_close(mc["coco_ap"], pycocotools_direct(dets, targets)[0][0], 1e-6)


def test_real_category_ids_and_results():
    dets, targets = random_dataset(5, num_images=8)
    cat_ids = [1, 3, 18, 17]  # person, car, dog, cat in COCO
    ev = COCOEvaluator(NAMES, cat_ids=cat_ids, backend="pycocotools")
    ev.update(dets, targets)
    m = ev.compute()
    stats, per_class, per_class50 = pycocotools_direct(dets, targets, cat_ids=cat_ids)
    for key, ref in zip(STAT_KEYS, stats):
        assert_close(m[key], ref, 1e-12)
    for name in NAMES:
        assert_close(m["per_class_coco"][name], per_class[name], 1e-12)
        assert_close(m["per_class_coco50"][name], per_class50[name], 1e-12)

    # the results writer (detkit eval --results-out, detkit infer --save-json): a results file that
    # pycocotools scores to the same numbers, with the real category ids
    res = to_coco_results(dets, [t["image_id"] for t in targets], cat_ids=cat_ids)
    assert len(res) == sum(len(d["labels"]) for d in dets)
    assert {r["category_id"] for r in res} == set(cat_ids)
    written_stats, _, _ = pycocotools_direct(dets, targets, cat_ids=cat_ids, results=res)
    for key, ref in zip(STAT_KEYS, written_stats):
        assert_close(m[key], ref, 1e-12)


def test_to_coco_results_values():
    det = dict(boxes=torch.tensor([[10.0, 20.0, 40.0, 25.0], [0.0, 0.0, 1.0, 2.0]]),
               scores=torch.tensor([0.5, 0.25]), labels=torch.tensor([1, 0]))
    assert to_coco_results([det], [torch.tensor(42)]) == [
        {"image_id": 42, "category_id": 2, "bbox": [10.0, 20.0, 30.0, 5.0], "score": 0.5},
        {"image_id": 42, "category_id": 1, "bbox": [0.0, 0.0, 1.0, 2.0], "score": 0.25},
    ]
    assert [r["category_id"] for r in to_coco_results([det], [7], cat_ids=[5, 9])] == [9, 5]
    with pytest.raises(ValueError, match="outside"):
        to_coco_results([det], [7], cat_ids=[5])
    # for people (detkit infer --save-json): names, file names, rounding
    det["boxes"] = det["boxes"] + 1 / 3
    assert to_coco_results([det], [3], class_names=["a", "b"], file_names=["x.jpg"], decimals=(2, 1)) == [
        {"image_id": 3, "category_id": 2, "bbox": [10.33, 20.33, 30.0, 5.0], "score": 0.5,
         "category_name": "b", "file_name": "x.jpg"},
        {"image_id": 3, "category_id": 1, "bbox": [0.33, 0.33, 1.0, 2.0], "score": 0.2,
         "category_name": "a", "file_name": "x.jpg"},
    ]


def test_area_override_moves_objects_between_size_ranges():
    box = [0.0, 0.0, 50.0, 50.0]  # box area 2500: medium
    det = dict(boxes=np.array([box]), scores=np.array([0.9]), labels=np.array([0]))
    ev = COCOEvaluator(["a"], backend="pycocotools")
    ev.update([det], [dict(boxes=np.array([box]), labels=np.array([0]), image_id=1)])
    m = ev.compute()
    assert m["coco_ap_m"] == pytest.approx(1.0) and math.isnan(m["coco_ap_s"])
    ev.reset()
    ev.update([det], [dict(boxes=np.array([box]), labels=np.array([0]), area=np.array([500.0]), image_id=1)])
    m = ev.compute()
    assert math.isnan(m["coco_ap_m"])  # the (mask) area says small; the detection's box area says medium
    assert m["coco_ap_s"] == pytest.approx(1.0)
    # images with and without an area in one batch: the one without falls back to its box area
    ev.reset()
    ev.update([det, det], [dict(boxes=np.array([box]), labels=np.array([0]), area=np.array([500.0]), image_id=1),
                           dict(boxes=np.array([box]), labels=np.array([0]), image_id=2)])
    m = ev.compute()
    assert m["coco_ap_s"] == pytest.approx(1.0) and m["coco_ap_m"] == pytest.approx(1.0)


def test_state_merge_and_order_invariance():
    dets, targets = random_dataset(6, num_images=20)
    single = COCOEvaluator(NAMES)
    single.update(dets, targets)
    expected = single.compute()
    states = []
    for rank in range(3):
        ev = COCOEvaluator(NAMES)
        ev.update(dets[rank::3], targets[rank::3])
        states.append(pickle.loads(pickle.dumps(ev.state())))
    merged = COCOEvaluator(NAMES)
    merged.load_states(states[::-1])
    got = merged.compute()
    for key in STAT_KEYS:
        assert_close(got[key], expected[key], 0.0)
    assert got["per_class_coco"].keys() == expected["per_class_coco"].keys()


@pytest.mark.parametrize("backend", BACKENDS)
def test_silent_unless_verbose(backend, capfd):
    dets, targets = random_dataset(7, num_images=3)
    ev = COCOEvaluator(NAMES, backend=backend)
    ev.update(dets, targets)
    ev.compute()
    assert capfd.readouterr().out == ""
    ev = COCOEvaluator(NAMES, backend=backend, verbose=True)
    ev.update(dets, targets)
    ev.compute()
    assert "Average Precision" in capfd.readouterr().out


def test_configuration_errors():
    with pytest.raises(ConfigError, match="backend"):
        COCOEvaluator(NAMES, backend="fast")
    with pytest.raises(ConfigError, match="3 category ids for 4 classes"):
        COCOEvaluator(NAMES, cat_ids=[1, 2, 3])
    with pytest.raises(ConfigError, match="repeated"):
        COCOEvaluator(NAMES, cat_ids=[1, 2, 2, 3])


def test_no_images_does_not_crash():
    m = COCOEvaluator(NAMES).compute()
    assert m["num_images"] == 0 and math.isnan(m["coco_ap"])
