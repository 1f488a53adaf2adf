"""``detkit eval``: score a checkpoint on a data split, print the table, write metrics and results.

:func:`evaluate` loads the checkpoint weights-only, builds the detector and the split's data set
from the config, runs :func:`~detkit.evaluation.loop.run_evaluation` (detections and ground truth
in original-image pixels), prints :func:`~detkit.evaluation.table.format_table`, and writes the
metrics JSON and the COCO results JSON (with the data set's real category ids when it has them).
Under torchrun every rank evaluates its shard; rank 0 prints and writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from detkit.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_model_weights
from detkit.engine import dist as dist_utils
from detkit.engine.run_logging import run_logging
from detkit.errors import ConfigError
from detkit.evaluation.builder import build_evaluators
from detkit.evaluation.coco import to_coco_results
from detkit.evaluation.diagnostics import box_fit_diagnostics, format_diagnostics
from detkit.evaluation.loop import build_eval_loader, coco_options, run_evaluation
from detkit.evaluation.names import metric_keys
from detkit.evaluation.table import format_table
from detkit.jsonio import write_json
from detkit.schema import resolve_eval_config, resolve_train_config

__all__ = ["evaluate"]

logger = logging.getLogger("detkit")


def evaluate(cfg: Mapping, checkpoint, *, metric="all", split: str = "val", metrics_out=None,
             results_out=None, diagnostics_out=None, device=None, batch_size: int | None = None,
             unsafe_load: bool = False, launcher: str = "none") -> dict | None:
    """Evaluate ``checkpoint`` on ``data.<split>``; prints the table and the box-fit diagnostics
    (:mod:`detkit.evaluation.diagnostics`), writes ``metrics_out`` (metrics JSON), ``results_out``
    (COCO results JSON) and ``diagnostics_out`` (diagnostics JSON). Returns the metrics (``None`` on
    ranks other than 0 under torchrun)."""
    from detkit.data.builder import build_dataset, check_same_classes
    from detkit.models.builder import build_detector

    if not isinstance(cfg, Mapping) or "model" not in cfg:
        raise ConfigError("config has no 'model' section")
    tcfg = resolve_train_config(cfg.get("train"))
    ecfg = resolve_eval_config(cfg.get("eval"), tcfg)
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ConfigError(f"--batch-size: expected an integer >= 1, got {batch_size!r}")
    metric_keys(metric)  # validates the name before anything heavy happens
    info = dist_utils.init_distributed(launcher, device)
    try:
        with run_logging(None, info.rank):
            ckpt = load_checkpoint(checkpoint, map_location="cpu", unsafe=unsafe_load)
            dataset = build_dataset(cfg, split)
            class_names = tuple(ckpt.get("class_names") or (cfg.get("data") or {}).get("classes")
                                or dataset.classes)
            check_same_classes(class_names, dataset.classes, f"checkpoint {checkpoint}", f"data.{split}")
            model = build_detector(cfg["model"], class_names, pretrained=False)  # the checkpoint's weights
            load_model_weights(model, ckpt, source=str(checkpoint))
            model.to(info.device).eval()
            loader = build_eval_loader(dataset, batch_size or ecfg["batch_size"], ecfg["num_workers"],
                                       tcfg["bad_sample"])
            options = coco_options(dataset)
            evaluator = build_evaluators(metric, class_names, coco_options=options)
            if ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("epoch") is not None:
                logger.info("checkpoint %s: trained for %s epoch(s)", checkpoint, ckpt["epoch"])
            logger.info("evaluating on data.%s: %d images", split, len(dataset))
            metrics = run_evaluation(model, loader, evaluator, info.device)
            if metrics is None:
                return None
            print(format_table(metrics), flush=True)
            records = _records(evaluator)
            diagnostics = box_fit_diagnostics(records, class_names, _image_sizes(dataset))
            print(format_diagnostics(diagnostics), flush=True)
            if diagnostics_out:
                logger.info("box-fit diagnostics written to %s", write_json(diagnostics_out, diagnostics))
            if metrics_out:
                logger.info("metrics written to %s", write_json(metrics_out, metrics))
            if results_out:
                results = _collected_results(records, options.get("cat_ids"))
                logger.info("%d detections written to %s (COCO results format)", len(results),
                            write_json(results_out, results))
            return metrics
    finally:
        dist_utils.destroy_distributed(info)


def _records(evaluator) -> list:
    """The images the evaluator collected (every member of a group holds the same ones)."""
    member = evaluator.evaluators[0] if hasattr(evaluator, "evaluators") else evaluator
    return member.sorted_records(log=False)


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
