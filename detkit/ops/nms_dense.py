"""The work behind :func:`detkit.ops.nms.batched_nms` on large inputs: boxes sorted into one run per
group, and an exact greedy NMS of many small groups at once (the dense kernel).

CPU tensors take numpy for the sorts, gathers, buffers and bit packing, and every torch op touches
fewer elements than ATen's parallel grain (32768), so everything runs on the calling thread. That is
deliberate: the work is thousands of small ops, and on a busy machine each OpenMP wake-up (and
torch's OpenMP radix sort of integer keys) can cost milliseconds. Measured against the same kernel
running torch's ops instead (``tools/bench.py nms`` inputs, 2 shared cores, issue 14), numpy is
faster for the gathers (2.8-5.8x), bit packing (3.3-14x), buffer allocation (1.8-4x), unpacking
(1.0-4x), the threshold comparison (7x per op) and the packed 64-bit sort keys (1.1-1.4x); chunks
of the grain size are 8-22x faster than 1M-element ones. The torch code next to each numpy step is
what runs on GPUs; tests run it on CPU tensors by setting :data:`NUMPY_ON_CPU` to False.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch import Tensor

# Largest tensor a CPU op may touch and still run on the calling thread (below ATen's GRAIN_SIZE).
_CPU_SERIAL_ELEMENTS = 32_000

# CPU tensors take the numpy steps (see the module docstring); tests set this to False to run the
# torch steps that GPUs run.
NUMPY_ON_CPU = True


def numpy_path(device: torch.device) -> bool:
    return device.type == "cpu" and NUMPY_ON_CPU and sys.byteorder == "little"


# ----------------------------------------------------------------------------------------------
# sorting boxes into group runs
# ----------------------------------------------------------------------------------------------


def group_runs_numpy(scores: np.ndarray, idxs: np.ndarray):
    """``by_score`` (all boxes by descending score, ties by index), ``order`` (the same, grouped:
    each group a contiguous run), and the runs' ``starts`` and ``sizes``; numpy, on one thread."""
    n = scores.shape[0]
    key = descending_key_numpy(scores)
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


def group_runs_torch(scores: Tensor, idxs: Tensor):
    """:func:`group_runs_numpy` in torch (any device); ``starts``/``sizes`` stay on the device."""
    n = scores.shape[0]
    by_score = torch.sort(scores, descending=True, stable=True).indices
    ids = idxs[by_score].long()
    lo, hi = (int(v) for v in torch.stack(torch.aminmax(ids)).tolist())
    # Narrow keys: a GPU radix sort makes one pass per key byte (not measured here: no GPU).
    for dtype in (torch.int16, torch.int32, torch.int64):
        if hi - lo <= torch.iinfo(dtype).max:
            break
    sorted_ids, within = torch.sort((ids - lo).to(dtype), stable=True)
    order = by_score[within]
    is_start = torch.ones(n, dtype=torch.bool, device=scores.device)
    is_start[1:] = sorted_ids[1:] != sorted_ids[:-1]
    starts = is_start.nonzero().squeeze(1)
    sizes = torch.diff(starts, append=starts.new_tensor([n]))
    return by_score, order, starts, sizes


def descending_key_numpy(scores: np.ndarray) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------
# dense kernel: many small groups at once
# ----------------------------------------------------------------------------------------------


def nms_dense_groups(sorted_boxes: Tensor, starts, sizes: np.ndarray, groups: np.ndarray, iou_threshold: float):
    """Yield the kept positions (in ``sorted_boxes``) of the given groups, solved together by size class.

    ``starts`` (numpy for CPU boxes, else a tensor on their device) and ``sizes`` (numpy) describe
    all runs; ``groups`` selects the runs to solve.
    """
    device = sorted_boxes.device
    cpu = device.type == "cpu"
    # GPU: a memory bound (32 MB per float32 temporary), not a measured optimum.
    chunk_elements = _CPU_SERIAL_ELEMENTS if cpu else 1 << 23
    # IoU rows per block: 8 (one byte of packed bits) keeps CPU temporaries below the grain; 32 on
    # GPUs for fewer kernel launches per block (not measured here: no GPU).
    rows_per_block = 8 if cpu else 32
    by_size = groups[np.argsort(-sizes[groups], kind="stable")]  # largest first
    group_sizes = sizes[by_size]
    first = 0
    while first < by_size.size:
        # One call takes the largest group left and every group over a quarter of its size: all are
        # padded to the largest, so a far smaller group would waste most of its buffer rows.
        lower = int(group_sizes[first]) // 4
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
    if numpy_path(device):  # numpy: no OpenMP for a possibly large nonzero/gather
        group, position = np.nonzero(kept.numpy())
        return torch.from_numpy(starts.numpy()[group] + position)
    group, position = kept.nonzero(as_tuple=True)
    return starts[group] + position


def _greater(values: Tensor, threshold: float, out: Tensor) -> None:
    """``out = values > threshold``; numpy on CPU: 9 us against torch's 65 us for a [40, 8, 96]
    block (issue 14), ~5% of a YOLOv1 batch. ``threshold`` must be exactly representable in
    ``values.dtype`` (both libraries cast it)."""
    if numpy_path(values.device):
        np.greater(values.numpy(), threshold, out=out.numpy())
    else:
        torch.gt(values, threshold, out=out)


def _zeros_bool(shape: tuple[int, ...], device: torch.device) -> Tensor:
    if numpy_path(device):  # numpy's calloc: no multi-threaded fill of a large buffer
        return torch.from_numpy(np.zeros(shape, dtype=bool))
    return torch.zeros(shape, dtype=torch.bool, device=device)


def _gather(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]``; on CPU through numpy, as torch's CPU index kernel goes multi-threaded
    from a few thousand elements (see the module docstring)."""
    if numpy_path(table.device):
        return torch.from_numpy(np.take(table.numpy(), index.numpy(), axis=0))
    return table[index]


def _run_slots(starts: Tensor, sizes: np.ndarray, width: int) -> Tensor:
    """``[G, width]`` positions ``starts[g] + j`` of the runs, 0 past a run's end (padding)."""
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
    if numpy_path(flags.device):
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
    if numpy_path(words.device):
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
