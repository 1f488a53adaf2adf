"""Batched non-maximum suppression that keeps exactly what torchvision keeps, and the postprocessor.

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
  (group, score) and work on contiguous runs:

  - a group of one box is kept without any work;
  - groups of up to ``_DENSE_MAX_GROUP`` boxes are solved together: padded IoU rows in
    memory-bounded chunks, bit-packed, then an exact greedy pass vectorised over groups
    (:func:`_greedy_groups`). Its IoU arithmetic is the one of torchvision's kernel, op for op,
    so every comparison with the threshold has the same outcome;
  - larger groups (few, by construction) go to ``torchvision.ops.nms`` one by one on CPU, where its
    C++ loop beats dense matrices; on CUDA to ``nms`` calls on batches of groups shifted apart
    (:func:`_batched_nms_vectorized`), so that nothing loops in Python per group or per image and
    the host syncs a handful of times per call, not per image.

CPU execution: the bookkeeping over all N boxes (sorts, gathers, bit packing) is done in numpy and
every torch op touches fewer elements than ATen's parallel grain (32768), so everything runs on the
calling thread. That is deliberate: the work is thousands of small ops, and on a busy machine each
OpenMP wake-up (and torch's OpenMP radix sort of integer keys) can cost milliseconds
(``tools/bench.py nms`` shows the effect on ``torchvision.ops.batched_nms``). The GPU strategy runs
on CPU tensors too (tests check it there against torchvision), just not as fast.

Order of the result: descending score; equal scores by ascending index. That is exactly
torchvision's order for the small sizes (its CPU ``nms`` sorts stably); above them torchvision
orders the kept boxes with an unstable ``sort``, so among equal scores its order is arbitrary (the
kept set is still identical).

Not finite coordinates (NaN, inf) are outside the contract, as in torchvision.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from detkit.errors import ConfigError

__all__ = ["batched_nms", "BatchedNMS"]

# torchvision.ops.batched_nms uses the coordinate trick up to these many coordinates
# (boxes.numel()) and a per-group loop above; we switch at the same sizes (see module docstring).
_COORDINATE_TRICK_MAX_NUMEL = {"cpu": 4_000, "cuda": 100_000}

# Groups up to this size are solved together as padded dense IoU rows; larger ones by torchvision's
# nms. One nms call costs ~20 us plus one scalar IoU per (kept box, later box); the dense rows cost
# ~13 vectorised ops per pair, kept or not. Measured on CPU (random groups of K boxes, per group):
# sparse boxes (80% kept) K=96: dense 35 us, nms 71 us; K=512: 886 vs 1050 us. Crowded boxes
# (24% kept) K=64: 23 vs 35 us; K=96: 42 vs 40 us; K=200: 146 vs 60 us. 96 is never much worse.
_DENSE_MAX_GROUP = {"cpu": 96, "cuda": 512}

# Dense groups are solved by size class, each padded at most to its upper bound (tiny groups share
# one class: they cost nothing anyway).
_SIZE_CLASSES = (8, 16, 32, 64, 128, 256, 512, 1024)

# Largest tensor a CPU op may touch and still run on the calling thread (below ATen's GRAIN_SIZE).
_CPU_SERIAL_ELEMENTS = 32_000


# CPU tensors take numpy for gathers, comparisons and bit packing (see the module docstring); the
# torch code next to it is what runs on GPUs. Tests set this to False to run that code on CPU.
_NUMPY_ON_CPU = True


def _numpy_path(device: torch.device) -> bool:
    return device.type == "cpu" and _NUMPY_ON_CPU and sys.byteorder == "little"


def _tv_nms():
    # torch.ops.torchvision.* exist once torchvision is imported; importing it here keeps
    # ``import detkit.ops`` cheap.
    import torchvision.ops  # noqa: F401

    return torch.ops.torchvision.nms


def _device_key(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else "cuda"


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


def _batched_nms_cpu(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Large inputs on CPU: numpy bookkeeping, dense small groups, torchvision's nms for large ones."""
    scores_np = scores.numpy()
    by_score, order, starts, sizes = _group_runs_numpy(scores_np, idxs.numpy())
    boxes_np = boxes.contiguous().numpy()
    sorted_boxes = torch.from_numpy(np.take(boxes_np, order, axis=0))

    keep_sorted = np.zeros(order.shape[0], dtype=bool)
    keep_sorted[starts[sizes == 1]] = True  # alone in its group: nothing can suppress it
    dense = np.flatnonzero((sizes >= 2) & (sizes <= _DENSE_MAX_GROUP["cpu"]))
    for kept in _nms_dense_groups(sorted_boxes, starts, sizes, dense, iou_threshold):
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
    shift_batch_boxes: int = 25_000,
) -> Tensor:
    """The GPU strategy, runnable on any device: torch ops only, no Python loop per group or image.

    Groups up to ``dense_max_group`` boxes: :func:`_greedy_groups`. Larger groups: ``nms`` calls on
    batches of about ``shift_batch_boxes`` boxes (torchvision's own single-call limit on CUDA: its
    kernel's overlap mask grows as the square of the boxes in one call), the groups of a batch
    shifted apart. The shift is exact for coarse coordinates (integers, multiples of 1/8, ...);
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

    by_score, order, starts, sizes_dev = _group_runs_torch(scores, idxs)
    sizes = sizes_dev.cpu().numpy()  # the one host transfer that plans the work
    sorted_boxes = boxes[order]
    keep_sorted = torch.zeros(n, dtype=torch.bool, device=device)
    keep_sorted[starts[sizes_dev == 1]] = True
    if not iou_threshold >= 0:  # shifted groups need "IoU 0 never suppresses"; rare, exact, slow
        dense_max_group = max(dense_max_group, int(sizes.max()))
    dense = np.flatnonzero((sizes >= 2) & (sizes <= dense_max_group))
    for kept in _nms_dense_groups(sorted_boxes, starts, sizes, dense, iou_threshold):
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


# ----------------------------------------------------------------------------------------------
# sorting boxes into group runs
# ----------------------------------------------------------------------------------------------


def _group_runs_numpy(scores: np.ndarray, idxs: np.ndarray):
    """``by_score`` (all boxes by descending score, ties by index), ``order`` (the same, grouped:
    each group a contiguous run), and the runs' ``starts`` and ``sizes``; numpy, on one thread."""
    n = scores.shape[0]
    key = _descending_key_numpy(scores)
    positions = np.arange(n, dtype=np.uint64)
    if key.dtype == np.int32 and n < 2**32:
        # Unique 64-bit keys (score key, index): numpy's SIMD sort, no stable sort needed.
        packed = np.sort(((key.astype(np.int64) + 2**31).astype(np.uint64) << np.uint64(32)) | positions)
        by_score = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    else:
        by_score = np.argsort(key, kind="stable")
    ids = np.take(idxs, by_score).astype(np.int64)
    lo = ids.min()
    if int(ids.max()) - int(lo) < 2**32 and n < 2**32:
        packed = np.sort(((ids - lo).astype(np.uint64) << np.uint64(32)) | positions)
        within = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
        sorted_ids = (packed >> np.uint64(32)).astype(np.int64)
    else:
        within = np.argsort(ids, kind="stable")
        sorted_ids = np.take(ids, within)
    order = np.take(by_score, within)
    is_start = np.empty(n, dtype=bool)
    is_start[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    sizes = np.diff(starts, append=n)
    return by_score, order, starts, sizes


def _group_runs_torch(scores: Tensor, idxs: Tensor):
    """:func:`_group_runs_numpy` in torch (any device); ``starts``/``sizes`` stay on the device."""
    n = scores.shape[0]
    by_score = torch.sort(_descending_key_torch(scores), stable=True).indices
    ids = idxs[by_score].long()
    lo, hi = (int(v) for v in torch.stack(torch.aminmax(ids)).tolist())
    for dtype in (torch.int16, torch.int32, torch.int64):  # narrow keys sort faster
        if hi - lo <= torch.iinfo(dtype).max:
            break
    sorted_ids, within = torch.sort((ids - lo).to(dtype), stable=True)
    order = by_score[within]
    is_start = torch.ones(n, dtype=torch.bool, device=scores.device)
    is_start[1:] = sorted_ids[1:] != sorted_ids[:-1]
    starts = is_start.nonzero().squeeze(1)
    sizes = torch.diff(starts, append=starts.new_tensor([n]))
    return by_score, order, starts, sizes


def _descending_key_numpy(scores: np.ndarray) -> np.ndarray:
    """Integer keys whose ascending order is ``torch.sort(scores, descending=True)``'s order.

    Same conventions as torch.sort: NaN is the largest value, -0.0 equals 0.0. int32 keys for
    float32 (float16 is widened exactly), int64 for float64.
    """
    s = scores.astype(np.float32) if scores.dtype.itemsize < 4 else scores
    s = np.where(np.isnan(s), s.dtype.type(np.nan), s + s.dtype.type(0.0))  # one NaN; -0.0 -> +0.0
    bits = s.view(np.int32 if s.dtype == np.float32 else np.int64)
    sign_shift = 8 * bits.dtype.itemsize - 1
    # IEEE floats are sign-magnitude: flipping the magnitude bits of negative values makes the
    # signed-integer order the float order; ``~`` reverses it for descending.
    return ~(bits ^ ((bits >> sign_shift) & np.iinfo(bits.dtype).max))


def _descending_key_torch(scores: Tensor) -> Tensor:
    """:func:`_descending_key_numpy` in torch."""
    s = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    s = torch.where(torch.isnan(s), torch.full_like(s, math.nan), s + 0.0)
    bits = s.view(torch.int32 if s.dtype == torch.float32 else torch.int64)
    sign_shift = 8 * bits.element_size() - 1
    return ~(bits ^ ((bits >> sign_shift) & torch.iinfo(bits.dtype).max))


# ----------------------------------------------------------------------------------------------
# dense kernel: many small groups at once
# ----------------------------------------------------------------------------------------------


def _nms_dense_groups(sorted_boxes: Tensor, starts, sizes: np.ndarray, groups: np.ndarray, iou_threshold: float):
    """Yield the kept positions (in ``sorted_boxes``) of the given groups, solved together by size class.

    ``starts`` (numpy for CPU boxes, else a tensor on their device) and ``sizes`` (numpy) describe
    all runs; ``groups`` selects the runs to solve.
    """
    device = sorted_boxes.device
    cpu = device.type == "cpu"
    chunk_elements = _CPU_SERIAL_ELEMENTS if cpu else 1 << 23  # GPU: bounds memory (32 MB a temporary)
    rows_per_block = 8 if cpu else 32
    by_size = groups[np.argsort(-sizes[groups], kind="stable")]  # largest first
    group_sizes = sizes[by_size]
    first = 0
    while first < by_size.size:
        lower = max((b for b in _SIZE_CLASSES if b < group_sizes[first]), default=0)
        last = first + int(np.count_nonzero(group_sizes[first:] > lower))
        words = -(-int(group_sizes[first]) // 64)
        # On CPU the per-group tensors of a slab ([rows, words, groups]) stay below the grain.
        slab = max(1, _CPU_SERIAL_ELEMENTS // (rows_per_block * words)) if cpu else last - first
        for s in range(first, last, slab):
            e = min(last, s + slab)
            if isinstance(starts, np.ndarray):
                run_starts = torch.from_numpy(starts[by_size[s:e]])
            else:
                run_starts = starts[torch.from_numpy(by_size[s:e]).to(device)]
            yield _greedy_groups(sorted_boxes, run_starts, group_sizes[s:e], iou_threshold,
                                 chunk_elements, rows_per_block)
        first = last


def _greedy_groups(
    sorted_boxes: Tensor,
    starts: Tensor,
    sizes: np.ndarray,
    iou_threshold: float,
    chunk_elements: int,
    rows_per_block: int = 8,
) -> Tensor:
    """Exact greedy NMS of many groups at once; returns the kept positions in ``sorted_boxes``.

    Group ``g`` is ``sorted_boxes[starts[g] : starts[g] + sizes[g]]`` in visiting order
    (descending score), ``sizes`` (numpy) descending. Visiting positions ``i = 0, 1, ...``
    vectorised over the groups that long, box ``i`` is kept iff nothing suppressed it yet, and then
    suppresses every later box whose IoU with it is > threshold: exactly the loop of torchvision's
    kernel.

    The IoU rows are computed ``rows_per_block`` at a time from the diagonal on (the upper
    triangle), for chunks of consecutive groups padded to the chunk's largest one (``sizes`` being
    sorted, little is wasted) with at most ``chunk_elements`` values per temporary, and bit-packed:
    the sequential part then touches one int64 per 64 boxes of each group.

    IoU uses the arithmetic of torchvision's kernel, op for op: ``area = (x2-x1)*(y2-y1)``,
    ``inter = max(0, min(x2)-max(x1)) * max(0, min(y2)-max(y1))``,
    ``iou = inter / ((area_i + area_j) - inter)``, compared ``> threshold`` exactly (see
    :func:`_threshold_below`): every decision is the one torchvision takes. A row also gets the
    overlaps with the earlier columns of its block; they change nothing: the earlier box is either
    suppressed already, or kept, and then, IoU being symmetric op for op, it would have suppressed
    this one. The box itself (IoU 1) is masked.
    """
    device = sorted_boxes.device
    num_groups, k_max = len(sizes), int(sizes[0])
    rows_per_block = max(8, rows_per_block - rows_per_block % 8)  # blocks start on byte boundaries
    k8_max = -(-k_max // 8) * 8  # columns padded to whole bytes; padding is never kept
    words = -(-k8_max // 64)
    dtype = sorted_boxes.dtype if sorted_boxes.dtype in (torch.float32, torch.float64) else torch.float32
    threshold = _threshold_below(iou_threshold, dtype)
    sizes_dev = torch.from_numpy(np.ascontiguousarray(sizes)).to(device)
    # live[r]: how many groups (a prefix: sizes are descending) have a box at position r
    live = np.concatenate([np.cumsum(np.bincount(sizes, minlength=k_max + 1)[::-1])[::-1][1:], [0]]).tolist()

    # Chunks of consecutive groups, gathered once and padded to the chunk's largest group: planes
    # (x1, y1, x2, y2, area) [5, g, k8], viewed as columns [5, g, k8, 1] for the rows of a block and
    # as rows [5, g, 1, k8] for its columns, so that a block only slices them. (Chunks sized for the
    # first block and reused by all measured faster than re-chunking each block.)
    chunks = []
    g0 = 0
    while g0 < num_groups:
        k8 = -(-int(sizes[g0]) // 8) * 8
        g1 = min(num_groups, g0 + max(1, chunk_elements // (rows_per_block * k8)))
        slots = _run_slots(starts[g0:g1], sizes[g0:g1], k8)
        x1, y1, x2, y2 = _gather(sorted_boxes, slots).to(dtype).permute(2, 0, 1)
        planes = torch.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)])  # [5, g, k8]
        chunks.append((g0, g1, k8, planes[:, :, :, None], planes[:, :, None, :]))
        g0 = g1

    suppressed = _padding_bits(sizes_dev, words)  # [W, G]; padding counts as suppressed from the start
    for r0 in range(0, k_max, rows_per_block):
        block_rows, width, groups = min(rows_per_block, k8_max - r0), k8_max - r0, live[r0]
        over = _zeros_bool((groups, block_rows, width), device)
        for g0, g1, k8, row_planes, col_planes in chunks:
            g = min(g1, groups) - g0  # the chunk's groups still that long: a prefix of the chunk
            if g <= 0:
                break
            rows, cols = min(block_rows, k8 - r0), k8 - r0
            x1r, y1r, x2r, y2r, ar = row_planes[:, :g, r0 : r0 + rows].unbind(0)  # [g, rows, 1] each
            x1c, y1c, x2c, y2c, ac = col_planes[:, :g, :, r0:k8].unbind(0)  # [g, 1, cols] each
            w = torch.minimum(x2r, x2c).sub_(torch.maximum(x1r, x1c)).clamp_(min=0)  # [g, rows, cols]
            h = torch.minimum(y2r, y2c).sub_(torch.maximum(y1r, y1c)).clamp_(min=0)
            inter = w.mul_(h)
            union = torch.add(ar, ac).sub_(inter)
            _greater(inter.div_(union), threshold, out=over[g0 : g0 + g, :rows, :cols])
        over.diagonal(dim1=1, dim2=2).fill_(False)  # box r0+t is column t of row t: itself
        over_bits = _pack_bits(over, r0, words).permute(1, 2, 0).contiguous()  # [rows, W, groups]
        for t in range(block_rows):
            r = r0 + t
            count = live[r] if r < k_max else 0
            if count == 0:
                break
            w, b = divmod(r, 64)
            keeps = (suppressed[w, :count] >> b).bitwise_and_(1).sub_(1)  # all bits if box r is kept
            suppressed[:, :count].bitwise_or_(over_bits[t, :, :count].bitwise_and_(keeps))

    kept = _unpack_bits(suppressed.bitwise_not_(), k_max)  # [G, k_max]
    if _numpy_path(device):  # numpy: no OpenMP for a possibly large nonzero/gather
        group, position = np.nonzero(kept.numpy())
        return torch.from_numpy(starts.numpy()[group] + position)
    group, position = kept.nonzero(as_tuple=True)
    return starts[group] + position


def _greater(values: Tensor, threshold: float, out: Tensor) -> None:
    """``out = values > threshold``; numpy on CPU, where it is several times faster for bool output.
    ``threshold`` must be exactly representable in ``values.dtype`` (both libraries cast it)."""
    if _numpy_path(values.device):
        np.greater(values.numpy(), threshold, out=out.numpy())
    else:
        torch.gt(values, threshold, out=out)


def _zeros_bool(shape: tuple[int, ...], device: torch.device) -> Tensor:
    if _numpy_path(device):  # numpy's calloc: no multi-threaded fill of a large buffer
        return torch.from_numpy(np.zeros(shape, dtype=bool))
    return torch.zeros(shape, dtype=torch.bool, device=device)


def _gather(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]``; on CPU through numpy, as torch's CPU index kernel goes multi-threaded
    from a few thousand elements (see the module docstring)."""
    if _numpy_path(table.device):
        return torch.from_numpy(np.take(table.numpy(), index.numpy(), axis=0))
    return table[index]


def _run_slots(starts: Tensor, sizes: np.ndarray, width: int) -> Tensor:
    """``[G, width]`` positions ``starts[g] + j`` of the runs, 0 past a run's end (padding)."""
    if _numpy_path(starts.device):
        cols = np.arange(width)
        return torch.from_numpy(np.where(cols < sizes[:, None], starts.numpy()[:, None] + cols, 0))
    cols = torch.arange(width, device=starts.device)
    sizes = torch.from_numpy(np.ascontiguousarray(sizes)).to(starts.device)
    return torch.where(cols < sizes[:, None], starts[:, None] + cols, 0)


def _padding_bits(sizes: Tensor, words: int) -> Tensor:
    """``[W, G]`` int64: bit ``p`` (of word ``p // 64``) set for positions ``p >= sizes[g]``."""
    base = 64 * torch.arange(words, device=sizes.device)[:, None]
    real = (sizes[None, :] - base).clamp_(0, 64)  # real boxes in each word
    # ~(2^real - 1); for real = 63, 2^63 - 1 wraps to int64 max as wanted, and real = 64 -> 0 bits.
    return torch.where(real >= 64, 0, ~(torch.bitwise_left_shift(torch.ones_like(real), real.clamp(max=63)) - 1))


def _pack_bits(flags: Tensor, first_column: int, words: int) -> Tensor:
    """Pack bools ``[..., C]`` standing for columns ``first_column .. first_column+C-1`` into int64
    words ``[..., words]``: column ``c`` is bit ``c % 64`` of word ``c // 64``; others are 0.
    ``first_column`` must be a multiple of 8."""
    if _numpy_path(flags.device):
        return _pack_bits_numpy(flags, first_column, words)
    return _pack_bits_torch(flags, first_column, words)


def _pack_bits_numpy(flags: Tensor, first_column: int, words: int) -> Tensor:
    # numpy's packbits is one SIMD pass on the calling thread
    packed = np.zeros((*flags.shape[:-1], 8 * words), dtype=np.uint8)
    bits = np.packbits(flags.numpy(), axis=-1, bitorder="little")
    packed[..., first_column // 8 : first_column // 8 + bits.shape[-1]] = bits
    return torch.from_numpy(packed).view(torch.int64)


def _pack_bits_torch(flags: Tensor, first_column: int, words: int) -> Tensor:
    *lead, width = flags.shape
    full = torch.zeros((*lead, 64 * words), dtype=torch.bool, device=flags.device)
    full[..., first_column : first_column + width] = flags
    shifts = torch.arange(64, device=flags.device)
    # Bits are distinct powers of two, so the int64 sum is their OR (bit 63 wraps to the sign bit).
    return (full.reshape(*lead, words, 64).to(torch.int64) << shifts).sum(-1)


def _unpack_bits(words: Tensor, width: int) -> Tensor:
    """Bools ``[G, width]`` from ``[W, G]`` int64 words (the layout of :func:`_pack_bits`)."""
    if _numpy_path(words.device):
        return _unpack_bits_numpy(words, width)
    return _unpack_bits_torch(words, width)


def _unpack_bits_numpy(words: Tensor, width: int) -> Tensor:
    as_bytes = words.t().contiguous().numpy().view(np.uint8)  # [G, 8W]
    return torch.from_numpy(np.unpackbits(as_bytes, axis=-1, count=width, bitorder="little").view(bool))


def _unpack_bits_torch(words: Tensor, width: int) -> Tensor:
    shifts = torch.arange(64, device=words.device)
    bits = (words.t()[:, :, None] >> shifts) & 1  # [G, W, 64]
    return bits.reshape(words.shape[1], -1)[:, :width].bool()


def _threshold_below(iou_threshold: float, dtype: torch.dtype) -> float:
    """Largest value of ``dtype`` that is <= iou_threshold.

    torchvision compares the IoU (a float of the box dtype) with the threshold as a double. Torch
    would round a Python float to the tensor's dtype first, which flips ``iou > t`` when the IoU
    equals the rounded threshold and that rounding went up. For an IoU ``x`` of ``dtype``,
    ``x > t`` exactly iff ``x > t_down``.
    """
    if dtype == torch.float64 or math.isnan(iou_threshold) or math.isinf(iou_threshold):
        return iou_threshold
    t = torch.tensor(iou_threshold, dtype=torch.float64).to(dtype)
    if float(t) > iou_threshold:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return float(t)

# ----------------------------------------------------------------------------------------------
# postprocessor
# ----------------------------------------------------------------------------------------------


class BatchedNMS:
    """Score threshold, per-class NMS and top-k on a whole batch: the detector postprocessor.

    ``__call__(boxes, scores)``:

    * ``boxes`` ``[N, M, 4]`` shared by all classes (YOLO-style) or ``[N, M, C, 4]`` per class
      (R-CNN style), xyxy; ``scores`` ``[N, M, C]`` per-class probabilities (no background column).
    * or lists with one tensor per image (``[M_i, 4]`` / ``[M_i, C, 4]`` and ``[M_i, C]``) when M
      differs between images.

    Steps: keep (box, class) candidates with ``score > score_threshold``; optionally the
    ``pre_nms_topk`` best per image; one :func:`batched_nms` for the whole batch (groups
    ``image * C + class``, or ``image`` when ``class_agnostic``); at most ``max_per_image`` per
    image. Returns ``list[dict(boxes=[K, 4], scores=[K], labels=int64 [K])]``, one per image, on the
    input device, each by descending score (equal scores: lower box index, then lower class first).
    """

    def __init__(
        self,
        iou_threshold: float = 0.5,
        score_threshold: float = 0.05,
        max_per_image: int | None = 100,
        pre_nms_topk: int | None = None,
        class_agnostic: bool = False,
    ):
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ConfigError(f"BatchedNMS: iou_threshold must be in [0, 1], got {iou_threshold}")
        if math.isnan(float(score_threshold)):
            raise ConfigError("BatchedNMS: score_threshold must be a number, got NaN")
        for name, value in (("max_per_image", max_per_image), ("pre_nms_topk", pre_nms_topk)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"BatchedNMS: {name} must be a positive integer or None, got {value!r}")
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)
        self.max_per_image = max_per_image
        self.pre_nms_topk = pre_nms_topk
        self.class_agnostic = bool(class_agnostic)

    def __repr__(self) -> str:
        return (
            f"BatchedNMS(iou_threshold={self.iou_threshold}, score_threshold={self.score_threshold}, "
            f"max_per_image={self.max_per_image}, pre_nms_topk={self.pre_nms_topk}, "
            f"class_agnostic={self.class_agnostic})"
        )

    def __call__(self, boxes, scores) -> list[dict[str, Tensor]]:
        boxes, scores, image_of_row, num_images = _flatten_batch(boxes, scores)
        if num_images == 0:
            return []
        num_classes = scores.shape[1]
        numpy_ok = _numpy_path(scores.device) and {boxes.dtype, scores.dtype} <= _NUMPY_FLOATS
        ops = _NumpyOps if numpy_ok else _TorchOps  # the same steps on either (see _NumpyOps)
        boxes, scores, image_of_row = ops.array(boxes), ops.array(scores), ops.array(image_of_row)

        # Candidates in (image, box, class) order: batched_nms breaks score ties by this order.
        rows, labels = ops.nonzero(scores > self.score_threshold)
        cand_scores = scores[rows, labels]
        cand_boxes = boxes[rows, labels] if boxes.ndim == 3 else boxes[rows]
        images = image_of_row[rows]

        if self.pre_nms_topk is not None:
            by_score = ops.argsort_descending(cand_scores)
            chosen = ops.sort(by_score[_first_per_image(ops, images[by_score], num_images, self.pre_nms_topk)])
            cand_scores, cand_boxes, images, labels = (
                cand_scores[chosen], cand_boxes[chosen], images[chosen], labels[chosen])

        groups = images if self.class_agnostic else images * num_classes + labels
        nms_boxes, nms_scores = ops.tensor(cand_boxes), ops.tensor(cand_scores)
        dtype = torch.promote_types(nms_boxes.dtype, nms_scores.dtype)
        keep = ops.array(batched_nms(nms_boxes.to(dtype), nms_scores.to(dtype), ops.tensor(groups),
                                     self.iou_threshold))
        # ``keep`` is by descending score; regroup it by image (stably: score order within images).
        keep = keep[_first_per_image(ops, images[keep], num_images, self.max_per_image)]
        counts = ops.bincount(images[keep], num_images).tolist()
        return [
            {"boxes": ops.tensor(b), "scores": ops.tensor(s), "labels": ops.tensor(lab)}
            for b, s, lab in zip(ops.split(cand_boxes[keep], counts), ops.split(cand_scores[keep], counts),
                                 ops.split(labels[keep], counts))
        ]


def _first_per_image(ops, images, num_images: int, k: int | None):
    """Positions of a sequence grouped stably by image, keeping the first ``k`` of each image."""
    by_image = ops.argsort_stable(images)
    if k is None:
        return by_image
    counts = ops.bincount(images, num_images)
    first_of_image = counts.cumsum(0) - counts
    rank = ops.arange(images.shape[0], like=images) - first_of_image[images[by_image]]
    return by_image[rank < k]


_NUMPY_FLOATS = {torch.float16, torch.float32, torch.float64}


class _NumpyOps:
    """The array steps of :class:`BatchedNMS` in numpy: for CPU tensors, on the calling thread (see
    the module docstring). Indexing and arithmetic are written the same for both libraries."""

    array = staticmethod(lambda t: t.detach().numpy())
    tensor = staticmethod(torch.from_numpy)
    nonzero = staticmethod(np.nonzero)
    sort = staticmethod(np.sort)
    arange = staticmethod(lambda n, like: np.arange(n))
    bincount = staticmethod(lambda x, n: np.bincount(x, minlength=n))
    argsort_stable = staticmethod(lambda x: np.argsort(x, kind="stable"))
    argsort_descending = staticmethod(lambda x: np.argsort(_descending_key_numpy(x), kind="stable"))
    split = staticmethod(lambda x, counts: np.split(x, np.cumsum(counts)[:-1]))


class _TorchOps:
    """The array steps of :class:`BatchedNMS` in torch (GPU, or dtypes numpy lacks)."""

    array = staticmethod(lambda t: t)
    tensor = staticmethod(lambda t: t)
    nonzero = staticmethod(lambda mask: mask.nonzero(as_tuple=True))
    sort = staticmethod(lambda x: torch.sort(x).values)
    arange = staticmethod(lambda n, like: torch.arange(n, device=like.device))
    bincount = staticmethod(lambda x, n: torch.bincount(x, minlength=n))
    # descending on -x is the stable ascending order; it keeps torch off its OpenMP radix sort
    # (ascending integer keys only), very slow on a busy CPU.
    argsort_stable = staticmethod(lambda x: torch.sort(x.neg(), descending=True, stable=True).indices)
    argsort_descending = staticmethod(lambda x: torch.sort(x, descending=True, stable=True).indices)
    split = staticmethod(lambda x, counts: x.split(counts))


def _flatten_batch(boxes, scores) -> tuple[Tensor, Tensor, Tensor, int]:
    """Validate a batch and flatten it to rows: boxes ``[R, 4]`` or ``[R, C, 4]``, scores ``[R, C]``,
    and the image of every row."""
    if isinstance(boxes, Tensor) and isinstance(scores, Tensor):
        if scores.ndim != 3:
            raise ValueError(f"BatchedNMS: scores must be [N, M, C], got shape {tuple(scores.shape)}")
        n, m, c = scores.shape
        if boxes.shape == (n, m, 4):
            flat_boxes = boxes.reshape(n * m, 4)
        elif boxes.shape == (n, m, c, 4):
            flat_boxes = boxes.reshape(n * m, c, 4)
        else:
            raise ValueError(
                f"BatchedNMS: for scores of shape {tuple(scores.shape)} boxes must be [N, M, 4] = "
                f"[{n}, {m}, 4] or [N, M, C, 4] = [{n}, {m}, {c}, 4], got {tuple(boxes.shape)}"
            )
        _check_float_same_device(flat_boxes, scores, "")
        image_of_row = torch.arange(n, device=scores.device).repeat_interleave(m)
        return flat_boxes, scores.reshape(n * m, c), image_of_row, n

    if isinstance(boxes, Tensor) or isinstance(scores, Tensor) or not (
        isinstance(boxes, Sequence) and isinstance(scores, Sequence)
    ):
        raise ValueError(
            "BatchedNMS: pass boxes and scores either both as batched tensors ([N, M, 4] or "
            "[N, M, C, 4] with [N, M, C]) or both as lists with one tensor per image, got "
            f"{type(boxes).__name__} and {type(scores).__name__}"
        )
    if len(boxes) != len(scores):
        raise ValueError(f"BatchedNMS: {len(boxes)} box tensors but {len(scores)} score tensors")
    if len(boxes) == 0:
        return torch.zeros((0, 4)), torch.zeros((0, 0)), torch.zeros((0,), dtype=torch.int64), 0
    num_classes, per_class, device = None, None, None
    for i, (b, s) in enumerate(zip(boxes, scores)):
        if not isinstance(b, Tensor) or not isinstance(s, Tensor):
            raise ValueError(f"BatchedNMS: image {i}: boxes and scores must be tensors, got "
                             f"{type(b).__name__} and {type(s).__name__}")
        if s.ndim != 2:
            raise ValueError(f"BatchedNMS: image {i}: scores must be [M, C], got shape {tuple(s.shape)}")
        m, c = s.shape
        if num_classes is None:
            num_classes, device = c, s.device
        elif c != num_classes:
            raise ValueError(f"BatchedNMS: image {i} has {c} classes in scores, image 0 has {num_classes}")
        if b.shape not in ((m, 4), (m, c, 4)):
            raise ValueError(
                f"BatchedNMS: image {i}: for scores of shape {tuple(s.shape)} boxes must be [M, 4] = "
                f"[{m}, 4] or [M, C, 4] = [{m}, {c}, 4], got {tuple(b.shape)}"
            )
        if m and per_class is None:
            per_class = b.ndim == 3
        elif m and per_class != (b.ndim == 3):
            raise ValueError(f"BatchedNMS: image {i}: boxes mix shared [M, 4] and class-specific "
                             "[M, C, 4] layouts within one batch")
        if s.device != device:
            raise ValueError(f"BatchedNMS: image {i} is on {s.device}, image 0 on {device}")
        _check_float_same_device(b, s, f" image {i}:")
    box_shape = (num_classes, 4) if per_class else (4,)
    flat_boxes = torch.cat([b.reshape(b.shape[0], *box_shape) for b in boxes])
    flat_scores = torch.cat(list(scores))
    counts = torch.tensor([s.shape[0] for s in scores], device=device)
    image_of_row = torch.arange(len(scores), device=device).repeat_interleave(counts)
    return flat_boxes, flat_scores, image_of_row, len(scores)


def _check_float_same_device(boxes: Tensor, scores: Tensor, where: str) -> None:
    if not boxes.is_floating_point() or not scores.is_floating_point():
        raise ValueError(f"BatchedNMS:{where} boxes and scores must be floating point, got "
                         f"{boxes.dtype} and {scores.dtype}")
    if boxes.device != scores.device:
        raise ValueError(f"BatchedNMS:{where} boxes on {boxes.device} but scores on {scores.device}")
