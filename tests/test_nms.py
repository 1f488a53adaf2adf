"""detkit.ops.nms against torchvision and an independent greedy NMS: kept sets, order, the
dense/vectorised algorithm, the postprocessor, tracing.

References: ``greedy_reference`` below, written from the definition (numpy, no torchvision), for
every input small enough that detkit runs torchvision's own coordinate trick (comparing torchvision
with itself there would prove nothing); ``torchvision.ops.batched_nms`` for the public function;
``torchvision.ops.nms`` run group by group (what torchvision does for large inputs) for the internal
strategies, which do not reproduce the rounding of torchvision's small-input coordinate trick.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import nms as tv_nms

from detkit import registry
from detkit.errors import ConfigError
from detkit.ops import BatchedNMS, batched_nms
from detkit.ops import nms as nms_module
from detkit.ops import nms_dense
from detkit.ops import postprocess as postprocess_module

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def random_boxes(n, generator, size=100.0, max_wh=40.0, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * max_wh
    return torch.cat([xy, xy + wh], 1).to(dtype)


def greedy_reference(boxes, scores, idxs, iou_threshold):
    """Greedy NMS from its definition, independent of torchvision and detkit.

    Per group: visit the boxes by descending score, equal scores by ascending index (torchvision's
    stable order); keep a box unless a box kept before it in its group overlaps it with IoU >
    ``iou_threshold``. IoU in the boxes' dtype with the arithmetic of torchvision's kernel (area
    ``(x2-x1)*(y2-y1)``, ``inter / ((area_a + area_b) - inter)``), compared with the threshold as a
    double, as its C++ does. Returns the kept indices by descending score, ties by ascending index.
    """
    b, s, g = boxes.numpy(), scores.numpy(), idxs.numpy()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    kept = []
    for group in np.unique(g):
        members = np.flatnonzero(g == group)
        members = members[np.lexsort((members, -s[members].astype(np.float64)))]
        group_kept = []
        for i in members.tolist():
            if group_kept:
                k = np.array(group_kept)
                w = np.maximum(np.minimum(b[i, 2], b[k, 2]) - np.maximum(b[i, 0], b[k, 0]), 0)
                h = np.maximum(np.minimum(b[i, 3], b[k, 3]) - np.maximum(b[i, 1], b[k, 1]), 0)
                inter = w * h
                with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 (empty boxes): NaN, not > t
                    iou = inter / ((area[i] + area[k]) - inter)
                if (iou.astype(np.float64) > iou_threshold).any():
                    continue
            group_kept.append(i)
        kept += group_kept
    kept = np.array(sorted(kept), dtype=np.int64)
    order = np.lexsort((kept, -s[kept].astype(np.float64)))
    return torch.from_numpy(kept[order])


def test_greedy_reference_hand_computed():
    # IoU(0, 1) = 0.81 / 1.19 = 0.68, IoU(1, 2) = 0.64 / 1.36 = 0.47, IoU(0, 2) = 0.36 / 1.64 = 0.22:
    # at 0.5 box 1 goes, so box 2 stays; at 0.2 box 2 goes too; group 1's copy of box 0 stays.
    boxes = torch.tensor([[0.0, 0, 1, 1], [0.1, 0.1, 1.1, 1.1], [0.2, 0.2, 1.2, 1.2], [0, 0, 1, 1]])
    scores = torch.tensor([0.9, 0.8, 0.8, 0.95])
    idxs = torch.tensor([0, 0, 0, 1])
    assert greedy_reference(boxes, scores, idxs, 0.5).tolist() == [3, 0, 2]
    assert greedy_reference(boxes, scores, idxs, 0.2).tolist() == [3, 0]
    assert greedy_reference(boxes, scores, idxs, 0.7).tolist() == [3, 0, 1, 2]
    # equal scores: the lower index is visited first and suppresses the other
    assert greedy_reference(boxes[:2], torch.tensor([0.5, 0.5]), idxs[:2], 0.5).tolist() == [0]
    assert greedy_reference(boxes[[1, 0]], torch.tensor([0.5, 0.5]), idxs[:2], 0.5).tolist() == [0]


def per_group_reference(boxes, scores, idxs, iou_threshold):
    """torchvision.ops.nms on every group separately; kept indices by (descending score, index)."""
    kept = [torch.empty(0, dtype=torch.int64)]
    for group in torch.unique(idxs).tolist():
        members = (idxs == group).nonzero().squeeze(1)  # ascending index, as torchvision's loop
        kept.append(members[tv_nms(boxes[members], scores[members], iou_threshold)])
    kept = torch.cat(kept).sort().values
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def assert_same_keep(ours, ref, scores, *, same_order=False):
    assert ours.dtype == torch.int64
    assert sorted(ours.tolist()) == sorted(ref.tolist())
    if same_order:
        assert torch.equal(ours, ref)
    else:  # same multiset of scores in the same (descending) sequence; ties may be permuted
        assert torch.equal(scores[ours], scores[ref])
    # documented order: descending score, equal scores by ascending index
    s, i = scores[ours], ours
    assert bool(((s[:-1] > s[1:]) | ((s[:-1] == s[1:]) & (i[:-1] < i[1:]))).all())


CASES = [
    # (boxes, groups, ties, duplicates, degenerate, integer coordinates)
    (50, 3, False, False, False, False),
    (600, 40, True, False, False, False),
    (999, 1, False, True, False, True),
    (1000, 250, True, True, True, False),
    (1001, 1, True, False, False, False),
    (1500, 7, False, False, True, False),
    (2500, 600, True, True, False, True),
    (3000, 2, True, False, False, False),
    (4000, 1500, False, True, True, False),
    (6000, 30, True, True, False, False),
]


def make_case(n, groups, ties, duplicates, degenerate, integer, seed):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(n, g, max_wh=30.0)
    if integer:
        boxes = boxes.round()
    scores = torch.rand(n, generator=g)
    if ties:
        scores = (scores * 10).round() / 10  # heavy ties: 11 distinct values
    if duplicates:
        boxes[n // 2 :] = boxes[: n - n // 2].clone()  # every box twice
    if degenerate:
        boxes[::5, 2] = boxes[::5, 0]  # zero width
        boxes[1::7, 3] = boxes[1::7, 1] - 3  # negative height
    idxs = torch.randint(0, groups, (n,), generator=g)
    return boxes, scores, idxs


# ----------------------------------------------------------------------------------------------
# batched_nms: the public function against torchvision.ops.batched_nms
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("iou_threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_batched_nms_keeps_what_torchvision_keeps(case, iou_threshold):
    boxes, scores, idxs = make_case(*CASES[case], seed=case)
    ours = batched_nms(boxes, scores, idxs, iou_threshold)
    ref = tv_batched_nms(boxes, scores, idxs, iou_threshold)
    # Up to 1000 boxes both run the coordinate trick, whose nms sorts stably: same order too.
    assert_same_keep(ours, ref, scores, same_order=boxes.shape[0] <= 1000)
    if boxes.shape[0] <= 1000:  # there that is torchvision against itself: check the definition
        assert_same_keep(ours, greedy_reference(boxes, scores, idxs, iou_threshold), scores, same_order=True)


def test_many_random_cases_with_ties_and_odd_group_ids():
    g = torch.Generator().manual_seed(123)
    for trial in range(25):
        n = int(torch.randint(900, 5000, (1,), generator=g))
        groups = int(torch.randint(1, 800, (1,), generator=g))
        boxes = random_boxes(n, g, size=80.0, max_wh=40.0)
        scores = (torch.rand(n, generator=g) * 20).round() / 20
        idxs = torch.randint(0, groups, (n,), generator=g) * 977 - 40_000  # sparse, negative ids
        thr = float(torch.rand(1, generator=g))
        ours = batched_nms(boxes, scores, idxs, thr)
        assert_same_keep(ours, tv_batched_nms(boxes, scores, idxs, thr), scores)
        if n <= 1000:
            # torchvision's trick shifts group k by k * (max coordinate + 1): with ids near 10^5 the
            # shifted float32 coordinates are rounded to whole units, and it (and detkit, keeping its
            # set) no longer computes the true IoU. The definition is checked on ids 0..G-1.
            dense_ids = torch.unique(idxs, return_inverse=True)[1]
            assert_same_keep(batched_nms(boxes, scores, dense_ids, thr),
                             greedy_reference(boxes, scores, dense_ids, thr), scores, same_order=True)


def test_empty_and_tiny_inputs():
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    one = batched_nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3]), torch.tensor([4]), 0.5)
    assert one.tolist() == [0]
    # 2000 boxes, each alone in its group: all kept, by descending score
    g = torch.Generator().manual_seed(0)
    boxes, scores = random_boxes(2000, g), torch.rand(2000, generator=g)
    out = batched_nms(boxes, scores, torch.arange(2000), 0.5)
    assert torch.equal(out, torch.sort(scores, descending=True, stable=True).indices)


def test_identical_boxes_and_scores_keep_the_lowest_index_per_group():
    # 3000 copies of one box with one score, in 3 groups: torchvision keeps the first of each group.
    boxes = torch.tensor([[10.0, 10, 50, 50]]).repeat(3000, 1)
    scores = torch.full((3000,), 0.5)
    idxs = torch.arange(3000) % 3
    ours = batched_nms(boxes, scores, idxs, 0.5)
    assert ours.tolist() == [0, 1, 2]
    assert_same_keep(ours, tv_batched_nms(boxes, scores, idxs, 0.5), scores)


def test_hand_computed_example():
    # In group 0, box 1 overlaps box 0 with IoU 0.81 / 1.19 = 0.68; box 2 is apart; group 1's box
    # equals box 0 but is never compared with it.
    boxes = torch.tensor([[0.0, 0, 1, 1], [0.1, 0.1, 1.1, 1.1], [5, 5, 6, 6], [0, 0, 1, 1]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    idxs = torch.tensor([0, 0, 0, 1])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 2, 3]
    assert batched_nms(boxes, scores, idxs, 0.7).tolist() == [0, 1, 2, 3]
    # the same with 1200 far-away filler boxes in their own groups, so that the sorted path runs
    filler = torch.arange(1200, dtype=torch.float32)[:, None] * 10 + torch.tensor([100.0, 100, 101, 101])
    big_boxes = torch.cat([boxes, filler])
    big_scores = torch.cat([scores, torch.full((1200,), 0.1)])
    big_idxs = torch.cat([idxs, torch.arange(1200) + 2])
    kept = batched_nms(big_boxes, big_scores, big_idxs, 0.5).tolist()
    assert kept[:3] == [0, 2, 3] and 1 not in kept and len(kept) == 1203


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes(dtype):
    boxes, scores, idxs = make_case(3000, 40, True, True, False, False, seed=7)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    ours = batched_nms(boxes, scores, idxs, 0.5)
    if dtype == torch.float64:
        ref = tv_batched_nms(boxes, scores, idxs, 0.5)
    else:  # torchvision has no CPU kernel for these; documented: computed in float32
        with pytest.raises(RuntimeError):
            tv_batched_nms(boxes[:10], scores[:10], idxs[:10], 0.5)
        ref = tv_batched_nms(boxes.float(), scores.float(), idxs, 0.5)
    assert_same_keep(ours, ref, scores.float())


@pytest.mark.parametrize("numpy_on_cpu", [True, False])
def test_threshold_is_compared_exactly_like_torchvision(numpy_on_cpu, monkeypatch):
    monkeypatch.setattr(nms_dense, "NUMPY_ON_CPU", numpy_on_cpu)  # False: the GPU code, on CPU
    # 1500 groups of 2 boxes, all pairs with bit-identical geometry (integer translations), so every
    # pair has the same float32 IoU. Thresholds right at that value decide every pair the same way.
    base = torch.tensor([[0.0, 0.0, 7.0, 3.0], [1.5, 0.25, 8.0, 3.5]])
    shifts = torch.arange(1500, dtype=torch.float32)[:, None].repeat(1, 4) * torch.tensor([16.0, 0, 16, 0])
    boxes = (base[None] + shifts[:, None]).reshape(-1, 4)
    scores = torch.tensor([0.9, 0.8]).repeat(1500)
    idxs = torch.arange(1500).repeat_interleave(2)
    iou32 = float(torchvision.ops.box_iou(base[:1], base[1:])[0, 0])  # same float32 arithmetic
    below = float(np.nextafter(np.float32(iou32), np.float32(0)))
    # a double just below the float32 IoU: rounding it to float32 would give the IoU itself
    just_below = iou32 - 2.0**-40
    for thr in (iou32, below, just_below, np.nextafter(iou32, 1.0)):
        ref = tv_batched_nms(boxes, scores, idxs, float(thr))
        for ours in (batched_nms(boxes, scores, idxs, float(thr)),
                     nms_module._batched_nms_vectorized(boxes, scores, idxs, float(thr))):
            assert sorted(ours.tolist()) == sorted(ref.tolist())
    assert len(tv_batched_nms(boxes, scores, idxs, just_below)) == 1500  # suppressing
    assert len(tv_batched_nms(boxes, scores, idxs, iou32)) == 3000  # not suppressing


def test_input_validation():
    boxes, scores, idxs = torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        batched_nms(torch.zeros(3, 5), scores, idxs, 0.5)
    with pytest.raises(ValueError, match="shape"):
        batched_nms(boxes, torch.zeros(4), idxs, 0.5)
    with pytest.raises(ValueError, match="same dtype"):
        batched_nms(boxes, scores.double(), idxs, 0.5)
    with pytest.raises(ValueError, match="integer"):
        batched_nms(boxes, scores, idxs.float(), 0.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        batched_nms(boxes.numpy(), scores, idxs, 0.5)


# ----------------------------------------------------------------------------------------------
# the strategies, against the per-group reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", range(len(CASES)))
def test_cpu_and_vectorized_strategies_match_per_group_nms(case):
    boxes, scores, idxs = make_case(*CASES[case], seed=100 + case)
    for thr in (0.3, 0.6):
        ref = per_group_reference(boxes, scores, idxs, thr)
        assert_same_keep(nms_module._batched_nms_cpu(boxes, scores, idxs, thr), ref, scores, same_order=True)
        assert_same_keep(nms_module._batched_nms_vectorized(boxes, scores, idxs, thr), ref, scores,
                         same_order=True)


def test_vectorized_strategy_with_shifted_large_groups():
    # Groups above dense_max_group go to one nms call with groups shifted apart; with coordinates
    # on a 1/8 grid the shift is exact, so the result must equal per-group NMS exactly.
    g = torch.Generator().manual_seed(5)
    n = 4000
    boxes = (random_boxes(n, g, size=60.0) * 8).round() / 8
    scores = (torch.rand(n, generator=g) * 10).round() / 10
    idxs = torch.cat([torch.randint(0, 4, (n // 2,), generator=g),  # 4 groups of ~500
                      torch.randint(4, 400, (n - n // 2,), generator=g)])  # many small ones
    for thr in (0.0, 0.45):
        ref = per_group_reference(boxes, scores, idxs, thr)
        for batch in (25_000, 900):  # one nms call for the 4 big groups, or one call per group
            ours = nms_module._batched_nms_vectorized(boxes, scores, idxs, thr, dense_max_group=16,
                                                      shift_batch_boxes=batch)
            assert_same_keep(ours, ref, scores, same_order=True)


def test_dense_kernel_handles_groups_longer_than_one_word():
    # groups of 65..130 boxes need two int64 words per row of the packed overlaps
    g = torch.Generator().manual_seed(9)
    sizes = [65, 70, 127, 128, 129, 130, 2, 3]
    idxs = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    boxes = random_boxes(idxs.numel(), g, size=50.0)
    scores = (torch.rand(idxs.numel(), generator=g) * 5).round() / 5
    for thr in (0.2, 0.5):
        ref = per_group_reference(boxes, scores, idxs, thr)
        ours = nms_module._batched_nms_vectorized(boxes, scores, idxs, thr, dense_max_group=1024)
        assert_same_keep(ours, ref, scores, same_order=True)


def test_gpu_code_paths_run_on_cpu_and_match(monkeypatch):
    # Without numpy, CPU tensors go through exactly the torch code that runs on a GPU.
    monkeypatch.setattr(nms_dense, "NUMPY_ON_CPU", False)
    for case in (1, 3, 6, 8):
        boxes, scores, idxs = make_case(*CASES[case], seed=200 + case)
        ref = per_group_reference(boxes, scores, idxs, 0.5)
        ours = nms_module._batched_nms_vectorized(boxes, scores, idxs, 0.5)
        assert_same_keep(ours, ref, scores, same_order=True)
    # integer coordinates (case 6): the shifted large groups are exact as well
    boxes, scores, idxs = make_case(*CASES[6], seed=206)
    ours = nms_module._batched_nms_vectorized(boxes, scores, idxs, 0.5, dense_max_group=4, shift_batch_boxes=50)
    assert_same_keep(ours, per_group_reference(boxes, scores, idxs, 0.5), scores, same_order=True)


def test_descending_keys_order_like_torch_sort():
    values = torch.tensor([0.5, -0.0, 0.0, float("nan"), -1e30, float("inf"), 0.5, -float("nan"),
                           float("-inf"), 1e-45, -1e-45, 0.25, float("nan")])
    for dtype in (torch.float32, torch.float64):
        s = values.to(dtype)
        expected = torch.sort(s, descending=True, stable=True).indices
        key_n = torch.from_numpy(nms_dense.descending_key_numpy(s.numpy()))
        assert torch.equal(torch.sort(key_n, stable=True).indices, expected)


def test_bit_packing_numpy_and_torch_agree_with_a_bit_by_bit_construction():
    g = torch.Generator().manual_seed(3)
    for first, width in ((0, 72), (8, 64), (56, 72), (64, 8)):
        flags = torch.rand(5, 3, width, generator=g) > 0.5
        manual = torch.zeros(5, 3, 2, dtype=torch.int64)
        for j in range(width):
            column = first + j
            manual[..., column // 64] |= flags[..., j].long() << (column % 64)
        assert torch.equal(nms_dense._pack_bits_numpy(flags, first, 2), manual)  # CPU
        assert torch.equal(nms_dense._pack_bits_torch(flags, first, 2), manual)  # GPU code, on CPU
        words = manual.reshape(15, 2).t().contiguous()  # [W, G]
        expected = torch.zeros(15, 128, dtype=torch.bool)
        expected[:, first : first + width] = flags.reshape(15, width)
        assert torch.equal(nms_dense._unpack_bits_numpy(words, 100), expected[:, :100])
        assert torch.equal(nms_dense._unpack_bits_torch(words, 100), expected[:, :100])


# ----------------------------------------------------------------------------------------------
# BatchedNMS postprocessor against a per-image reference built from torchvision
# ----------------------------------------------------------------------------------------------


def reference_postprocess(boxes, scores, iou=0.5, score_threshold=0.05, max_per_image=100, pre_nms_topk=None,
                          class_agnostic=False):
    """One image: boxes [M, 4] or [M, C, 4], scores [M, C] -> dict, with the independent greedy NMS."""
    m, c = scores.shape
    rows, labels = (scores > score_threshold).nonzero(as_tuple=True)  # (box, class) order
    cand_scores = scores[rows, labels]
    cand_boxes = boxes[rows, labels] if boxes.ndim == 3 else boxes[rows]
    if pre_nms_topk is not None:
        top = torch.sort(cand_scores, descending=True, stable=True).indices[:pre_nms_topk].sort().values
        cand_scores, cand_boxes, labels = cand_scores[top], cand_boxes[top], labels[top]
    groups = torch.zeros_like(labels) if class_agnostic else labels
    dtype = torch.promote_types(cand_boxes.dtype, cand_scores.dtype)
    keep = greedy_reference(cand_boxes.to(dtype), cand_scores.to(dtype), groups, iou)  # ties by index
    if max_per_image is not None:
        keep = keep[:max_per_image]
    return {"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": labels[keep]}


def yolo_like(n, m, c, seed, class_specific=False, grid=8.0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, m, c) if class_specific else (n, m)
    xy = torch.rand(*shape, 2, generator=g) * 100
    wh = torch.rand(*shape, 2, generator=g) * 40 + 1
    # coordinates on a 1/8 grid: torchvision's coordinate trick (per-image reference) is then exact
    boxes = (torch.cat([xy, xy + wh], -1) * grid).round() / grid
    scores = torch.rand(n, m, c, generator=g) ** 3  # many below 0.05, no ties
    return boxes, scores


def assert_detections_equal(ours, refs):
    assert len(ours) == len(refs)
    for d, r in zip(ours, refs):
        assert set(d) == {"boxes", "scores", "labels"}
        assert d["labels"].dtype == torch.int64
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(d[key], r[key]), key


@pytest.fixture(params=[True, False], ids=["numpy", "torch"])
def postprocessor_ops(request, monkeypatch):
    """BatchedNMS on CPU runs its numpy steps, or (False) the torch steps that run on a GPU."""
    monkeypatch.setattr(nms_dense, "NUMPY_ON_CPU", request.param)
    return request.param


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("options", [
    {},
    {"max_per_image": 7},
    {"iou_threshold": 0.3, "score_threshold": 0.2},
    {"class_agnostic": True},
    {"pre_nms_topk": 25, "max_per_image": None},
])
def test_postprocessor_matches_per_image_torchvision(class_specific, options, postprocessor_ops):
    boxes, scores = yolo_like(6, 30, 5, seed=len(options), class_specific=class_specific)
    post = BatchedNMS(**options)
    iou = options.get("iou_threshold", 0.5)
    ref_options = {k: v for k, v in options.items() if k != "iou_threshold"}
    refs = [reference_postprocess(boxes[i], scores[i], iou=iou, **ref_options) for i in range(6)]
    assert_detections_equal(post(boxes, scores), refs)


def test_postprocessor_on_a_large_batch_uses_one_batched_call(monkeypatch, postprocessor_ops):
    boxes, scores = yolo_like(16, 98, 20, seed=1)  # > 1000 candidates: the sorted path
    calls = []
    real = postprocess_module.batched_nms
    monkeypatch.setattr(postprocess_module, "batched_nms", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    out = BatchedNMS(max_per_image=50)(boxes, scores)
    assert len(calls) == 1 and calls[0] > 1000
    assert_detections_equal(out, [reference_postprocess(boxes[i], scores[i], max_per_image=50) for i in range(16)])


def test_postprocessor_with_lists_of_different_sizes(postprocessor_ops):
    boxes, scores = yolo_like(4, 40, 3, seed=11, class_specific=True)
    sizes = [40, 0, 17, 33]
    list_boxes = [boxes[i, :s] for i, s in enumerate(sizes)]
    list_scores = [scores[i, :s] for i, s in enumerate(sizes)]
    out = BatchedNMS(max_per_image=10)(list_boxes, list_scores)
    refs = [reference_postprocess(b, s, max_per_image=10) for b, s in zip(list_boxes, list_scores)]
    assert_detections_equal(out, refs)
    assert out[1]["boxes"].shape == (0, 4) and out[1]["labels"].dtype == torch.int64
    # shared boxes as lists, too
    shared = [boxes[i, :s, 0] for i, s in enumerate(sizes)]
    out = BatchedNMS()(shared, list_scores)
    assert_detections_equal(out, [reference_postprocess(b, s) for b, s in zip(shared, list_scores)])


def test_postprocessor_ties_and_empty_results(postprocessor_ops):
    boxes, scores = yolo_like(3, 20, 4, seed=2)
    scores = (scores * 4).round() / 4  # heavy ties
    out = BatchedNMS(score_threshold=0.1)(boxes, scores)
    for i, d in enumerate(out):
        ref = reference_postprocess(boxes[i], scores[i], score_threshold=0.1)
        kept = {(tuple(b.tolist()), float(s), int(lab)) for b, s, lab in zip(d["boxes"], d["scores"], d["labels"])}
        ref_kept = {(tuple(b.tolist()), float(s), int(lab))
                    for b, s, lab in zip(ref["boxes"], ref["scores"], ref["labels"])}
        assert kept == ref_kept
        assert bool((d["scores"][1:] <= d["scores"][:-1]).all())
    nothing = BatchedNMS(score_threshold=1.0)(boxes, scores)
    assert [d["boxes"].shape for d in nothing] == [(0, 4)] * 3
    assert BatchedNMS()([], []) == []


def test_postprocessor_mixed_dtypes_keep_input_dtypes(postprocessor_ops):
    boxes, scores = yolo_like(2, 30, 3, seed=4)
    out = BatchedNMS()(boxes.double(), scores.half())
    assert out[0]["boxes"].dtype == torch.float64 and out[0]["scores"].dtype == torch.float16
    ref = [reference_postprocess(boxes[i].double(), scores[i].half().double()) for i in range(2)]
    for d, r in zip(out, ref):
        assert torch.equal(d["boxes"], r["boxes"]) and torch.equal(d["scores"].double(), r["scores"])
    out = BatchedNMS()(boxes.bfloat16(), scores.bfloat16())  # no numpy dtype: torch steps
    assert out[0]["boxes"].dtype == torch.bfloat16 and out[0]["labels"].dtype == torch.int64


def test_postprocessor_validates_shapes_and_config():
    post = BatchedNMS()
    with pytest.raises(ValueError, match=r"\[N, M, C\]"):
        post(torch.zeros(2, 3, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[N, M, 4\] = \[2, 3, 4\]"):
        post(torch.zeros(2, 4, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="both as batched tensors"):
        post(torch.zeros(2, 3, 4), [torch.zeros(3, 5)] * 2)
    with pytest.raises(ValueError, match="2 box tensors but 1"):
        post([torch.zeros(3, 4)] * 2, [torch.zeros(3, 5)])
    with pytest.raises(ValueError, match="image 1 has 4 classes"):
        post([torch.zeros(3, 4)] * 2, [torch.zeros(3, 5), torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="image 1: boxes mix"):
        post([torch.zeros(3, 4), torch.zeros(2, 5, 4)], [torch.zeros(3, 5), torch.zeros(2, 5)])
    with pytest.raises(ValueError, match="floating point"):
        post(torch.zeros(1, 3, 4, dtype=torch.int64), torch.zeros(1, 3, 2))
    for bad in ({"iou_threshold": 1.5}, {"max_per_image": 0}, {"pre_nms_topk": 2.5},
                {"score_threshold": math.nan}):
        with pytest.raises(ConfigError):
            BatchedNMS(**bad)


def voting_reference(det, cand_boxes, cand_scores, cand_labels, merge_iou):
    """Box voting written out box by box: each kept box -> the score-weighted mean of the same-class
    candidates whose IoU with it is above merge_iou."""
    voted = []
    for box, label in zip(det["boxes"].tolist(), det["labels"].tolist()):
        num, den = [0.0] * 4, 0.0
        for cand, score, lab in zip(cand_boxes.tolist(), cand_scores.tolist(), cand_labels.tolist()):
            iw = max(0.0, min(box[2], cand[2]) - max(box[0], cand[0]))
            ih = max(0.0, min(box[3], cand[3]) - max(box[1], cand[1]))
            inter = iw * ih
            union = (box[2] - box[0]) * (box[3] - box[1]) + (cand[2] - cand[0]) * (cand[3] - cand[1]) - inter
            if lab == label and inter / union > merge_iou:
                num = [a + score * c for a, c in zip(num, cand)]
                den += score
        voted.append([a / den for a in num])
    return torch.tensor(voted, dtype=torch.float64).reshape(-1, 4)


def test_box_voting_hand_computed():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]]])
    scores = torch.tensor([[[0.9, 0.0], [0.6, 0.0], [0.8, 0.0], [0.0, 0.7]]])
    det = BatchedNMS(iou_threshold=0.5, score_threshold=0.01, merge_iou=0.5)(boxes, scores)[0]
    # box 0 (IoU 0.68 with box 1): (0.9 * 0 + 0.6 * 1) / 1.5 = 0.4; box 2 alone; box 3 is class 1,
    # so it neither votes for box 0 nor is moved by it
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.4, 0.4, 10.4, 10.4], [50, 50, 60, 60],
                                                          [0, 0, 10, 10]]))
    assert det["labels"].tolist() == [0, 0, 1] and det["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7])
    # merge_iou 0.7: box 1 no longer votes; the boxes are NMS's
    det = BatchedNMS(iou_threshold=0.5, score_threshold=0.01, merge_iou=0.7)(boxes, scores)[0]
    assert det["boxes"][0].tolist() == [0, 0, 10, 10]
    with pytest.raises(ConfigError, match="merge_iou"):
        BatchedNMS(merge_iou=1.5)


@pytest.mark.parametrize("class_specific", [False, True])
def test_box_voting_matches_a_box_by_box_reference(class_specific, postprocessor_ops):
    boxes, scores = yolo_like(4, 40, 3, seed=7, class_specific=class_specific)
    scores[2] = 0.0  # an image with nothing to keep between images that have (voting goes image by image)
    post = BatchedNMS(iou_threshold=0.4, score_threshold=0.05, merge_iou=0.3, max_per_image=10)
    plain = BatchedNMS(iou_threshold=0.4, score_threshold=0.05, max_per_image=10)
    voted, kept = post(boxes, scores), plain(boxes, scores)
    moved = 0
    for i in range(4):
        # the same detections as plain NMS (scores, labels, order); only the boxes move
        assert torch.equal(voted[i]["scores"], kept[i]["scores"])
        assert torch.equal(voted[i]["labels"], kept[i]["labels"])
        rows, labels = (scores[i] > 0.05).nonzero(as_tuple=True)
        cand = boxes[i][rows, labels] if class_specific else boxes[i][rows]
        expected = voting_reference(kept[i], cand.double(), scores[i][rows, labels].double(), labels, 0.3)
        torch.testing.assert_close(voted[i]["boxes"].double(), expected, rtol=1e-5, atol=1e-4)
        moved += int((voted[i]["boxes"] != kept[i]["boxes"]).any(dim=1).sum())
    assert len(voted[2]["boxes"]) == 0 and all(len(voted[i]["boxes"]) for i in (0, 1, 3))
    assert moved > 5  # the case has overlapping same-class candidates to vote


def test_jit_trace_with_box_voting_matches_eager():
    post = BatchedNMS(max_per_image=20, merge_iou=0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_Postprocess(post), yolo_like(2, 30, 3, seed=41), check_trace=False)
    boxes, scores = yolo_like(2, 60, 3, seed=42)
    for got, want in zip(_unflatten(traced(boxes, scores)), post(boxes, scores)):
        torch.testing.assert_close(got["boxes"], want["boxes"])
        assert torch.equal(got["scores"], want["scores"]) and torch.equal(got["labels"], want["labels"])


def test_postprocessor_is_built_from_the_registry():
    post = registry.build("postprocessors", dict(type="batched_nms", iou_threshold=0.3, max_per_image=10))
    assert isinstance(post, BatchedNMS)
    assert (post.iou_threshold, post.max_per_image, post.score_threshold) == (0.3, 10, 0.05)


# ----------------------------------------------------------------------------------------------
# tracing and export: the pure torch path
# ----------------------------------------------------------------------------------------------


class _Postprocess(torch.nn.Module):
    """A module whose forward ends in the postprocessor, as a detector's does; flat outputs (what
    torch.jit.trace can return)."""

    def __init__(self, post):
        super().__init__()
        self.post = post

    def forward(self, boxes, scores):
        return tuple(t for d in self.post(boxes, scores) for t in (d["boxes"], d["scores"], d["labels"]))


def _unflatten(outputs):
    return [dict(zip(("boxes", "scores", "labels"), outputs[i : i + 3])) for i in range(0, len(outputs), 3)]


@pytest.mark.parametrize("class_specific", [False, True])
def test_jit_trace_of_the_postprocessor_keeps_what_eager_keeps_on_other_sizes(class_specific):
    post = BatchedNMS(max_per_image=40, pre_nms_topk=300)
    traced_on = yolo_like(3, 20, 4, seed=31, class_specific=class_specific)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's deprecation notice
        traced = torch.jit.trace(_Postprocess(post), traced_on, check_trace=False)
    # More boxes per image (so > 1000 candidates: eager takes the numpy/dense path), other counts
    # kept, and an input where nothing passes the score threshold.
    for boxes, scores in (yolo_like(3, 98, 4, seed=32, class_specific=class_specific),
                          yolo_like(3, 7, 4, seed=33, class_specific=class_specific)):
        eager = post(boxes, scores)
        assert_detections_equal(_unflatten(traced(boxes, scores)), eager)
    empty = _unflatten(traced(*yolo_like(3, 50, 4, seed=34, class_specific=class_specific)[:1],
                              torch.zeros(3, 50, 4)))
    assert [d["boxes"].shape for d in empty] == [(0, 4)] * 3


def test_jit_trace_of_batched_nms_keeps_what_eager_keeps():
    def keep(boxes, scores, idxs):
        return batched_nms(boxes, scores, idxs, 0.5)

    small = make_case(300, 5, False, False, False, False, seed=41)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(keep, small, check_trace=False)
    boxes, scores, idxs = make_case(5000, 500, False, False, False, True, seed=42)  # integers: exact shifts
    assert_same_keep(traced(boxes, scores, idxs), batched_nms(boxes, scores, idxs, 0.5), scores, same_order=True)
    assert traced(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)).shape == (0,)


def test_torch_export_of_the_postprocessor_serves_other_box_counts():
    post = BatchedNMS(max_per_image=30)
    boxes, scores = yolo_like(2, 20, 3, seed=51)
    m = torch.export.Dim("m", min=2, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # from torchvision's own fake nms kernel
        program = torch.export.export(_Postprocess(post), (boxes, scores),
                                      dynamic_shapes={"boxes": {1: m}, "scores": {1: m}})
    boxes, scores = yolo_like(2, 98, 3, seed=52)
    assert_detections_equal(_unflatten(program.module()(boxes, scores)), post(boxes, scores))


# ----------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------


@needs_cuda
def test_cuda_vectorized_matches_cpu_reference():
    boxes, scores, idxs = make_case(30_000, 3000, False, False, False, False, seed=21)  # no ties
    ref = per_group_reference(boxes, scores, idxs, 0.5)
    ours = batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)  # > 100k coordinates: vectorised
    assert ours.is_cuda
    assert ours.cpu().tolist() == ref.tolist()


@needs_cuda
def test_cuda_small_input_matches_torchvision_on_cuda():
    boxes, scores, idxs = make_case(5000, 50, False, False, False, False, seed=22)
    cuda = [t.cuda() for t in (boxes, scores, idxs)]
    assert sorted(batched_nms(*cuda, 0.5).tolist()) == sorted(tv_batched_nms(*cuda, 0.5).tolist())


@needs_cuda
def test_cuda_postprocessor_stays_on_device_and_matches_cpu():
    boxes, scores = yolo_like(8, 98, 20, seed=3)
    cpu = BatchedNMS()(boxes, scores)
    gpu = BatchedNMS()(boxes.cuda(), scores.cuda())
    for c, d in zip(cpu, gpu):
        assert d["boxes"].is_cuda and d["labels"].dtype == torch.int64
        assert torch.equal(c["labels"], d["labels"].cpu()) and torch.equal(c["boxes"], d["boxes"].cpu())


@needs_cuda
def test_cuda_traced_postprocessor_matches_eager():
    post = BatchedNMS(max_per_image=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_Postprocess(post), tuple(t.cuda() for t in yolo_like(2, 20, 4, seed=61)),
                                 check_trace=False)
    boxes, scores = (t.cuda() for t in yolo_like(2, 98, 4, seed=62))
    assert_detections_equal(_unflatten(traced(boxes, scores)), post(boxes, scores))
