"""Detectors: compose backbone + head + loss + postprocessor. Built through the ``detkit.detectors``
entry points (e.g. ``yolov1``); importing this package imports no detector."""
