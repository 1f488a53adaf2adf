"""Data: image I/O, datasets (VOC, COCO, synthetic shapes), transforms, loaders and data tools.

Importing ``detkit.data`` imports nothing heavy: the names below are looked up in their module on
first use (``from detkit.data import read_image`` imports only ``detkit.data.io``).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "read_image": "detkit.data.io",
    "decode_image": "detkit.data.io",
    "image_size": "detkit.data.io",
    "Annotation": "detkit.data.base",
    "DetectionDataset": "detkit.data.base",
    "build_dataset": "detkit.data.builder",
    "VOCDataset": "detkit.data.voc",
    "VOC_CLASSES": "detkit.data.voc",
    "parse_voc_xml": "detkit.data.voc",
    "COCODataset": "detkit.data.coco",
    "YOLODataset": "detkit.data.yolo",
    "convert": "detkit.data.convert",
    "fetch": "detkit.data.fetch",
    "verify_dataset": "detkit.data.verify",
    "data_home": "detkit.data.paths",
    "check_data": "detkit.data.check",
    "browse": "detkit.data.browse",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'detkit.data' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
