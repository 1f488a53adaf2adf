"""Batched non-maximum suppression that keeps exactly what torchvision keeps, fast with many groups.

:func:`batched_nms` has the semantics of :func:`torchvision.ops.batched_nms`: greedy NMS run
independently in every group of ``idxs`` (a class, or ``image * C + class`` for a whole batch). It
returns the same set of indices as torchvision, ties and duplicate boxes included, and stays fast
with many groups, where torchvision scans all N boxes once per group.

Strategy by size (``boxes.numel()``, the switch torchvision itself uses):

* up to 4,000 (CPU) / 100,000 (CUDA) coordinates: torchvision's own strategy, one ``nms`` over the
  boxes shifted apart per group (the "coordinate trick"). It is the fastest for few boxes, and
  running the very same arithmetic is the only way to keep the very same set: the shifted
  coordinates are rounded, so an IoU right at the threshold can land on the other side of it than
  in a per-group NMS.
* above that (torchvision: a Python loop over ``torch.unique(idxs)``), we sort once by
  (group, score) and work on contiguous runs (:mod:`detkit.ops.nms_dense`):

  - a group of one box is kept without any work;
  - groups of up to ``_DENSE_MAX_GROUP`` boxes are solved together by the dense kernel, an exact
    greedy pass vectorised over groups whose IoU arithmetic is the one of torchvision's kernel,
    op for op, so every comparison with the threshold has the same outcome;
  - larger groups (few, by construction) go to ``torchvision.ops.nms`` one by one on CPU, where its
    C++ loop beats dense matrices; on CUDA to ``nms`` calls on batches of groups shifted apart
    (:func:`_batched_nms_vectorized`), so that nothing loops in Python per group or per image and
    the host syncs a handful of times per call, not per image.

Traced or exported (``torch.jit.trace``, ``torch.onnx.export``, ``torch.export``, ``torch.compile``:
see :func:`exporting`) it is the coordinate trick alone, pure torch, one graph for every input size,
as torchvision does when traced.

Order of the result: descending score; equal scores by ascending index. That is exactly
torchvision's order for the small sizes (its CPU ``nms`` sorts stably); above them torchvision
orders the kept boxes with an unstable ``sort``, so among equal scores its order is arbitrary (the
kept set is still identical).

Not finite coordinates (NaN, inf) are outside the contract, as in torchvision.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from detkit.ops.nms_dense import group_runs_numpy, group_runs_torch, nms_dense_groups

__all__ = ["batched_nms", "exporting"]

# torchvision.ops.batched_nms uses the coordinate trick up to these many coordinates
# (boxes.numel()) and a per-group loop above (torchvision/ops/boxes.py, from the benchmarks of
# pytorch/vision#1311 and #8925); switching at the same sizes keeps the same set below them.
_COORDINATE_TRICK_MAX_NUMEL = {"cpu": 4_000, "cuda": 100_000}

# Groups up to this size go to the dense kernel; larger ones to torchvision's nms. CPU, measured
# (random groups of K boxes, per group): one nms call costs ~20 us plus one scalar IoU per (kept
# box, later box); the dense rows cost ~13 vectorised ops per pair, kept or not. Sparse boxes (80%
# kept) K=96: dense 35 us, nms 71 us; K=512: 886 vs 1050 us. Crowded boxes (24% kept) K=64: 23 vs
# 35 us; K=96: 42 vs 40 us; K=200: 146 vs 60 us. 96 is never much worse. CUDA: not measured (no GPU
# in this project's CI); 512 replaces a CUDA nms call (a launch and a host sync) per group by a
# share of one padded 512-wide block of IoU rows. Re-measure on a GPU before tuning.
_DENSE_MAX_GROUP = {"cpu": 96, "cuda": 512}

# Boxes per shifted nms call of the CUDA strategy: torchvision's CUDA kernel allocates an overlap
# bit mask of N^2/8 bytes per call (78 MB at 25,000 boxes), so calls are kept about that size.
_SHIFT_BATCH_BOXES = 25_000


def _tv_nms():
    # torch.ops.torchvision.* exist once torchvision is imported; importing it here keeps
    # ``import detkit.ops`` cheap.
    import torchvision.ops  # noqa: F401

    return torch.ops.torchvision.nms


def _device_key(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else "cuda"


def exporting() -> bool:
    """Whether torch is tracing or exporting the running code: ``torch.jit.trace``/``script``,
    ``torch.onnx.export``, ``torch.export`` (strict or not) and ``torch.compile``.

    Code that must stay one graph for every input then takes its pure torch path: no numpy, no
    host-side planning from data (``.tolist()``, Python loops over data-dependent sizes).
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return True
    # torch.compiler.is_compiling: True under torch.compile and torch.export (torch >= 2.3)
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling is not None and is_compiling())


# ----------------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------------


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS applied independently per group; drop-in for :func:`torchvision.ops.batched_nms`.

    Args:
        boxes: ``[N, 4]`` xyxy boxes, float32 or float64 (float16/bfloat16 are computed in float32
            on CPU, where torchvision has no kernel for them).
        scores: ``[N]`` scores, same dtype as ``boxes``.
        idxs: ``[N]`` integer group of every box (category, or ``image * C + category``).
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box of the same
            group is ``> iou_threshold``.

    Returns:
        int64 ``[K]`` indices of the kept boxes by descending score, equal scores by ascending
        index: the set torchvision keeps (see the module docstring about the order).
    """
    _check_nms_inputs(boxes, scores, idxs)
    iou_threshold = float(iou_threshold)
    if exporting():  # one graph for every input size; torchvision does the same when tracing
        return _batched_nms_traceable(*_kernel_dtype(boxes, scores), idxs, iou_threshold)
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes, scores = _kernel_dtype(boxes.detach(), scores.detach())
    key = _device_key(boxes.device)
    if boxes.numel() <= _COORDINATE_TRICK_MAX_NUMEL[key]:
        return _batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)
    if key == "cpu":
        return _batched_nms_cpu(boxes, scores, idxs, iou_threshold)
    return _batched_nms_vectorized(boxes, scores, idxs, iou_threshold)


def _check_nms_inputs(boxes: Tensor, scores: Tensor, idxs: Tensor) -> None:
    for name, t in (("boxes", boxes), ("scores", scores), ("idxs", idxs)):
        if not isinstance(t, Tensor):
            raise TypeError(f"batched_nms: {name} must be a torch.Tensor, got {type(t).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"batched_nms: boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    if scores.shape != (n,) or idxs.shape != (n,):
        raise ValueError(
            f"batched_nms: expected scores and idxs of shape [{n}] for {n} boxes, got "
            f"{tuple(scores.shape)} and {tuple(idxs.shape)}"
        )
    if not boxes.is_floating_point() or scores.dtype != boxes.dtype:
        raise ValueError(
            f"batched_nms: boxes and scores must be floating point of the same dtype, got "
            f"{boxes.dtype} and {scores.dtype}"
        )
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise ValueError(f"batched_nms: idxs must be an integer tensor, got {idxs.dtype}")
    if not (boxes.device == scores.device == idxs.device):
        raise ValueError(
            f"batched_nms: boxes, scores and idxs must be on one device, got {boxes.device}, "
            f"{scores.device}, {idxs.device}"
        )


def _kernel_dtype(boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    # torchvision's CPU nms kernel exists for float32/float64 only (its CUDA one also takes half).
    if boxes.dtype in (torch.float32, torch.float64):
        return boxes, scores
    if boxes.device.type == "cpu" or boxes.dtype != torch.float16:
        return boxes.float(), scores.float()
    return boxes, scores


# ----------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------


def _batched_nms_coordinate_trick(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's small-input strategy with the very same arithmetic (hence the same rounding)."""
    # torchvision computes ``idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))``: same values.
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return _tv_nms()(boxes + offsets[:, None], scores, iou_threshold)


def _batched_nms_traceable(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """The coordinate trick without a branch on the number of boxes (a traced graph must also take
    none): the maximum is taken with a 0 appended, the same value for non-negative coordinates
    (torchvision's contract), so the same arithmetic as eager below the switch size."""
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    return _tv_nms()(boxes + (idxs.to(boxes) * (top + 1))[:, None], scores, iou_threshold)


def _batched_nms_cpu(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Large inputs on CPU: numpy bookkeeping, dense small groups, torchvision's nms for large ones."""
    scores_np = scores.numpy()
    by_score, order, starts, sizes = group_runs_numpy(scores_np, idxs.numpy())
    boxes_np = boxes.contiguous().numpy()
    sorted_boxes = torch.from_numpy(np.take(boxes_np, order, axis=0))

    keep_sorted = np.zeros(order.shape[0], dtype=bool)
    keep_sorted[starts[sizes == 1]] = True  # alone in its group: nothing can suppress it
    dense = np.flatnonzero((sizes >= 2) & (sizes <= _DENSE_MAX_GROUP["cpu"]))
    for kept in nms_dense_groups(sorted_boxes, starts, sizes, dense, iou_threshold):
        keep_sorted[kept.numpy()] = True
    large = np.flatnonzero(sizes > _DENSE_MAX_GROUP["cpu"])
    if large.size:
        # Each group is a run already in visiting order: nms() keeps that order (its sort is
        # stable) and returns positions within the run.
        sorted_scores = torch.from_numpy(np.take(scores_np, order))
        nms = _tv_nms()
        for g in large.tolist():
            s, e = int(starts[g]), int(starts[g] + sizes[g])
            keep_sorted[s + nms(sorted_boxes[s:e], sorted_scores[s:e], iou_threshold).numpy()] = True

    keep = np.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    return torch.from_numpy(by_score[keep[by_score]])


def _batched_nms_vectorized(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    *,
    dense_max_group: int | None = None,
    shift_batch_boxes: int = _SHIFT_BATCH_BOXES,
) -> Tensor:
    """The GPU strategy, runnable on any device: torch ops only, no Python loop per group or image.

    Groups up to ``dense_max_group`` boxes: the dense kernel. Larger groups: ``nms`` calls on
    batches of about ``shift_batch_boxes`` boxes, the groups of a batch shifted apart. The shift is exact for coarse coordinates (integers, multiples of 1/8, ...);
    otherwise, as in torchvision's own coordinate trick, an IoU within rounding of the threshold
    can flip. Used by :func:`batched_nms` for large CUDA inputs; callable on CPU so that tests can
    check it against torchvision without a GPU.
    """
    _check_nms_inputs(boxes, scores, idxs)
    device = boxes.device
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=device)
    boxes, scores = _kernel_dtype(boxes.detach(), scores.detach())
    iou_threshold = float(iou_threshold)
    dense_max_group = _DENSE_MAX_GROUP[_device_key(device)] if dense_max_group is None else dense_max_group

    by_score, order, starts, sizes_dev = group_runs_torch(scores, idxs)
    sizes = sizes_dev.cpu().numpy()  # the one host transfer that plans the work
    sorted_boxes = boxes[order]
    keep_sorted = torch.zeros(n, dtype=torch.bool, device=device)
    keep_sorted[starts[sizes_dev == 1]] = True
    if not iou_threshold >= 0:  # shifted groups need "IoU 0 never suppresses"; rare, exact, slow
        dense_max_group = max(dense_max_group, int(sizes.max()))
    dense = np.flatnonzero((sizes >= 2) & (sizes <= dense_max_group))
    for kept in nms_dense_groups(sorted_boxes, starts, sizes, dense, iou_threshold):
        keep_sorted[kept] = True
    large = np.flatnonzero(sizes > dense_max_group)
    if large.size:
        sorted_scores = scores[order]
        for batch in _batches_of_groups(large, sizes, shift_batch_boxes):
            batch = torch.from_numpy(batch).to(device)
            keep_sorted[_nms_shifted_groups(sorted_boxes, sorted_scores, starts[batch], sizes_dev[batch],
                                            iou_threshold)] = True

    keep = torch.zeros(n, dtype=torch.bool, device=device)
    keep[order] = keep_sorted
    return by_score[keep[by_score]]


def _batches_of_groups(groups: np.ndarray, sizes: np.ndarray, max_boxes: int):
    """Split ``groups`` into consecutive batches of at most ``max_boxes`` boxes (a larger group
    alone). Host-side planning over the few large groups."""
    start, total = 0, 0
    for i, size in enumerate(sizes[groups].tolist()):
        if total and total + size > max_boxes:
            yield groups[start:i]
            start, total = i, 0
        total += size
    yield groups[start:]


def _nms_shifted_groups(sorted_boxes, sorted_scores, starts, sizes, iou_threshold) -> Tensor:
    """Kept positions of the runs ``[start, start+size)``: one nms call, each group shifted by a
    multiple of the coordinate span so that boxes of different groups cannot overlap."""
    device = sorted_boxes.device
    first = torch.cumsum(sizes, 0) - sizes  # where each group starts in the gathered list
    positions = torch.repeat_interleave(starts - first, sizes) + torch.arange(int(sizes.sum()), device=device)
    group_rank = torch.repeat_interleave(torch.arange(sizes.numel(), device=device), sizes)
    boxes, scores = sorted_boxes[positions], sorted_scores[positions]
    if boxes.dtype not in (torch.float32, torch.float64):  # room for the shifts
        boxes, scores = boxes.float(), scores.float()
    span = boxes.max() - boxes.min() + 1
    shifted = boxes + (group_rank.to(boxes) * span)[:, None]
    return positions[_tv_nms()(shifted, scores, iou_threshold)]
