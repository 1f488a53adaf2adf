"""Detection metrics: Pascal VOC AP (devkit rules, vectorised) and COCO AP (pycocotools), the
evaluation loop over a data set, and ``detkit eval``.

Modules: ``names`` (the metric names), ``base`` (what evaluators share), ``voc`` / ``coco`` (the
metrics), ``builder`` (``build_evaluators``), ``table`` (``format_table``), ``loop``
(``run_evaluation``: a model over a loader), ``run`` (``evaluate``: ``detkit eval``), ``analysis``
(PR / F1 curves, confusion matrix, per-class table and report; drawn by :mod:`detkit.plots.evaluation`).

    from detkit.evaluation import build_evaluators, format_table
    ev = build_evaluators("all", class_names)       # or VOCEvaluator(...), COCOEvaluator(...)
    for images, targets in loader:
        ev.update(model(images), targets)            # both in input pixels (or pass metas=)
    metrics = ev.compute()                           # voc07_ap50, voc_ap50, coco_ap, ..., per_class
    print(format_table(metrics))

Distributed: gather ``ev.state()`` from every rank and call ``ev.load_states(states)`` on rank 0.
Names are imported on first use, so ``import detkit.evaluation`` stays cheap.
"""

from __future__ import annotations

import importlib

__all__ = [
    "VOCEvaluator",
    "COCOEvaluator",
    "Evaluator",
    "EvaluatorGroup",
    "build_evaluators",
    "format_table",
    "to_coco_results",
    "run_evaluation",
    "evaluate",
]

_WHERE = {
    "VOCEvaluator": "detkit.evaluation.voc",
    "COCOEvaluator": "detkit.evaluation.coco",
    "to_coco_results": "detkit.evaluation.coco",
    "Evaluator": "detkit.evaluation.base",
    "EvaluatorGroup": "detkit.evaluation.base",
    "build_evaluators": "detkit.evaluation.builder",
    "format_table": "detkit.evaluation.table",
    "run_evaluation": "detkit.evaluation.loop",
    "evaluate": "detkit.evaluation.run",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'detkit.evaluation' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_WHERE))
