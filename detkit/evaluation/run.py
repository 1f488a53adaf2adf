"""``detkit eval`` and ``detkit classify eval``: score a checkpoint on a data split, print the table,
write metrics and results.

:func:`evaluate` loads the model file (a checkpoint weights-only, with its stored config unless one
is given, or an ONNX / TorchScript export: :func:`detkit.deploy.backends.load_model`; a checkpoint
holds a detector or what ``task`` evaluates: :mod:`detkit.tasks`), builds the split's data set, runs
:func:`~detkit.evaluation.loop.run_evaluation` (detections and ground truth
in original-image pixels), prints :func:`~detkit.evaluation.table.format_table`, and writes the
metrics JSON and the COCO results JSON (with the data set's real category ids when it has them).
With ``plots`` (detection) it also writes the evaluation plots, per_class.csv and report.txt
(:func:`detkit.plots.evaluation.write_evaluator_plots`), the box statistics of the evaluated and
the training split (``data_<split>.png``), and prints the report.
Under torchrun every rank evaluates its shard; rank 0 prints and writes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from detkit.checkpoint import CHECKPOINT_FORMAT
from detkit.engine import dist as dist_utils
from detkit.engine.run_logging import run_logging
from detkit.errors import ConfigError, DetkitError
from detkit.evaluation.coco import to_coco_results
from detkit.evaluation.diagnostics import box_fit_diagnostics, format_diagnostics
from detkit.evaluation.loop import build_eval_loader, coco_options, run_evaluation
from detkit.evaluation.names import metric_keys
from detkit.evaluation.table import format_table
from detkit.jsonio import write_json
from detkit.schema import resolve_eval_config, resolve_train_config
from detkit.tasks import DETECTION, Task, check_dataset_task

__all__ = ["evaluate"]

logger = logging.getLogger("detkit")


def evaluate(cfg: Mapping | None, checkpoint, *, metric="all", split: str = "val", metrics_out=None,
             results_out=None, diagnostics_out=None, device=None, batch_size: int | None = None,
             unsafe_load: bool = False, launcher: str = "none", task: Task = DETECTION, confusion_out=None,
             data=None, overrides=(), plots: bool | str | os.PathLike | None = None,
             score_thr: float | None = None, iou_thr: float | None = None) -> dict | None:
    """Evaluate ``checkpoint`` on ``data.<split>``; prints the table (and, for a detector, the box-fit
    diagnostics: :mod:`detkit.evaluation.diagnostics`), writes ``metrics_out`` (metrics JSON),
    ``results_out`` (COCO results JSON; detection only), ``diagnostics_out`` (diagnostics JSON;
    detection only), ``plots`` (a folder of evaluation plots; detection only) and ``confusion_out``
    (the confusion matrix as a PNG; classification only). Returns the metrics (``None`` on ranks
    other than 0 under torchrun).

    ``checkpoint`` is any model file :func:`detkit.deploy.backends.load_model` runs (a checkpoint,
    an ONNX or TorchScript export). ``cfg`` replaces the config the file stores (``None``: use that
    one, changed by the ``--set`` items in ``overrides``); ``data`` is a config (path or dict) whose
    ``data`` section replaces the model config's (``detkit eval --data``).

    ``plots`` (detection): a folder for the evaluation plots, or True for ``eval_<split>/`` beside
    the model file; ``score_thr`` / ``iou_thr`` (default ``eval.plot_score_thr`` /
    ``eval.plot_iou_thr`` of the config) are the thresholds of the confusion matrix, the per-class
    counts and the mosaics."""
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
    if diagnostics_out and task is not DETECTION:
        raise ConfigError(f"--diagnostics-out writes box-fit diagnostics; a {task.name} evaluation has no boxes")
    if confusion_out and task is DETECTION:
        raise ConfigError("a confusion matrix is drawn for classifiers (detkit classify eval), not detectors")
    if plots:
        from detkit.schema import check_value

        if task is not DETECTION:
            raise ConfigError(f"--plots draws detection diagnostics; for a {task.name} evaluation use --confusion-out")
        # thresholds given on the command line are checked before anything heavy happens; the
        # config's defaults once the model file's config is known
        for key, value in (("plot_score_thr", score_thr), ("plot_iou_thr", iou_thr)):
            if value is not None:
                check_value("eval", key, value)
        plots = Path(checkpoint).parent / f"eval_{split}" if plots is True else Path(plots)
    info = dist_utils.init_distributed(launcher, device)
    try:
        with run_logging(None, info.rank):
            # conf=None: evaluation keeps the config's low score threshold, which mAP needs.
            loaded = load_model(checkpoint, cfg, device=info.device, conf=None, unsafe_load=unsafe_load,
                                overrides=overrides)
            cfg = with_data(loaded.cfg, data)
            tcfg = resolve_train_config(cfg.get("train"))
            ecfg = resolve_eval_config(cfg.get("eval"), tcfg, task.name)
            plot_options = {"score_threshold": ecfg["plot_score_thr"] if score_thr is None else score_thr,
                            "iou_threshold": ecfg["plot_iou_thr"] if iou_thr is None else iou_thr}
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
            if task is DETECTION:
                records = evaluator.sorted_records(log=False)
                diagnostics = box_fit_diagnostics(records, class_names, _image_sizes(dataset))
                print(format_diagnostics(diagnostics), flush=True)
                if diagnostics_out:
                    logger.info("box-fit diagnostics written to %s", write_json(diagnostics_out, diagnostics))
            if metrics_out:
                logger.info("metrics written to %s", write_json(metrics_out, metrics))
            if confusion_out:
                from detkit.plots.training import plot_confusion_matrix

                path = plot_confusion_matrix(metrics["confusion_matrix"], class_names, confusion_out,
                                             title=f"confusion matrix, data.{split}")
                logger.info("confusion matrix drawn in %s", path)
            if results_out:
                results = _collected_results(records, coco_options(dataset).get("cat_ids"))
                logger.info("%d detections written to %s (COCO results format)", len(results),
                            write_json(results_out, results))
            if plots:
                from detkit.plots.evaluation import write_evaluator_plots

                # (box-fit diagnostics could join the report here through extra_sections=)
                written = write_evaluator_plots(evaluator, plots, dataset=dataset, metrics=metrics, **plot_options)
                _write_data_statistics(cfg, split, dataset, plots)
                print("\n" + written["report_text"], end="", flush=True)
                logger.info("evaluation plots written to %s", plots)
            return metrics
    finally:
        dist_utils.destroy_distributed(info)


def _write_data_statistics(cfg: Mapping, split: str, dataset, out_dir: Path) -> None:
    """``data_<split>.png`` of the evaluated split and ``data_train.png`` of the training split,
    side by side with the errors (a class the model misses may be rare in training, or its boxes
    smaller than in training). The training split is optional here: a config without one, or whose
    files are not on this machine, is one warning, never a failed evaluation."""
    from detkit.data.builder import build_dataset
    from detkit.plots.data import plot_dataset_statistics

    plot_dataset_statistics(dataset, out_dir, split)
    if split == "train":
        return
    try:
        # verify=False: the statistics read annotations only; decoding every training image to
        # verify it would cost more than the evaluation
        plot_dataset_statistics(build_dataset(cfg, "train", verify=False), out_dir, "train")
    except (DetkitError, OSError) as exc:
        logger.warning("no training-split statistics in %s: %s", out_dir, exc)


def _image_sizes(dataset) -> dict:
    """``image_id -> (height, width)`` of the data set's images, from their headers (no decoding),
    else from the annotation; images whose size is unknown are left out."""
    from detkit.data.io import image_size
    from detkit.errors import DataError

    sizes = {}
    for index in range(len(dataset)):
        try:
            ann = dataset.load_annotation(index)
        except (DataError, AttributeError, NotImplementedError):  # unusable sample, or not a detkit dataset
            continue
        try:
            sizes[ann.image_id] = tuple(image_size(dataset.image_path(index)))
        except DataError:
            if ann.height and ann.width:
                sizes[ann.image_id] = (ann.height, ann.width)
    return sizes


def _collected_results(records, cat_ids) -> list[dict]:
    """The collected detections as COCO results with the targets' image ids."""
    detections = [{"boxes": r.det_boxes, "scores": r.det_scores, "labels": r.det_labels} for r in records]
    return to_coco_results(detections, [r.image_id for r in records], cat_ids)
