"""JSON files written by detkit runs: values made plain JSON (NaN/inf -> null, tensors and numpy
scalars -> numbers) and files replaced atomically, so a reader never sees half a file."""

from __future__ import annotations

import json
import math
from pathlib import Path

from detkit.fileio import write_text_atomic

__all__ = ["to_jsonable", "write_json"]


def to_jsonable(value):
    """NaN/inf become null (JSON has no NaN); tensors/numpy scalars become numbers."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "detach"):  # a torch tensor, without importing torch
        return to_jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, obj, indent: int | None = 2) -> Path:
    """Write ``obj`` (through :func:`to_jsonable`) to ``path`` via a temporary file and a rename;
    parent folders are created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(to_jsonable(obj), indent=indent) + "\n")
