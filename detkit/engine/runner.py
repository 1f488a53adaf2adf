"""``detkit train`` and ``detkit classify train``: build everything from a config and run the trainer.

:func:`train` builds the data sets (``build_dataset(cfg, "train")`` / ``"val"``), takes the class
names from the training set, builds the model (a detector, or a classifier for
``task=CLASSIFICATION``: :mod:`detkit.tasks` holds the few things that differ), loaders, optimiser,
schedule and hooks, resumes if asked, and runs the :class:`~detkit.engine.trainer.Trainer`. The run directory (``--work-dir``,
default ``work_dirs/<config name>/``) receives::

    config.json          the resolved config actually used (CLI overrides such as --seed applied)
    train.log            the log (also printed to the console)
    metrics.jsonl        one record per logged window and per epoch (see hooks.LoggerHook)
    last.pth             the latest checkpoint; resume with --resume
    stages.json          detectors trained in stages after the loop (rcnn_classic): what has finished,
                         with finetune_epochs.json (each epoch's wall and CPU seconds) and features/
    previous/<time>/     an earlier run in the same work dir (any of its files), moved aside: a new
                         run never overwrites, truncates or appends to it (see engine/workdir.py)
    epoch_N.pth          the last ``keep_last`` epoch checkpoints
    best_<metric>.pth    the best checkpoint by ``eval.save_best``
    plots/               loss.png, map.png (accuracy.png and confusion.png for a classifier), lr.png,
                         redrawn every epoch; a detector's run also data_train.png (box statistics)
                         and, after the last epoch, the evaluation plots of the final model (PR / F1
                         curves, confusion matrices, per_class.csv, report.txt, mosaics)
    tensorboard/         events, with train.loggers=["tensorboard"] (the default)
    mlruns/              the MLflow store, with "mlflow" in train.loggers (see engine/loggers.py)

The ``train`` / ``eval`` config sections (keys, defaults, checks) are defined in
:mod:`detkit.schema` and documented in docs/training.md; :func:`train` resolves them once, before
anything is created.

Resuming: ``resume="auto"`` continues from ``last.pth`` of the work dir, or, when it is missing or
damaged, from the newest readable ``epoch_N.pth`` / ``best_*.pth`` (with a warning naming the damaged
files); when there is none it starts from scratch with a warning, like mmengine. A path resumes from
that file. Temporary files a killed save left are removed first. Resuming continues exactly: with the same seed, training 2 epochs straight
and 1 epoch + resume + 1 epoch give the same weights (every epoch's shuffling and augmentation are
seeded from (seed, epoch, rank), see :mod:`detkit.seeding`; the optimiser, schedule, scaler and RNG
states are restored). Loader workers are not persistent across epochs for the same reason (a
persistent worker carries its random state over from the previous epoch).

Determinism: ``deterministic=True`` runs the training under
:func:`detkit.seeding.deterministic_mode` (deterministic algorithms, no cuDNN benchmarking,
``CUBLAS_WORKSPACE_CONFIG``); the previous settings are restored when :func:`train` returns.

Distributed training: see :mod:`detkit.engine.dist`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from detkit.checkpoint import is_full_checkpoint, load_checkpoint, load_model_weights
from detkit.config import config_name, dump_config
from detkit.engine import dist as dist_utils
from detkit.engine.hooks import (
    BestMetricHook,
    CheckpointHook,
    EvalHook,
    EvalPlotsHook,
    IterTimerHook,
    LoggerHook,
    LRSchedulerHook,
    PlotHook,
)
from detkit.engine.optim import build_optimizer, build_scheduler
from detkit.engine.run_logging import run_logging
from detkit.engine.trainer import Trainer
from detkit.engine.workdir import PreparedWorkDir, load_resume, prepare_work_dir
from detkit.errors import CheckpointError
from detkit.schema import resolve_config
from detkit.seeding import deterministic_mode, seed_everything
from detkit.tasks import DETECTION, Task, check_dataset_task

__all__ = ["train"]

logger = logging.getLogger("detkit")


def train(cfg: Mapping, *, config_path=None, work_dir=None, resume=None, seed: int | None = None,
          deterministic: bool = False, device=None, amp: bool | None = None, epochs: int | None = None,
          unsafe_load: bool = False, launcher: str = "none", extra_hooks: Sequence = (),
          task: Task = DETECTION) -> dict:
    """Train the model of ``cfg``: a detector, or what ``task`` trains (see the module docstring).

    ``seed``, ``epochs``, ``amp`` override ``train.*``; ``resume`` is None, ``"auto"`` or a path;
    ``extra_hooks`` are added to the built-in ones (Python use). Returns a summary dict:
    ``work_dir``, ``last_checkpoint``, ``best_checkpoint``, ``best_metric``, ``best_metric_name``,
    ``best_epoch``, ``metrics`` (the last evaluation), ``epochs``.
    """
    cfg = resolve_config(cfg, seed=seed, epochs=epochs, amp=amp, task=task.name)
    if work_dir is None:
        name = config_name(config_path) if config_path else "run"
        work_dir = Path("work_dirs") / name
    work_dir = Path(work_dir)
    info = dist_utils.init_distributed(launcher, device)
    try:
        # Before the log file is opened: a new run never appends to or overwrites an earlier run's
        # files (they move aside), and a read-only work dir fails here, in one line.
        prepared = prepare_work_dir(work_dir, resume) if info.is_main else None
        with run_logging(work_dir, info.rank), deterministic_mode(deterministic):
            return _train(cfg, info, work_dir, resume=resume, unsafe_load=unsafe_load,
                          deterministic=deterministic, extra_hooks=extra_hooks, prepared=prepared, task=task)
    finally:
        dist_utils.destroy_distributed(info)


def _train(cfg: dict, info: dist_utils.DistInfo, work_dir: Path, *, resume, unsafe_load: bool,
           deterministic: bool, extra_hooks: Sequence, prepared: PreparedWorkDir | None = None,
           task: Task = DETECTION) -> dict:
    from detkit import __version__
    from detkit.data.builder import build_dataset, check_same_classes
    from detkit.data.loader import build_dataloader

    tcfg, ecfg = cfg["train"], cfg["eval"]
    device = info.device
    if prepared is not None:
        prepared.log(work_dir)
    resume_path, ckpt = load_resume(resume, work_dir, unsafe=unsafe_load)
    if ckpt is not None and not is_full_checkpoint(ckpt):
        raise CheckpointError(
            f"--resume {resume_path}: holds model weights only, so training cannot resume from it; "
            "use it as initial weights with --set +train.load_from=PATH"
        )
    if tcfg["seed"] is None:
        saved = ((ckpt or {}).get("config") or {}).get("train", {}).get("seed")
        tcfg["seed"] = int(saved) if saved is not None else random.SystemRandom().randrange(2**31)
    seed = tcfg["seed"]
    logger.info("detkit %s, torch %s, device %s%s, seed %d%s", __version__, torch.__version__, device,
                f", {info.world_size} processes ({info.backend})" if info.distributed else "", seed,
                ", deterministic" if deterministic else "")
    logger.info("work dir: %s", work_dir.resolve())
    seed_everything(seed)  # identical model initialisation on every rank

    train_set = build_dataset(cfg, "train")
    check_dataset_task(train_set, task, "data.train")
    class_names = tuple(train_set.classes)
    if ckpt is not None and ckpt.get("class_names"):
        check_same_classes(ckpt["class_names"], class_names, f"checkpoint {resume_path}", "the training data")
    val_set = None
    if tcfg["eval_interval"] > 0:
        if "val" in (cfg.get("data") or {}):
            val_set = build_dataset(cfg, "val")
            check_dataset_task(val_set, task, "data.val")
            check_same_classes(val_set.classes, class_names, "data.val", "data.train")
        else:
            logger.warning("the config has no data.val: training without evaluation")

    model = task.build_model(cfg["model"], class_names)
    if tcfg["load_from"] and ckpt is None:
        init = load_checkpoint(tcfg["load_from"], unsafe=unsafe_load)
        if init.get("class_names"):
            check_same_classes(init["class_names"], class_names, f"train.load_from {tcfg['load_from']}",
                               "the training data", hint="list data.classes in the checkpoint's order; "
                               "for other classes start from its backbone only: "
                               "model.backbone.pretrained=PATH")
        load_model_weights(model, init, source=str(tcfg["load_from"]))
        logger.info("initial weights from %s", tcfg["load_from"])
    model.to(device)
    if tcfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    if tcfg["sync_bn"]:
        if not info.distributed:
            logger.warning("train.sync_bn=True has no effect in a single process")
        elif device.type != "cuda":
            logger.warning("train.sync_bn=True is ignored on %s: SyncBatchNorm needs GPUs", device.type)
        else:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    num_params = sum(p.numel() for p in model.parameters())
    logger.info("model %s: %s parameters, %d classes", cfg["model"].get("type"),
                f"{num_params / 1e6:.2f}M" if num_params >= 1e5 else f"{num_params:,}", len(class_names))
    optimizer = build_optimizer(model, tcfg["optimizer"])
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=tcfg["find_unused_parameters"])
    if tcfg["compile"]:
        model = torch.compile(model)

    train_loader = build_dataloader(
        train_set, batch_size=tcfg["batch_size"], shuffle=True, num_workers=tcfg["num_workers"],
        distributed=info.distributed, seed=seed, persistent_workers=False, bad_sample=tcfg["bad_sample"])
    if tcfg["multi_scale"] is not None:
        from detkit.data.multiscale import MultiScaleLoader

        train_loader = MultiScaleLoader(train_loader, **tcfg["multi_scale"], seed=seed)
    scheduler = build_scheduler(optimizer, tcfg["scheduler"], epochs=tcfg["epochs"],
                                iters_per_epoch=len(train_loader))
    logger.info("data: %d training images%s, batch %d x %d process(es)", len(train_set),
                f", {len(val_set)} validation images" if val_set is not None else "",
                tcfg["batch_size"], info.world_size)

    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, work_dir / "config.json")

    hooks = [LRSchedulerHook(), IterTimerHook()]
    evaluator = None
    if tcfg["ema"] is not None:
        from detkit.engine.ema import EMAHook

        hooks.append(EMAHook(**tcfg["ema"]))
    if val_set is not None:
        from detkit.evaluation.loop import build_eval_loader, run_evaluation
        from detkit.evaluation.table import format_table

        val_loader = build_eval_loader(val_set, ecfg["batch_size"], ecfg["num_workers"], tcfg["bad_sample"])
        evaluator = task.build_evaluators(ecfg["metric"], class_names, val_set)

        def evaluate_fn(trainer):
            model = trainer.model if trainer.eval_model is None else trainer.eval_model
            metrics = run_evaluation(model, val_loader, evaluator, device, amp=trainer.amp,
                                     channels_last=tcfg["channels_last"], ground_truth=task.ground_truth,
                                     desc=f"eval epoch {trainer.epochs_done}")
            if metrics is not None:
                logger.info("evaluation after epoch %d:\n%s", trainer.epochs_done, format_table(metrics))
            return dist_utils.broadcast_from_main(metrics)

        hooks.append(EvalHook(evaluate_fn, tcfg["eval_interval"]))
        if ecfg["save_best"]:
            hooks.append(BestMetricHook(ecfg["save_best"]))
    if info.is_main:
        from detkit.engine.loggers import build_trackers

        hooks += [
            CheckpointHook(work_dir, tcfg["checkpoint_interval"], tcfg["keep_last"]),
            LoggerHook(tcfg["log_interval"], work_dir / "metrics.jsonl",
                       trackers=build_trackers(tcfg["loggers"], work_dir, cfg)),
            PlotHook(work_dir / "metrics.jsonl", work_dir / "plots"),
        ]
        if ecfg["plots"] and task is DETECTION:  # detection diagnostics (a classifier draws confusion.png)
            hooks.append(EvalPlotsHook(work_dir / "plots", evaluator, val_set, train_set,
                                       iou_threshold=ecfg["plot_iou_thr"], score_threshold=ecfg["plot_score_thr"]))
    hooks += list(extra_hooks)
    if info.is_main:
        # Detectors fitted in steps after the loop (rcnn_classic: features, SVMs, box regressors).
        from detkit.engine.stages import stage_hooks

        hooks += stage_hooks(model, cfg=cfg, work_dir=work_dir, device=device)

    trainer = Trainer(
        model, optimizer, train_loader, max_epochs=tcfg["epochs"], device=device, scheduler=scheduler,
        hooks=hooks, grad_clip=tcfg["grad_clip"], accumulate=tcfg["accumulate"], amp=tcfg["amp"],
        amp_dtype=tcfg["amp_dtype"], channels_last=tcfg["channels_last"], nan_policy=tcfg["nan_policy"],
        seed=seed, extra_state={"class_names": list(class_names), "config": cfg},
    )
    if ckpt is not None:
        trainer.load_state_dict(ckpt, source=str(resume_path))
        if ckpt.get("ema") and tcfg["ema"] is None:
            # its `model` entry is the average; training goes on from the weights it had trained
            load_model_weights(model, {"model": ckpt["ema"]["train_model"]}, source=str(resume_path))
            logger.warning("%s was trained with train.ema; this run has none, so it continues from the "
                           "trained (not averaged) weights", resume_path)
        trainer.last_checkpoint = resume_path
        logger.info("resumed from %s: %d epoch(s) done, continuing at epoch %d", resume_path,
                    trainer.start_epoch, trainer.start_epoch + 1)
    trainer.train()
    summary = {
        "work_dir": work_dir,
        "last_checkpoint": trainer.last_checkpoint,
        "best_checkpoint": trainer.best_checkpoint,
        "best_metric": trainer.best_metric,
        "best_metric_name": trainer.best_metric_name,
        "best_epoch": trainer.best_epoch,
        "metrics": trainer.eval_metrics,
        "epochs": trainer.epochs_done,
        "skipped_batches": trainer.skipped_batches,
    }
    if info.is_main:
        _log_summary(trainer, work_dir)
    return summary


def _log_summary(trainer: Trainer, work_dir: Path) -> None:
    took = getattr(trainer, "train_time", float("nan"))
    lines = [f"training finished: {trainer.epochs_done} epoch(s) in "
             f"{time.strftime('%H:%M:%S', time.gmtime(took)) if took == took else '?'}"]
    lines.append(f"  run dir:          {work_dir.resolve()}")
    if trainer.last_checkpoint:
        lines.append(f"  last checkpoint:  {trainer.last_checkpoint}")
    if trainer.best_checkpoint:
        lines.append(f"  best checkpoint:  {trainer.best_checkpoint} ({trainer.best_metric_name} "
                     f"{trainer.best_metric:.4f} at epoch {trainer.best_epoch})")
    plots = work_dir / "plots"
    if plots.is_dir():
        names = ", ".join(sorted(p.name for p in plots.glob("*.png")))
        lines.append(f"  plots:            {plots} ({names})")
    lines.append(f"  metrics:          {work_dir / 'metrics.jsonl'}")
    lines.append(f"  log:              {work_dir / 'train.log'}")
    if trainer.skipped_batches:
        lines.append(f"  skipped batches:  {trainer.skipped_batches} (non-finite loss)")
    logger.info("\n".join(lines))
