"""``detkit eval`` and ``detkit classify eval``: score a checkpoint on a data split, print the table,
write metrics and results.

:func:`evaluate` loads the model file (a checkpoint weights-only, with its stored config unless one
is given, or an ONNX / TorchScript export: :func:`detkit.deploy.backends.load_model`; a checkpoint
holds a detector or what ``task`` evaluates: :mod:`detkit.tasks`), builds the split's data set, runs
:func:`~detkit.evaluation.loop.run_evaluation` (detections and ground truth
in original-image pixels), prints :func:`~detkit.evaluation.table.format_table`, and writes the
metrics JSON and the COCO results JSON (with the data set's real category ids when it has them).
Under torchrun every rank evaluates its shard; rank 0 prints and writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from detkit.checkpoint import CHECKPOINT_FORMAT
from detkit.engine import dist as dist_utils
from detkit.engine.run_logging import run_logging
from detkit.errors import ConfigError
from detkit.evaluation.coco import to_coco_results
from detkit.evaluation.loop import build_eval_loader, coco_options, run_evaluation
from detkit.evaluation.names import metric_keys
from detkit.evaluation.table import format_table
from detkit.jsonio import write_json
from detkit.schema import resolve_eval_config, resolve_train_config
from detkit.tasks import DETECTION, Task, check_dataset_task

__all__ = ["evaluate"]

logger = logging.getLogger("detkit")


def evaluate(cfg: Mapping | None, checkpoint, *, metric="all", split: str = "val", metrics_out=None,
             results_out=None, device=None, batch_size: int | None = None, unsafe_load: bool = False,
             launcher: str = "none", task: Task = DETECTION, confusion_out=None, data=None,
             overrides=()) -> dict | None:
    """Evaluate ``checkpoint`` on ``data.<split>``; prints the table, writes ``metrics_out``
    (metrics JSON), ``results_out`` (COCO results JSON; detection only) and ``confusion_out`` (the
    confusion matrix as a PNG; classification only). Returns the metrics (``None`` on ranks other
    than 0 under torchrun).

    ``checkpoint`` is any model file :func:`detkit.deploy.backends.load_model` runs (a checkpoint,
    an ONNX or TorchScript export). ``cfg`` replaces the config the file stores (``None``: use that
    one, changed by the ``--set`` items in ``overrides``); ``data`` is a config (path or dict) whose
    ``data`` section replaces the model config's (``detkit eval --data``)."""
    from detkit.data.builder import build_dataset, check_same_classes
    from detkit.deploy.backends import load_model
    from detkit.deploy.loading import with_data

    if cfg is not None and (not isinstance(cfg, Mapping) or "model" not in cfg):
        raise ConfigError("config has no 'model' section")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ConfigError(f"--batch-size: expected an integer >= 1, got {batch_size!r}")
    metric_keys(metric, task.name)  # validates the name before anything heavy happens
    if results_out and task is not DETECTION:
        raise ConfigError(f"--out writes detections (COCO results); a {task.name} evaluation has none")
    if confusion_out and task is DETECTION:
        raise ConfigError("a confusion matrix is drawn for classifiers (detkit classify eval), not detectors")
    info = dist_utils.init_distributed(launcher, device)
    try:
        with run_logging(None, info.rank):
            # conf=None: evaluation keeps the config's low score threshold, which mAP needs.
            loaded = load_model(checkpoint, cfg, device=info.device, conf=None, unsafe_load=unsafe_load,
                                overrides=overrides)
            cfg = with_data(loaded.cfg, data)
            tcfg = resolve_train_config(cfg.get("train"))
            ecfg = resolve_eval_config(cfg.get("eval"), tcfg, task.name)
            dataset = build_dataset(cfg, split)
            check_dataset_task(dataset, task, f"data.{split}")
            class_names = loaded.class_names
            check_same_classes(class_names, dataset.classes, f"model {checkpoint}", f"data.{split}")
            model, ckpt = loaded.model, loaded.checkpoint or {}
            loader = build_eval_loader(dataset, batch_size or ecfg["batch_size"], ecfg["num_workers"],
                                       tcfg["bad_sample"])
            evaluator = task.build_evaluators(metric, class_names, dataset)
            if ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("epoch") is not None:
                logger.info("checkpoint %s: trained for %s epoch(s)", checkpoint, ckpt["epoch"])
            logger.info("evaluating on data.%s: %d images", split, len(dataset))
            metrics = run_evaluation(model, loader, evaluator, info.device, ground_truth=task.ground_truth)
            if metrics is None:
                return None
            print(format_table(metrics), flush=True)
            if metrics_out:
                logger.info("metrics written to %s", write_json(metrics_out, metrics))
            if confusion_out:
                from detkit.engine.plots import plot_confusion_matrix

                path = plot_confusion_matrix(metrics["confusion_matrix"], class_names, confusion_out,
                                             title=f"confusion matrix, data.{split}")
                logger.info("confusion matrix drawn in %s", path)
            if results_out:
                results = _collected_results(evaluator, coco_options(dataset).get("cat_ids"))
                logger.info("%d detections written to %s (COCO results format)", len(results),
                            write_json(results_out, results))
            return metrics
    finally:
        dist_utils.destroy_distributed(info)


def _collected_results(evaluator, cat_ids) -> list[dict]:
    """The detections the evaluator collected (every member of a group holds the same images), as
    COCO results with the targets' image ids."""
    records = evaluator.evaluators[0].sorted_records() if hasattr(evaluator, "evaluators") \
        else evaluator.sorted_records()
    detections = [{"boxes": r.det_boxes, "scores": r.det_scores, "labels": r.det_labels} for r in records]
    return to_coco_results(detections, [r.image_id for r in records], cat_ids)
