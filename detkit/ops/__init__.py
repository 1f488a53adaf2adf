"""Box and NMS operators.

* :mod:`detkit.ops.nms`: :func:`batched_nms` (torchvision's semantics and kept set, fast with many
  groups; pure torch when traced or exported); :mod:`detkit.ops.nms_dense` holds its large-input work.
* :mod:`detkit.ops.postprocess`: the postprocessor input contract (:func:`normalise_batch`,
  :class:`PostprocessorInput`) and the :class:`BatchedNMS` postprocessor (entry point
  ``batched_nms`` of ``detkit.postprocessors``).
* :mod:`detkit.ops.boxes`: :func:`box_iou`, :func:`clip_boxes`, :class:`BoxCoder`.

The names are imported on first use, so ``import detkit.ops`` stays cheap (no torchvision).
"""

from __future__ import annotations

import importlib

__all__ = ["batched_nms", "BatchedNMS", "normalise_batch", "PostprocessorInput", "box_iou", "clip_boxes",
           "BoxCoder"]

_HOME = {
    "batched_nms": "detkit.ops.nms",
    "BatchedNMS": "detkit.ops.postprocess",
    "normalise_batch": "detkit.ops.postprocess",
    "PostprocessorInput": "detkit.ops.postprocess",
    "box_iou": "detkit.ops.boxes",
    "clip_boxes": "detkit.ops.boxes",
    "BoxCoder": "detkit.ops.boxes",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'detkit.ops' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
