"""Build a model from the ``model`` section of a config: a detector, or a classifier (``detkit classify``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from detkit import registry
from detkit.errors import ConfigError

__all__ = ["build_model", "build_detector"]


def build_model(model_cfg: dict, class_names: Sequence[str], *, group: str = "detectors", pretrained: bool = True):
    """Build ``model_cfg`` (``dict(type='yolov1', backbone=..., head=..., ...)``) from the registry
    ``group`` (``"detectors"``, or ``"classifiers"`` for ``detkit classify``).

    The number of classes is never written in the model config: it follows from ``class_names``
    (the data config's class list, or the list stored in a checkpoint), so changing the data to a
    3-class set needs no second edit.

    ``pretrained=False`` leaves out the backbone's ``pretrained`` weights: for a model about to
    receive a checkpoint's weights (evaluation, inference), so that neither a download
    (``pretrained="imagenet"``) nor the training machine's weights file is needed.
    """
    if not class_names:
        raise ConfigError("model: no class names known (set data.classes or use a dataset that has them)")
    backbone = model_cfg.get("backbone") if isinstance(model_cfg, Mapping) else None
    if not pretrained and isinstance(backbone, Mapping) and backbone.get("pretrained") is not None:
        model_cfg = {**model_cfg, "backbone": {**backbone, "pretrained": None}}
    return registry.build(
        group, model_cfg, path="model",
        num_classes=len(class_names), class_names=tuple(class_names),
    )


def build_detector(model_cfg: dict, class_names: Sequence[str], *, pretrained: bool = True):
    """Build the detector of ``model_cfg`` (:func:`build_model` in the ``detectors`` group)."""
    return build_model(model_cfg, class_names, group="detectors", pretrained=pretrained)
