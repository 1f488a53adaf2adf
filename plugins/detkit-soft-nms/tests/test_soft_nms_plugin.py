"""detkit-soft-nms against a slow, literal implementation of the paper's Algorithm 1, and its limits."""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch
from torchvision.ops import batched_nms

from detkit import registry
from detkit.errors import ConfigError


# -- the reference: Bodla et al. 2017, Algorithm 1, one class at a time, plain Python ------------------
def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_soft_nms(boxes, scores, method, sigma, nt, threshold):
    """Returns [(index, final score)] in selection order, for one class."""
    remaining = list(range(len(scores)))
    s = [float(v) for v in scores]
    out = []
    while remaining:
        m = max(remaining, key=lambda i: s[i])
        out.append((m, s[m]))
        remaining.remove(m)
        for i in remaining:
            iou = _iou(boxes[m], boxes[i])
            if method == "linear":
                s[i] *= (1 - iou) if iou >= nt else 1.0
            else:
                s[i] *= math.exp(-(iou * iou) / sigma)
    return [(i, v) for i, v in out if v > threshold]


def reference_batch(boxes, scores, *, method, sigma=0.5, nt=0.3, threshold=0.001, max_det=100):
    """Per image, per class; boxes [M, 4] or [M, C, 4]. Returns a list of sorted (score, label, box) lists."""
    results = []
    for b, s in zip(boxes, scores):
        dets = []
        for c in range(s.shape[1]):
            cls_boxes = (b[:, c] if b.dim() == 3 else b).tolist()
            for i, v in reference_soft_nms(cls_boxes, s[:, c].tolist(), method, sigma, nt, threshold):
                dets.append((v, c, cls_boxes[i]))
        dets.sort(key=lambda d: -d[0])
        results.append(dets[:max_det])
    return results


def assert_matches(detections, expected):
    assert len(detections) == len(expected)
    for det, exp in zip(detections, expected):
        assert det["scores"].shape[0] == len(exp), (det["scores"].shape, len(exp))
        if not exp:
            continue
        torch.testing.assert_close(det["scores"], torch.tensor([e[0] for e in exp]), rtol=1e-5, atol=1e-6)
        assert det["labels"].tolist() == [e[1] for e in exp]
        torch.testing.assert_close(det["boxes"], torch.tensor([e[2] for e in exp]), rtol=0, atol=1e-4)


def clustered_boxes(generator, num_images, num_boxes, num_classes=None, size=200.0):
    """Boxes jittered around a few centres, so that many pairs overlap at all sorts of IoUs."""
    shape = (num_images, num_boxes) if num_classes is None else (num_images, num_boxes, num_classes)
    centres = torch.rand(num_images, 4, 2, generator=generator) * size
    pick = torch.randint(0, 4, shape, generator=generator)
    centre = torch.stack([centres[i][pick[i]] for i in range(num_images)])
    centre = centre + torch.randn(*shape, 2, generator=generator) * 12
    wh = 20 + torch.rand(*shape, 2, generator=generator) * 40
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=-1)


def build(**kwargs):
    return registry.build("postprocessors", dict(type="soft_nms", **kwargs), path="model.postprocessor")


# -- tests ------------------------------------------------------------------------------------------
def test_registered_through_its_own_distribution():
    infos = [i for i in registry.components("postprocessors") if i.name == "soft_nms"]
    assert [(i.distribution, i.status) for i in infos] == [("detkit-soft-nms", "ok")]
    assert infos[0].version == importlib.metadata.version("detkit-soft-nms")


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("class_specific", [False, True])
def test_matches_the_papers_algorithm(method, class_specific):
    g = torch.Generator().manual_seed(7 + class_specific)
    n, m, c = 3, 40, 3
    boxes = clustered_boxes(g, n, m, c if class_specific else None)
    scores = torch.rand(n, m, c, generator=g)
    post = build(method=method, sigma=0.5, iou_threshold=0.3, score_threshold=0.05, max_per_image=1000)
    expected = reference_batch(boxes, scores, method=method, sigma=0.5, nt=0.3, threshold=0.05, max_det=1000)
    assert_matches(post(boxes, scores), expected)
    # Not vacuous: the boxes overlap enough that hard NMS would keep far fewer.
    flat_boxes = (boxes[0].reshape(-1, 4) if class_specific else boxes[0].repeat_interleave(c, dim=0))
    flat_scores, labels = scores[0].reshape(-1), torch.arange(c).repeat(m)
    above = flat_scores > 0.05
    hard = batched_nms(flat_boxes[above], flat_scores[above], labels[above], iou_threshold=0.3)
    assert len(expected[0]) > 1.5 * len(hard)


def test_max_per_image_keeps_the_highest_final_scores():
    g = torch.Generator().manual_seed(3)
    boxes = clustered_boxes(g, 2, 60)
    scores = torch.rand(2, 60, 4, generator=g)
    expected = reference_batch(boxes, scores, method="gaussian", sigma=0.5, threshold=0.001, max_det=17)
    assert_matches(build(max_per_image=17)(boxes, scores), expected)


def test_decay_of_two_overlapping_objects_by_hand():
    # A = [0,0,10,10] (0.9) and B = [0,5,10,15] (0.8) overlap by 50 of 150 pixels: IoU = 1/3.
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 5, 10, 15]]])
    scores = torch.tensor([[[0.9], [0.8]]])
    gaussian = build(method="gaussian", sigma=0.5)(boxes, scores)[0]
    torch.testing.assert_close(gaussian["scores"], torch.tensor([0.9, 0.8 * math.exp(-(1 / 9) / 0.5)]))
    linear = build(method="linear", iou_threshold=0.3)(boxes, scores)[0]
    torch.testing.assert_close(linear["scores"], torch.tensor([0.9, 0.8 * (1 - 1 / 3)]))
    # Below N_t the linear variant leaves the score alone ...
    untouched = build(method="linear", iou_threshold=0.4)(boxes, scores)[0]
    torch.testing.assert_close(untouched["scores"], torch.tensor([0.9, 0.8]))
    # ... while hard NMS at the same threshold deletes the second object.
    assert batched_nms(boxes[0], scores[0, :, 0], torch.zeros(2, dtype=torch.long), 0.3).tolist() == [0]


def test_tiny_sigma_is_hard_nms_that_removes_every_overlap():
    # exp(-IoU^2 / sigma) -> 0 for any IoU > 0 as sigma -> 0: hard NMS with threshold 0. Integer boxes
    # no larger than 40 px have IoU 0 or >= 1/3200, so sigma = 1e-10 makes every decay exactly 0.
    g = torch.Generator().manual_seed(11)
    xy = torch.randint(0, 100, (200, 2), generator=g)
    wh = torch.randint(5, 41, (200, 2), generator=g)
    boxes = torch.cat([xy, xy + wh], dim=1).float()
    scores = torch.rand(200, 2, generator=g)
    result = build(method="gaussian", sigma=1e-10, score_threshold=0.0, max_per_image=1000)(
        boxes[None], scores[None])[0]
    flat_boxes = boxes.repeat_interleave(2, dim=0)
    flat_scores, flat_labels = scores.reshape(-1), torch.arange(2).repeat(200)
    keep = batched_nms(flat_boxes, flat_scores, flat_labels, iou_threshold=0.0)
    assert len(keep) < 300  # plenty of overlaps were removed
    torch.testing.assert_close(result["scores"], flat_scores[keep])  # survivors keep their scores
    assert result["labels"].tolist() == flat_labels[keep].tolist()
    torch.testing.assert_close(result["boxes"], flat_boxes[keep])


def test_linear_on_near_duplicates_behaves_like_hard_nms():
    # Clusters of near-duplicates (IoU > 0.9) far apart: the linear decay (1 - IoU < 0.1) pushes every
    # duplicate under the score threshold, and nothing else overlaps, so the result is hard NMS's.
    g = torch.Generator().manual_seed(5)
    centres = torch.tensor([[50.0, 50], [200, 60], [120, 200], [300, 300]])
    base = torch.cat([centres - 30, centres + 30], dim=1)
    boxes = base.repeat_interleave(6, dim=0) + torch.rand(24, 4, generator=g) * 0.8
    scores = 0.5 + 0.5 * torch.rand(24, 1, generator=g)
    result = build(method="linear", iou_threshold=0.3, score_threshold=0.1)(boxes[None], scores[None])[0]
    keep = batched_nms(boxes, scores[:, 0], torch.zeros(24, dtype=torch.long), iou_threshold=0.3)
    assert len(keep) == 4
    torch.testing.assert_close(result["scores"], scores[keep, 0])
    torch.testing.assert_close(result["boxes"], boxes[keep])


def test_classes_are_independent_unless_class_agnostic():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10]]])
    scores = torch.tensor([[[0.9, 0.0], [0.0, 0.7]]])  # the same box, once per class
    per_class = build()(boxes, scores)[0]
    torch.testing.assert_close(per_class["scores"], torch.tensor([0.9, 0.7]))
    assert per_class["labels"].tolist() == [0, 1]
    agnostic = build(class_agnostic=True)(boxes, scores)[0]
    torch.testing.assert_close(agnostic["scores"], torch.tensor([0.9, 0.7 * math.exp(-1 / 0.5)]))


def test_accepts_lists_and_handles_empty_images():
    g = torch.Generator().manual_seed(1)
    boxes = clustered_boxes(g, 2, 10)
    scores = torch.rand(2, 10, 3, generator=g)
    post = build()
    batched = post(boxes, scores)
    listed = post(list(boxes), list(scores))
    for a, b in zip(batched, listed):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])
    # Per-image lists may differ in length, including empty images and images with no score above threshold.
    out = post([boxes[0], torch.zeros(0, 4), boxes[1][:3]],
               [scores[0], torch.zeros(0, 3), torch.full((3, 3), 0.0005)])
    assert len(out) == 3 and len(out[0]["scores"]) > 0
    for det in out[1:]:
        assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["labels"].shape == (0,)
        assert det["labels"].dtype == torch.long


def test_pre_nms_topk_limits_the_candidates():
    g = torch.Generator().manual_seed(2)
    boxes = clustered_boxes(g, 1, 50)
    scores = torch.rand(1, 50, 2, generator=g)
    out = build(pre_nms_topk=10, max_per_image=1000)(boxes, scores)[0]
    assert len(out["scores"]) <= 10
    assert out["scores"][0] == scores.max()


def test_bad_inputs_and_arguments_are_clear_errors():
    post = build()
    # the batch is checked by detkit's normalise_batch, with the built-in postprocessor's messages
    with pytest.raises(ValueError, match=r"soft_nms: for scores of shape \(1, 5, 2\) boxes must be \[N, M, 4\]"):
        post(torch.zeros(1, 5, 3), torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match="2 images of boxes but 1 of scores"):
        post(torch.zeros(2, 5, 4), torch.zeros(1, 5, 2))
    with pytest.raises(ConfigError, match="model.postprocessor: building postprocessor 'soft_nms' failed: method"):
        build(method="hard")
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        build(sigma=0)
    with pytest.raises(ConfigError, match=r"model.postprocessor.sigmaa: .*Did you mean 'sigma'"):
        build(sigmaa=0.5)


def test_takes_the_override_names_of_batched_nms():
    # `detkit infer --conf/--iou/--max-det` write score_threshold / iou_threshold / max_per_image.
    post = build(method="linear", score_threshold=0.3, iou_threshold=0.6, max_per_image=5)
    assert (post.score_threshold, post.iou_threshold, post.max_per_image) == (0.3, 0.6, 5)


def test_a_detector_config_with_soft_nms_builds_and_detects():
    # yolov1 is detkit's own: missing means a broken registry, so this fails rather than skips
    assert "yolov1" in registry.available("detectors"), registry.available("detectors")
    from detkit.models.builder import build_detector

    model_cfg = dict(type="yolov1", backbone=dict(type="resnet18"),
                     head=dict(type="yolov1", grid_size=7, num_boxes=2, mode="conv"),
                     loss=dict(type="yolov1_loss"),
                     postprocessor=dict(type="soft_nms", method="gaussian", sigma=0.5, score_threshold=0.0,
                                        max_per_image=20))
    model = build_detector(model_cfg, ["cat", "dog", "bird"]).eval()
    assert type(model.postprocessor).__name__ == "SoftNMS" and model.postprocessor.method == "gaussian"
    with torch.no_grad():
        detections = model(torch.rand(2, 3, 96, 96))
    assert len(detections) == 2
    for det in detections:
        assert 0 < len(det["scores"]) <= 20
        assert det["labels"].max() < 3
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(4)
    boxes = clustered_boxes(g, 2, 40, 3)
    scores = torch.rand(2, 40, 3, generator=g)
    post = build()
    cpu = post(boxes, scores)
    gpu = post(boxes.cuda(), scores.cuda())
    for a, b in zip(cpu, gpu):
        assert b["boxes"].device.type == "cuda"
        torch.testing.assert_close(b["scores"].cpu(), a["scores"])
        assert torch.equal(b["labels"].cpu(), a["labels"])
