"""Build the evaluators an ``eval.metric`` asks for.

Kept apart from :mod:`detkit.evaluation.base` so the base class does not import its own subclasses
(voc.py and coco.py import base.py; only this module imports all three).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from detkit.evaluation.base import Evaluator, EvaluatorGroup
from detkit.evaluation.coco import COCOEvaluator
from detkit.evaluation.names import VOC_METRICS, expand_metrics
from detkit.evaluation.voc import VOCEvaluator

__all__ = ["build_evaluators"]


def build_evaluators(metric, class_names: Sequence[str], *, voc_options: Mapping | None = None,
                     coco_options: Mapping | None = None) -> EvaluatorGroup:
    """Evaluators for ``metric``: ``'voc07' | 'voc' | 'coco' | 'all'`` or a list of these.

    VOC07 and VOC-area metrics share one :class:`VOCEvaluator` (one matching pass). ``voc_options``
    / ``coco_options`` are extra keyword arguments of :class:`VOCEvaluator` / :class:`COCOEvaluator`
    (e.g. ``coco_options=dict(cat_ids=[...], backend='faster')``).
    """
    wanted = expand_metrics(metric)
    evaluators: list[Evaluator] = []
    voc_metrics = tuple(n for n in wanted if n in VOC_METRICS)
    if voc_metrics:
        evaluators.append(VOCEvaluator(class_names, metrics=voc_metrics, **dict(voc_options or {})))
    if "coco" in wanted:
        evaluators.append(COCOEvaluator(class_names, **dict(coco_options or {})))
    return EvaluatorGroup(evaluators)
