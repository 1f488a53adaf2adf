"""The metric names, defined once: what each ``eval.metric`` computes and which keys are headlines.

Everything that names a metric reads it from here: the config schema (``eval.metric``,
``eval.save_best``), :func:`~detkit.evaluation.builder.build_evaluators`, the COCO evaluator (the order
of ``COCOeval.stats``), the metrics table, the epoch log line, metrics.jsonl, the plots, the README
results table and the demo summary. No torch import, so the config loader can use it.
"""

from __future__ import annotations

from detkit.errors import ConfigError

__all__ = ["METRIC_KEYS", "METRICS", "ALL", "VOC_METRICS", "COCO_STAT_KEYS", "SUMMARY_KEYS",
           "HEADLINE_KEYS", "FOLD_KEYS", "expand_metrics", "metric_keys"]

# the metrics one VOCEvaluator computes from one matching pass (11-point VOC2007, area VOC2010+)
VOC_METRICS = ("voc07", "voc")

# the 12 numbers of COCOeval.summarize() for boxes, in its order
COCO_STAT_KEYS = ("coco_ap", "coco_ap50", "coco_ap75", "coco_ap_s", "coco_ap_m", "coco_ap_l",
                  "coco_ar1", "coco_ar10", "coco_ar100", "coco_ar_s", "coco_ar_m", "coco_ar_l")

# eval.metric name -> the scalar metrics it computes (what eval.save_best may name), in display order
METRIC_KEYS = {
    "voc07": ("voc07_ap50",),
    "voc": ("voc_ap50",),
    "coco": COCO_STAT_KEYS,
}
METRICS = tuple(METRIC_KEYS)  # voc07, voc, coco
ALL = "all"  # every metric of METRICS

# every scalar metric, in display order (the summary of the metrics table)
SUMMARY_KEYS = tuple(key for name in METRICS for key in METRIC_KEYS[name])
# the few numbers a run reports everywhere: epoch log line, metrics.jsonl, map.png, README table
HEADLINE_KEYS = ("voc07_ap50", "voc_ap50", "coco_ap", "coco_ap50", "coco_ap75")
# what `detkit kfold` reports as mean ± std over folds (the headlines and COCO's recall at 100)
FOLD_KEYS = HEADLINE_KEYS + ("coco_ar100",)


def expand_metrics(metric) -> list[str]:
    """``'voc07' | 'voc' | 'coco' | 'all'`` or a list of these -> the metric names, without repeats."""
    names = [metric] if isinstance(metric, str) else list(metric or [])
    choices = ", ".join((*METRICS, ALL))
    if not names:
        raise ConfigError(f"eval.metric: no metric given; choose from {choices}")
    wanted: list[str] = []
    for name in names:
        if name != ALL and name not in METRIC_KEYS:
            raise ConfigError(f"eval.metric: unknown metric {name!r}; choose from {choices}")
        wanted += [n for n in (METRICS if name == ALL else (name,)) if n not in wanted]
    return wanted


def metric_keys(metric) -> list[str]:
    """The scalar metrics ``metric`` (as in :func:`expand_metrics`) computes."""
    return [key for name in expand_metrics(metric) for key in METRIC_KEYS[name]]
