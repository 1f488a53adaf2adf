"""The detector postprocessor contract's input, and the built-in postprocessor :class:`BatchedNMS`.

Every postprocessor (``detkit.postprocessors`` entry points) is called as ``postprocessor(boxes,
scores)`` on a whole batch, in one of two layouts:

* batched tensors: ``boxes`` ``[N, M, 4]`` shared by all classes (YOLO-style) or ``[N, M, C, 4]``
  per class (R-CNN style), xyxy; ``scores`` ``[N, M, C]`` per-class probabilities (no background);
* lists with one tensor per image (``[M_i, 4]`` / ``[M_i, C, 4]`` and ``[M_i, C]``) when M differs
  between images.

:func:`normalise_batch` checks either layout and returns a :class:`PostprocessorInput` (all rows of
the batch, and their split into images), so a postprocessor, built in or a plugin, validates its
input with the same messages and handles one layout only. It returns
``list[dict(boxes=[K, 4], scores=[K], labels=int64 [K])]``, one dict per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from detkit.errors import ConfigError
from detkit.ops.boxes import box_iou
from detkit.ops.nms import batched_nms, exporting
from detkit.ops.nms_dense import descending_key_numpy, numpy_path

__all__ = ["PostprocessorInput", "normalise_batch", "BatchedNMS", "vote_boxes"]


@dataclass(frozen=True)
class PostprocessorInput:
    """A postprocessor's input, checked: the rows of all images, image after image.

    ``boxes`` ``[R, 4]`` (shared by the classes) or ``[R, C, 4]`` (one box per class), ``scores``
    ``[R, C]``, ``sizes[i]`` the rows of image ``i`` (``sum(sizes) == R``). Built by
    :func:`normalise_batch`; ``boxes``/``scores`` are views of batched tensors (no copy).
    """

    boxes: Tensor
    scores: Tensor
    sizes: tuple[int, ...]

    @property
    def num_images(self) -> int:
        return len(self.sizes)

    @property
    def num_classes(self) -> int:
        return self.scores.shape[1]

    @property
    def class_specific(self) -> bool:
        """Whether there is one box per class (``[R, C, 4]``)."""
        return self.boxes.ndim == 3

    def images(self) -> list[tuple[Tensor, Tensor]]:
        """Per image ``(boxes [M_i, 4] or [M_i, C, 4], scores [M_i, C])``, views of the rows.
        Traceable for batched tensors: ``torch.jit.trace`` records the sizes, not their values."""
        return list(zip(self.boxes.split(list(self.sizes)), self.scores.split(list(self.sizes))))

    def image_of_row(self) -> Tensor:
        """int64 ``[R]``: the image of every row."""
        images = torch.arange(self.num_images, device=self.scores.device)
        if len(set(self.sizes)) == 1:  # batched tensors: a scalar repeat is far cheaper on CPU
            return images.repeat_interleave(self.sizes[0])
        return images.repeat_interleave(torch.tensor(self.sizes, device=self.scores.device))


def normalise_batch(boxes, scores, *, who: str = "postprocessor") -> PostprocessorInput:
    """Check a postprocessor's ``(boxes, scores)`` in either layout (see the module docstring) and
    flatten it to rows. ``who`` starts the error messages (a ``ValueError`` naming the image and the
    shapes). An empty list is a batch of no images."""
    if isinstance(boxes, Tensor) and isinstance(scores, Tensor):
        if scores.ndim != 3:
            raise ValueError(f"{who}: scores must be [N, M, C], got shape {tuple(scores.shape)}")
        n, m, c = scores.shape
        if boxes.ndim in (3, 4) and boxes.shape[0] != n:
            raise ValueError(f"{who}: {boxes.shape[0]} images of boxes but {n} of scores")
        if boxes.shape not in ((n, m, 4), (n, m, c, 4)):
            raise ValueError(
                f"{who}: for scores of shape {tuple(scores.shape)} boxes must be [N, M, 4] = "
                f"[{n}, {m}, 4] or [N, M, C, 4] = [{n}, {m}, {c}, 4], got {tuple(boxes.shape)}"
            )
        _check_float_same_device(boxes, scores, who)
        return PostprocessorInput(boxes.reshape(n * m, *boxes.shape[2:]), scores.reshape(n * m, c), (m,) * n)

    if isinstance(boxes, Tensor) or isinstance(scores, Tensor) or not (
        isinstance(boxes, Sequence) and isinstance(scores, Sequence)
    ):
        raise ValueError(
            f"{who}: pass boxes and scores either both as batched tensors ([N, M, 4] or "
            "[N, M, C, 4] with [N, M, C]) or both as lists with one tensor per image, got "
            f"{type(boxes).__name__} and {type(scores).__name__}"
        )
    if len(boxes) != len(scores):
        raise ValueError(f"{who}: {len(boxes)} box tensors but {len(scores)} score tensors")
    if len(boxes) == 0:
        return PostprocessorInput(torch.zeros((0, 4)), torch.zeros((0, 0)), ())
    num_classes, per_class, device = None, None, None
    for i, (b, s) in enumerate(zip(boxes, scores)):
        if not isinstance(b, Tensor) or not isinstance(s, Tensor):
            raise ValueError(f"{who}: image {i}: boxes and scores must be tensors, got "
                             f"{type(b).__name__} and {type(s).__name__}")
        if s.ndim != 2:
            raise ValueError(f"{who}: image {i}: scores must be [M, C], got shape {tuple(s.shape)}")
        m, c = s.shape
        if num_classes is None:
            num_classes, device = c, s.device
        elif c != num_classes:
            raise ValueError(f"{who}: image {i} has {c} classes in scores, image 0 has {num_classes}")
        if b.shape not in ((m, 4), (m, c, 4)):
            raise ValueError(
                f"{who}: image {i}: for scores of shape {tuple(s.shape)} boxes must be [M, 4] = "
                f"[{m}, 4] or [M, C, 4] = [{m}, {c}, 4], got {tuple(b.shape)}"
            )
        if m and per_class is None:
            per_class = b.ndim == 3
        elif m and per_class != (b.ndim == 3):
            raise ValueError(f"{who}: image {i}: boxes mix shared [M, 4] and class-specific "
                             "[M, C, 4] layouts within one batch")
        if s.device != device:
            raise ValueError(f"{who}: image {i} is on {s.device}, image 0 on {device}")
        _check_float_same_device(b, s, f"{who}: image {i}")
    box_shape = (num_classes, 4) if per_class else (4,)
    flat_boxes = torch.cat([b.reshape(b.shape[0], *box_shape) for b in boxes])
    return PostprocessorInput(flat_boxes, torch.cat(list(scores)), tuple(s.shape[0] for s in scores))


def _check_float_same_device(boxes: Tensor, scores: Tensor, where: str) -> None:
    if not boxes.is_floating_point() or not scores.is_floating_point():
        raise ValueError(f"{where}: boxes and scores must be floating point, got "
                         f"{boxes.dtype} and {scores.dtype}")
    if boxes.device != scores.device:
        raise ValueError(f"{where}: boxes on {boxes.device} but scores on {scores.device}")


# ----------------------------------------------------------------------------------------------
# BatchedNMS
# ----------------------------------------------------------------------------------------------


class BatchedNMS:
    """Score threshold, per-class NMS and top-k on a whole batch: the detector postprocessor.

    ``__call__(boxes, scores)`` takes either layout of the module docstring.

    Steps: keep (box, class) candidates with ``score > score_threshold``; optionally the
    ``pre_nms_topk`` best per image; one :func:`~detkit.ops.nms.batched_nms` for the whole batch
    (groups ``image * C + class``, or ``image`` when ``class_agnostic``); at most ``max_per_image``
    per image; with ``merge_iou``, box voting (:func:`vote_boxes`) moves each kept box. Returns
    ``list[dict(boxes=[K, 4], scores=[K], labels=int64 [K])]``, one per image, on
    the input device, each by descending score (equal scores: lower box index, then lower class
    first).

    Traced or exported (see :func:`~detkit.ops.nms.exporting`) it runs the same steps image by image
    in torch only, so the graph serves inputs of any size; the number of images is fixed by the
    trace, as the output is one dict per image.
    """

    def __init__(
        self,
        iou_threshold: float = 0.5,
        score_threshold: float = 0.05,
        max_per_image: int | None = 100,
        pre_nms_topk: int | None = None,
        class_agnostic: bool = False,
        merge_iou: float | None = None,
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
        if merge_iou is not None and not 0.0 <= float(merge_iou) <= 1.0:
            raise ConfigError(f"BatchedNMS: merge_iou must be in [0, 1] or None, got {merge_iou}")
        self.merge_iou = None if merge_iou is None else float(merge_iou)

    def __repr__(self) -> str:
        return (
            f"BatchedNMS(iou_threshold={self.iou_threshold}, score_threshold={self.score_threshold}, "
            f"max_per_image={self.max_per_image}, pre_nms_topk={self.pre_nms_topk}, "
            f"class_agnostic={self.class_agnostic}, merge_iou={self.merge_iou})"
        )

    def __call__(self, boxes, scores) -> list[dict[str, Tensor]]:
        batch = normalise_batch(boxes, scores, who="BatchedNMS")
        if batch.num_images == 0:
            return []
        if exporting():
            return [self._one_image_traceable(b, s) for b, s in batch.images()]
        num_images, num_classes = batch.num_images, batch.num_classes
        numpy_ok = numpy_path(batch.scores.device) and {batch.boxes.dtype, batch.scores.dtype} <= _NUMPY_FLOATS
        ops = _NumpyOps if numpy_ok else _TorchOps  # the same steps on either (see _NumpyOps)
        boxes, scores, image_of_row = ops.array(batch.boxes), ops.array(batch.scores), ops.array(batch.image_of_row())

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
        kept_boxes = cand_boxes[keep]
        if self.merge_iou is not None:
            kept_boxes = self._vote_per_image(ops, cand_boxes, cand_scores, groups, images, keep, counts)
        return [
            {"boxes": ops.tensor(b), "scores": ops.tensor(s), "labels": ops.tensor(lab)}
            for b, s, lab in zip(ops.split(kept_boxes, counts), ops.split(cand_scores[keep], counts),
                                 ops.split(labels[keep], counts))
        ]

    def _vote_per_image(self, ops, cand_boxes, cand_scores, groups, images, keep, counts):
        """:func:`vote_boxes` image by image: candidates and ``keep`` are both grouped by image, and
        one [kept, candidates] IoU matrix per image stays small where one for the batch would not
        (a YOLOv1 batch of 16 VOC images: 1,600 kept x 31,000 candidates)."""
        cand_counts = ops.bincount(images, len(counts)).tolist()
        voted, first_cand, first_keep = [], 0, 0
        for n_cand, n_keep in zip(cand_counts, counts):
            if n_keep:
                window = slice(first_cand, first_cand + n_cand)
                image_keep = keep[first_keep:first_keep + n_keep] - first_cand
                voted.append(ops.array(vote_boxes(ops.tensor(cand_boxes[window]), ops.tensor(cand_scores[window]),
                                                  ops.tensor(groups[window]), ops.tensor(image_keep),
                                                  self.merge_iou)))
            first_cand, first_keep = first_cand + n_cand, first_keep + n_keep
        return ops.cat(voted) if voted else cand_boxes[keep]

    def _one_image_traceable(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """The steps of ``__call__`` for one image in torch ops whose sizes a trace records: no
        ``.tolist()``, no numpy, no bincount."""
        rows, labels = (scores > self.score_threshold).nonzero(as_tuple=True)
        cand_scores = scores[rows, labels]
        cand_boxes = boxes[rows, labels] if boxes.ndim == 3 else boxes[rows]
        if self.pre_nms_topk is not None:
            by_score = torch.sort(cand_scores, descending=True, stable=True).indices
            chosen = by_score[: self.pre_nms_topk].sort().values
            cand_scores, cand_boxes, labels = cand_scores[chosen], cand_boxes[chosen], labels[chosen]
        groups = torch.zeros_like(labels) if self.class_agnostic else labels
        dtype = torch.promote_types(cand_boxes.dtype, cand_scores.dtype)
        keep = batched_nms(cand_boxes.to(dtype), cand_scores.to(dtype), groups, self.iou_threshold)
        keep = keep.sort().values  # the documented order: by score, equal scores by (box, class)
        keep = keep[torch.sort(cand_scores[keep], descending=True, stable=True).indices]
        if self.max_per_image is not None:
            keep = keep[: self.max_per_image]
        kept_boxes = cand_boxes[keep]
        if self.merge_iou is not None:
            kept_boxes = vote_boxes(cand_boxes, cand_scores, groups, keep, self.merge_iou)
        return {"boxes": kept_boxes, "scores": cand_scores[keep], "labels": labels[keep]}


def vote_boxes(boxes: Tensor, scores: Tensor, groups: Tensor, keep: Tensor, merge_iou: float) -> Tensor:
    """Box voting (Gidaris & Komodakis 2015; ultralytics' ``merge=True`` NMS): each kept box becomes
    the score-weighted mean of the candidates of its group (image and class) that overlap it by IoU
    ``> merge_iou``, itself included. NMS keeps the best-scored box of a cluster, whose corners are
    noisy; its neighbours found the same object and average that noise out. ``[K, 4]``, in ``keep``'s
    order; a kept box whose weights sum to 0 (scores of 0, an empty box) stays as it was."""
    kept = boxes[keep]  # no early return for K = 0: traced graphs must not branch on a size
    near = (box_iou(kept.float(), boxes.float()) > merge_iou) & (groups[keep][:, None] == groups[None, :])
    weights = near.to(scores.dtype) * scores[None, :]
    total = weights.sum(dim=1, keepdim=True)
    merged = (weights @ boxes.to(weights.dtype)) / total.clamp(min=torch.finfo(weights.dtype).tiny)
    return torch.where(total > 0, merged, kept.to(merged.dtype)).to(boxes.dtype)


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
    """The array steps of :class:`BatchedNMS` in numpy, for CPU tensors: on the calling thread (see
    :mod:`detkit.ops.nms_dense`); 4-6x faster than the torch steps on the benchmark's batch of 8
    and 64 images (issue 14). Indexing and arithmetic are written the same for both libraries."""

    array = staticmethod(lambda t: t.detach().numpy())
    tensor = staticmethod(torch.from_numpy)
    nonzero = staticmethod(np.nonzero)
    sort = staticmethod(np.sort)
    arange = staticmethod(lambda n, like: np.arange(n))
    bincount = staticmethod(lambda x, n: np.bincount(x, minlength=n))
    argsort_stable = staticmethod(lambda x: np.argsort(x, kind="stable"))
    argsort_descending = staticmethod(lambda x: np.argsort(descending_key_numpy(x), kind="stable"))
    split = staticmethod(lambda x, counts: np.split(x, np.cumsum(counts)[:-1]))
    cat = staticmethod(np.concatenate)


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
    cat = staticmethod(torch.cat)
