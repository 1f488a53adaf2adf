"""The two tasks detkit trains with one trainer: what differs between a detection and a
classification run, stated once.

``detkit train`` / ``detkit eval`` run :data:`DETECTION`, ``detkit classify train`` / ``detkit classify
eval`` run :data:`CLASSIFICATION`; the runner (:func:`detkit.engine.runner.train`) and
:func:`detkit.evaluation.run.evaluate` take the task and otherwise do the same thing: same trainer, hooks,
checkpoints, resume, logging, plots and evaluation loop. A task says

* ``model_group``: the registry group of ``model.type`` (``detectors`` / ``classifiers``);
* ``build_evaluators(metric, class_names, dataset)``: the evaluator of ``eval.metric``;
* ``ground_truth(targets)``: what the evaluator compares the model's outputs with (detection: boxes
  mapped back to original-image pixels, as the detector's outputs are; classification: the labels);
* ``name``: the key of its metric names and ``eval`` defaults in :mod:`detkit.evaluation.names`, and
  what a data set's ``task`` attribute must say (detection data sets have none).

Heavy modules are imported when a task's function is first called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from detkit.errors import ConfigError

__all__ = ["Task", "DETECTION", "CLASSIFICATION", "TASKS", "check_dataset_task", "task_of_config"]


def _detection_evaluators(metric, class_names: Sequence[str], dataset):
    from detkit.evaluation.builder import build_evaluators
    from detkit.evaluation.loop import coco_options

    return build_evaluators(metric, class_names, coco_options=coco_options(dataset))


def _detection_ground_truth(targets):
    from detkit.evaluation.loop import original_targets

    return original_targets(targets)


def _classification_evaluators(metric, class_names: Sequence[str], dataset):
    from detkit.evaluation.classification import ClassificationEvaluator
    from detkit.evaluation.names import expand_metrics

    expand_metrics(metric, "classification")  # "accuracy" is the only one; checks the name
    return ClassificationEvaluator(class_names)


def _classification_ground_truth(targets):
    from detkit.evaluation.classification import ground_truth

    return ground_truth(targets)


@dataclass(frozen=True)
class Task:
    """What a run of one task needs that another task's does not (see the module docstring)."""

    name: str
    model_group: str
    command: str  # the command that trains it, for messages
    build_evaluators: Callable
    ground_truth: Callable

    def build_model(self, model_cfg: Mapping, class_names: Sequence[str], **options):
        """The model of ``model_cfg`` for ``class_names`` (see :func:`detkit.models.builder.build_model`)."""
        from detkit.models.builder import build_model

        return build_model(model_cfg, class_names, group=self.model_group, **options)


DETECTION = Task("detection", "detectors", "detkit train", _detection_evaluators, _detection_ground_truth)
CLASSIFICATION = Task("classification", "classifiers", "detkit classify train", _classification_evaluators,
                      _classification_ground_truth)
TASKS = {task.name: task for task in (DETECTION, CLASSIFICATION)}


def check_dataset_task(dataset, task: Task, where: str, what: str | None = None) -> None:
    """A detection data set in a classification run (or the reverse) is a ConfigError saying which
    command takes it. ``what`` names the consumer (default: "this <task> run")."""
    found = getattr(dataset, "task", DETECTION.name)
    if found != task.name:
        other = TASKS.get(found)
        raise ConfigError(f"{where}: '{type(dataset).__name__}' is a {found} data set, but "
                          f"{what or f'this is a {task.name} run'}"
                          + (f"; train on it with `{other.command}`" if other else ""))


def task_of_config(cfg: Mapping) -> Task:
    """The task a config describes, from its ``model.type``: a registered classifier is
    classification, anything else detection (listing names imports nothing)."""
    from detkit import registry

    model = cfg.get("model") if isinstance(cfg, Mapping) else None
    kind = model.get("type") if isinstance(model, Mapping) else None
    return CLASSIFICATION if kind in registry.available(CLASSIFICATION.model_group) else DETECTION
