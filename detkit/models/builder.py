"""Build a detector from the ``model`` section of a config."""

from __future__ import annotations

from collections.abc import Sequence

from detkit import registry
from detkit.errors import ConfigError


def build_detector(model_cfg: dict, class_names: Sequence[str]):
    """Build ``model_cfg`` (``dict(type='yolov1', backbone=..., head=..., ...)``).

    The number of classes is never written in the model config: it follows from ``class_names``
    (the data config's class list, or the list stored in a checkpoint), so changing the data to a
    3-class set needs no second edit.
    """
    if not class_names:
        raise ConfigError("model: no class names known (set data.classes or use a dataset that has them)")
    return registry.build(
        "detectors", model_cfg, path="model",
        num_classes=len(class_names), class_names=tuple(class_names),
    )
