"""The metric names, defined once: what each ``eval.metric`` computes and which keys are headlines.

Everything that names a metric reads it from here: the config schema (``eval.metric``,
``eval.save_best`` and their defaults per task), :func:`~detkit.evaluation.builder.build_evaluators`,
the COCO evaluator (the order of ``COCOeval.stats``), the metrics table, the epoch log line,
metrics.jsonl, the plots, the README results tables and the demo summary. No torch import, so the
config loader can use it.

Two tasks share the trainer (see :mod:`detkit.tasks`): ``detection`` (VOC / COCO AP) and
``classification`` (top-k accuracy). ``eval.metric`` names metrics of the run's task; ``"all"`` means
all of that task's metrics.
"""

from __future__ import annotations

from detkit.errors import ConfigError

__all__ = ["METRIC_KEYS", "METRICS", "TASK_METRICS", "TASKS", "ALL", "VOC_METRICS", "COCO_STAT_KEYS",
           "TOPK", "SUMMARY_KEYS", "HEADLINE_KEYS", "CLASSIFICATION_HEADLINE_KEYS", "EPOCH_KEYS",
           "EVAL_DEFAULTS", "check_task", "expand_metrics", "metric_keys"]

# the metrics one VOCEvaluator computes from one matching pass (11-point VOC2007, area VOC2010+)
VOC_METRICS = ("voc07", "voc")

# the 12 numbers of COCOeval.summarize() for boxes, in its order
COCO_STAT_KEYS = ("coco_ap", "coco_ap50", "coco_ap75", "coco_ap_s", "coco_ap_m", "coco_ap_l",
                  "coco_ar1", "coco_ar10", "coco_ar100", "coco_ar_s", "coco_ar_m", "coco_ar_l")

# the k of the top-k accuracies a classification evaluation reports
TOPK = (1, 5)

# eval.metric name -> the scalar metrics it computes (what eval.save_best may name), in display order
METRIC_KEYS = {
    "voc07": ("voc07_ap50",),
    "voc": ("voc_ap50",),
    "coco": COCO_STAT_KEYS,
    # top-1 / top-5 accuracy and the mean of the per-class accuracies (balanced accuracy)
    "accuracy": (*(f"top{k}" for k in TOPK), "mean_class_accuracy"),
}
# the eval.metric names of each task, in display order ("all" means these)
TASK_METRICS = {
    "detection": ("voc07", "voc", "coco"),
    "classification": ("accuracy",),
}
TASKS = tuple(TASK_METRICS)
METRICS = TASK_METRICS["detection"]  # voc07, voc, coco
ALL = "all"  # every metric of the run's task

# eval.metric / eval.save_best when the config leaves them out, per task
EVAL_DEFAULTS = {
    "detection": {"metric": list(METRICS), "save_best": "voc07_ap50"},
    "classification": {"metric": ["accuracy"], "save_best": "top1"},
}

# every scalar metric, in display order (the summary of the metrics table)
SUMMARY_KEYS = tuple(key for name in METRIC_KEYS for key in METRIC_KEYS[name])
# the few numbers a detection run reports everywhere: epoch log line, metrics.jsonl, map.png, README table
HEADLINE_KEYS = ("voc07_ap50", "voc_ap50", "coco_ap", "coco_ap50", "coco_ap75")
# the same for a classification run (accuracy.png, the README classification table)
CLASSIFICATION_HEADLINE_KEYS = tuple(f"top{k}" for k in TOPK)
# the evaluation numbers an epoch record carries (those the run computed) and the log line shows
EPOCH_KEYS = HEADLINE_KEYS + CLASSIFICATION_HEADLINE_KEYS


def check_task(task: str) -> None:
    """A task name detkit knows (``detection``, ``classification``), else ValueError."""
    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}; detkit knows: {', '.join(TASKS)}")


def expand_metrics(metric, task: str = "detection") -> list[str]:
    """``'voc07' | 'voc' | 'coco' | 'all'`` (detection) or ``'accuracy' | 'all'`` (classification), or a
    list of these -> the metric names, without repeats."""
    check_task(task)
    own = TASK_METRICS[task]
    names = [metric] if isinstance(metric, str) else list(metric or [])
    choices = ", ".join((*own, ALL))
    if not names:
        raise ConfigError(f"eval.metric: no metric given; choose from {choices}")
    wanted: list[str] = []
    for name in names:
        if name != ALL and name not in own:
            other = next((t for t, m in TASK_METRICS.items() if name in m), None)
            why = f" ({name!r} is a {other} metric)" if other else ""
            raise ConfigError(f"eval.metric: unknown metric {name!r} for {task}{why}; choose from {choices}")
        wanted += [n for n in (own if name == ALL else (name,)) if n not in wanted]
    return wanted


def metric_keys(metric, task: str = "detection") -> list[str]:
    """The scalar metrics ``metric`` (as in :func:`expand_metrics`) computes."""
    return [key for name in expand_metrics(metric, task) for key in METRIC_KEYS[name]]
