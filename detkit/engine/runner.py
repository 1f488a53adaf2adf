"""``detkit train`` and ``detkit eval``: build everything from a config and run it.

:func:`train` builds the data sets (``build_dataset(cfg, "train")`` / ``"val"``), takes the class
names from the training set, builds the detector, loaders, optimiser, schedule and hooks, resumes if
asked, and runs the :class:`~detkit.engine.trainer.Trainer`. The run directory (``--work-dir``,
default ``work_dirs/<config name>/``) receives::

    config.json          the resolved config actually used (CLI overrides such as --seed applied)
    train.log            the log (also printed to the console)
    metrics.jsonl        one record per logged window and per epoch (see hooks.LoggerHook)
    last.pth             the latest checkpoint; resume with --resume
    previous/<time>/     an earlier run in the same work dir, moved aside (a new run never overwrites it)
    epoch_N.pth          the last ``keep_last`` epoch checkpoints
    best_<metric>.pth    the best checkpoint by ``eval.save_best``
    plots/               loss.png, map.png, lr.png, redrawn every epoch
    tensorboard/         events, if tensorboard is installed

:func:`evaluate` loads a checkpoint weights-only, runs the model in eval mode with the targets (so
detections come back in original-image pixels through the image meta) and scores them against the
ground truth mapped back to original pixels, prints the metrics table and writes the metrics JSON
and the COCO results JSON.

The ``train`` / ``eval`` config sections (``configs/_base_/schedules/*.py``)::

    train = dict(
        epochs=24, batch_size=16, num_workers=2, seed=0,     # batch_size per process under DDP
        optimizer=dict(type="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, no_decay_norm_bias=True),
        scheduler=dict(type="cosine", warmup_epochs=1, warmup_start_factor=0.1, min_lr_factor=0.01),
        grad_clip=10.0,          # max L2 norm of all gradients, or None
        accumulate=1,            # optimiser step every N batches (loss scaled by 1/N)
        amp=False, amp_dtype="bf16",   # mixed precision on CUDA (bf16, or fp16 with loss scaling)
        channels_last=False, compile=False, sync_bn=False,
        log_interval=10,         # iterations between log lines / metrics records
        checkpoint_interval=1,   # epochs between last.pth / epoch_N.pth saves
        keep_last=3,             # epoch_N.pth files kept (None or -1: all, 0: none)
        eval_interval=1,         # epochs between evaluations (0: never)
        nan_policy="raise",      # or "skip": drop batches with a non-finite loss (counted, logged)
        # optional: load_from=None (initial weights: a checkpoint or state dict),
        # bad_sample="raise" (or "skip": samples that fail to load are dropped and logged; files
        #   unusable from the start are already excluded when the data set is built),
        # find_unused_parameters=False (DDP, for models with branches unused in a step)
    )
    eval = dict(metric=["voc07", "voc", "coco"], batch_size=16, num_workers=2, save_best="voc07_ap50")

An unknown key in either section is an error naming ``train.<key>`` with a suggestion.

Resuming: ``resume="auto"`` continues from ``last.pth`` of the work dir (or the newest
``epoch_N.pth``); when there is none it starts from scratch with a warning, like mmengine. A path
resumes from that file. Resuming continues exactly: with the same seed, training 2 epochs straight
and 1 epoch + resume + 1 epoch give the same weights (every epoch's shuffling and augmentation are
seeded from (seed, epoch, rank); the optimiser, schedule, scaler and RNG states are restored).
Loader workers are not persistent across epochs for the same reason (a persistent worker carries
its random state over from the previous epoch).

Determinism: ``deterministic=True`` calls ``torch.use_deterministic_algorithms(True)``, sets
``cudnn.deterministic`` and disables ``cudnn.benchmark``, and sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
when unset (cuBLAS reads it when CUDA initialises: export it before starting Python to be sure).
The previous settings are restored when :func:`train` returns.

Distributed training: see :mod:`detkit.engine.dist`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from detkit.config import config_name, dump_config
from detkit.engine import dist as dist_utils
from detkit.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    is_full_checkpoint,
    load_checkpoint,
    load_model_weights,
)
from detkit.engine.hooks import (
    BestMetricHook,
    CheckpointHook,
    EvalHook,
    IterTimerHook,
    LoggerHook,
    LRSchedulerHook,
    PlotHook,
    stderr_is_terminal,
)
from detkit.engine.optim import build_optimizer, build_scheduler, check_keys
from detkit.engine.trainer import Trainer, move_targets
from detkit.errors import CheckpointError, ConfigError
from detkit.structures import boxes_to_original

__all__ = [
    "TRAIN_DEFAULTS",
    "EVAL_DEFAULTS",
    "resolve_train_config",
    "resolve_eval_config",
    "metric_keys",
    "run_logging",
    "seed_everything",
    "run_evaluation",
    "original_targets",
    "train",
    "evaluate",
]

logger = logging.getLogger("detkit")

TRAIN_DEFAULTS = dict(
    epochs=12,
    batch_size=16,
    num_workers=2,
    seed=0,
    optimizer=dict(type="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, no_decay_norm_bias=True),
    scheduler=dict(type="constant"),
    grad_clip=None,
    accumulate=1,
    amp=False,
    amp_dtype="bf16",
    channels_last=False,
    compile=False,
    sync_bn=False,
    log_interval=10,
    checkpoint_interval=1,
    keep_last=3,
    eval_interval=1,
    nan_policy="raise",
    load_from=None,
    bad_sample="raise",
    find_unused_parameters=False,
)
EVAL_DEFAULTS = dict(metric=["voc07", "voc", "coco"], batch_size=None, num_workers=None,
                     save_best="voc07_ap50")

# Scalar metrics each eval.metric produces (what eval.save_best may name).
_METRIC_KEYS = {
    "voc07": ("voc07_ap50",),
    "voc": ("voc_ap50",),
    "coco": ("coco_ap", "coco_ap50", "coco_ap75", "coco_ap_s", "coco_ap_m", "coco_ap_l",
             "coco_ar1", "coco_ar10", "coco_ar100", "coco_ar_s", "coco_ar_m", "coco_ar_l"),
}


# ----------------------------------------------------------------------------------------------
# Config sections
# ----------------------------------------------------------------------------------------------


def _int(cfg: Mapping, key: str, minimum: int, section: str = "train", allow_none: bool = False):
    value = cfg[key]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{section}.{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _bool(cfg: Mapping, key: str, section: str = "train") -> bool:
    if not isinstance(cfg[key], bool):
        raise ConfigError(f"{section}.{key}: expected True or False, got {cfg[key]!r}")
    return cfg[key]


def resolve_train_config(train_cfg: Mapping | None) -> dict:
    """``train`` with defaults filled in and every value checked (ConfigError names the key)."""
    if train_cfg is None:
        train_cfg = {}
    if not isinstance(train_cfg, Mapping):
        raise ConfigError(f"train: expected a dict, got {type(train_cfg).__name__}")
    check_keys(train_cfg, TRAIN_DEFAULTS, "train")
    cfg = {**copy.deepcopy(TRAIN_DEFAULTS), **copy.deepcopy(dict(train_cfg))}
    for key, minimum in (("epochs", 1), ("batch_size", 1), ("num_workers", 0), ("accumulate", 1),
                         ("log_interval", 1), ("checkpoint_interval", 1), ("eval_interval", 0)):
        _int(cfg, key, minimum)
    _int(cfg, "seed", 0, allow_none=True)
    if cfg["keep_last"] is not None:
        _int(cfg, "keep_last", -1)
    for key in ("amp", "channels_last", "compile", "sync_bn", "find_unused_parameters"):
        _bool(cfg, key)
    if cfg["grad_clip"] is not None:
        if isinstance(cfg["grad_clip"], bool) or not isinstance(cfg["grad_clip"], (int, float)) \
                or not cfg["grad_clip"] > 0:
            raise ConfigError(f"train.grad_clip: expected a number > 0 or None, got {cfg['grad_clip']!r}")
    for key, choices in (("nan_policy", ("raise", "skip")), ("bad_sample", ("raise", "skip")),
                         ("amp_dtype", ("bf16", "fp16", "bfloat16", "float16"))):
        if cfg[key] not in choices:
            raise ConfigError(f"train.{key}: {cfg[key]!r} is not one of {', '.join(choices)}")
    if not isinstance(cfg["optimizer"], Mapping):
        raise ConfigError("train.optimizer: expected dict(type='sgd' or 'adamw', lr=...)")
    if cfg["scheduler"] is not None and not isinstance(cfg["scheduler"], Mapping):
        raise ConfigError("train.scheduler: expected dict(type=...) or None")
    if cfg["load_from"] is not None and not isinstance(cfg["load_from"], str):
        raise ConfigError(f"train.load_from: expected a checkpoint path or None, got {cfg['load_from']!r}")
    return cfg


def metric_keys(metric) -> list[str]:
    names = [metric] if isinstance(metric, str) else list(metric or [])
    keys: list[str] = []
    for name in names:
        for n in (("voc07", "voc", "coco") if name == "all" else (name,)):
            if n not in _METRIC_KEYS:
                raise ConfigError(f"eval.metric: unknown metric {n!r}; choose from voc07, voc, coco, all")
            keys += [k for k in _METRIC_KEYS[n] if k not in keys]
    if not keys:
        raise ConfigError("eval.metric: no metric given; choose from voc07, voc, coco, all")
    return keys


def resolve_eval_config(eval_cfg: Mapping | None, train_cfg: Mapping | None = None) -> dict:
    """``eval`` with defaults (batch size and workers default to the training ones)."""
    if eval_cfg is None:
        eval_cfg = {}
    if not isinstance(eval_cfg, Mapping):
        raise ConfigError(f"eval: expected a dict, got {type(eval_cfg).__name__}")
    check_keys(eval_cfg, EVAL_DEFAULTS, "eval")
    cfg = {**copy.deepcopy(EVAL_DEFAULTS), **copy.deepcopy(dict(eval_cfg))}
    train_cfg = train_cfg or TRAIN_DEFAULTS
    if cfg["batch_size"] is None:
        cfg["batch_size"] = train_cfg["batch_size"]
    if cfg["num_workers"] is None:
        cfg["num_workers"] = train_cfg["num_workers"]
    _int(cfg, "batch_size", 1, "eval")
    _int(cfg, "num_workers", 0, "eval")
    keys = metric_keys(cfg["metric"])
    if cfg["save_best"] is not None and cfg["save_best"] not in keys:
        import difflib

        close = difflib.get_close_matches(str(cfg["save_best"]), keys, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"eval.save_best: '{cfg['save_best']}' is not computed by eval.metric="
                          f"{cfg['metric']!r}.{hint} It computes: {', '.join(keys)}.")
    return cfg


# ----------------------------------------------------------------------------------------------
# Logging, seeding, determinism
# ----------------------------------------------------------------------------------------------


class _ConsoleHandler(logging.Handler):
    """Prints through tqdm so log lines do not tear a progress bar; honours ``extra={"console":
    False}`` (lines the progress bar already shows go to the log file only)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "console", True):
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        record.message = record.getMessage()
        text = f"{self.formatTime(record, '%m/%d %H:%M:%S')} {prefix}{record.message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@contextlib.contextmanager
def run_logging(work_dir: Path | None, rank: int = 0, log_name: str = "train.log"):
    """Log the ``detkit`` logger to the console (rank 0: INFO, others: WARNING) and, on rank 0 with
    a work dir, to ``work_dir/train.log`` (appended, so a resumed run continues the same log).
    Handlers are removed again on exit."""
    root = logging.getLogger("detkit")
    old_level = root.level
    handlers: list[logging.Handler] = []
    console = _ConsoleHandler(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(_Formatter())
    handlers.append(console)
    if work_dir is not None and rank == 0:
        work_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(work_dir / log_name, mode="a", encoding="utf-8")
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(_Formatter())
        handlers.append(file_handler)
    for h in handlers:
        root.addHandler(h)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU), numpy and python ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def _determinism(enabled: bool):
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            logger.info("deterministic mode: set CUBLAS_WORKSPACE_CONFIG=:4096:8 (export it before "
                        "starting Python if CUDA was already initialised)")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        if enabled:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def original_targets(targets: Sequence[Mapping]) -> list[dict]:
    """Ground truth in original-image pixels (the loader's boxes are in model-input pixels)."""
    out = []
    for t in targets:
        boxes = t["boxes"]
        if "meta" in t and t["meta"] is not None:
            boxes = boxes_to_original(boxes.float(), t["meta"])
        item = {"boxes": boxes.cpu(), "labels": t["labels"].cpu(), "image_id": t.get("image_id")}
        for key in ("difficult", "iscrowd"):
            if t.get(key) is not None:
                item[key] = t[key].cpu()
        out.append(item)
    return out


def _eval_module(model: torch.nn.Module) -> torch.nn.Module:
    # DDP's forward would broadcast buffers and expect a backward; evaluation uses the module itself.
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


@torch.inference_mode()
def run_evaluation(model: torch.nn.Module, loader, evaluator, device: torch.device | str, *,
                   amp=None, channels_last: bool = False, progress: bool | None = None,
                   desc: str = "eval") -> dict | None:
    """Run ``model`` in eval mode over ``loader`` and score it with ``evaluator``.

    Detections are requested with the targets (so they come back in original-image pixels) and
    compared with the ground truth mapped back to original pixels. Under DDP every rank scores its
    shard; rank 0 gathers the evaluator states and computes. Returns the metrics on rank 0 and
    ``None`` on the other ranks; afterwards rank 0's ``evaluator`` holds every image (for results
    files). The model's train/eval mode is restored.
    """
    device = torch.device(device)
    module = _eval_module(model)
    was_training = module.training
    module.eval()
    evaluator.reset()
    show_bar = (stderr_is_terminal() if progress is None else progress) and dist_utils.is_main_process()
    bar = None
    if show_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=getattr(amp, "dtype", torch.bfloat16),
                                enabled=bool(getattr(amp, "enabled", False))):
                detections = module(images, move_targets(targets, device))
            detections = [{k: v.detach().float().cpu() if k != "labels" else v.detach().cpu()
                           for k, v in d.items() if k in ("boxes", "scores", "labels")} for d in detections]
            evaluator.update(detections, original_targets(targets))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        module.train(was_training)
    if dist_utils.is_distributed():
        states = dist_utils.gather_to_main(evaluator.state())
        if not dist_utils.is_main_process():
            return None
        evaluator.load_states(states)
    return evaluator.compute()


def _eval_loader(dataset, batch_size: int, num_workers: int, bad_sample: str = "raise"):
    from detkit.data.loader import DetectionDataLoader, build_dataloader

    if dist_utils.is_distributed():
        # Contiguous shards without padding: every image is evaluated once.
        return DetectionDataLoader(dataset, bad_sample=bad_sample, batch_size=batch_size,
                                   sampler=dist_utils.ShardSampler(len(dataset)), num_workers=num_workers,
                                   pin_memory=torch.cuda.is_available())
    return build_dataloader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            persistent_workers=False, bad_sample=bad_sample)


def _coco_options(dataset) -> dict:
    cat_ids = getattr(dataset, "cat_ids", None)
    return {"cat_ids": list(cat_ids)} if cat_ids else {}


def archive_previous_run(work_dir: Path) -> Path:
    """Move the files of an earlier run out of the way (never overwrite its checkpoints)."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    target = work_dir / "previous" / stamp
    n = 1
    while target.exists():
        n += 1
        target = work_dir / "previous" / f"{stamp}_{n}"
    target.mkdir(parents=True)
    for item in work_dir.iterdir():
        if item.name != "previous":
            os.replace(item, target / item.name)
    return target


def _jsonable(value):
    from detkit.engine.hooks import _jsonable as convert

    return convert(value)


def _write_json(path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _check_same_classes(a: Sequence[str], b: Sequence[str], what_a: str, what_b: str) -> None:
    if tuple(a) != tuple(b):
        raise ConfigError(
            f"{what_a} has classes {list(a)} but {what_b} has {list(b)}; labels would not match "
            "(set data.classes to the same list)"
        )


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------


def _find_resume(resume, work_dir: Path) -> Path | None:
    if resume is None or resume is False:
        return None
    if resume == "auto" or resume is True:
        last = work_dir / "last.pth"
        if last.is_file():
            return last
        epochs = sorted(work_dir.glob("epoch_*.pth"),
                        key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit() else -1)
        if epochs:
            return epochs[-1]
        logger.warning("--resume: no checkpoint (last.pth or epoch_N.pth) in %s; starting from scratch",
                       work_dir)
        return None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: checkpoint not found")
    return path


def _effective_train_config(cfg: Mapping, *, seed, epochs, amp) -> dict:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"the config must be a dict, got {type(cfg).__name__}")
    # The resolved config goes into config.json and every checkpoint: make it plain JSON data now
    # (a pathlib.Path from Python use becomes a string) rather than fail at the first save.
    cfg = json.loads(json.dumps(cfg, default=str))
    if "model" not in cfg:
        raise ConfigError("config has no 'model' section")
    tcfg = resolve_train_config(cfg.get("train"))
    if seed is not None:
        tcfg["seed"] = int(seed)
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"--epochs: expected an integer >= 1, got {epochs!r}")
        tcfg["epochs"] = epochs
    if amp is not None:
        tcfg["amp"] = bool(amp)
    cfg["train"] = tcfg
    cfg["eval"] = resolve_eval_config(cfg.get("eval"), tcfg)
    return cfg


def train(cfg: Mapping, *, config_path=None, work_dir=None, resume=None, seed: int | None = None,
          deterministic: bool = False, device=None, amp: bool | None = None, epochs: int | None = None,
          unsafe_load: bool = False, launcher: str = "none", extra_hooks: Sequence = ()) -> dict:
    """Train the detector of ``cfg`` (see the module docstring).

    ``seed``, ``epochs``, ``amp`` override ``train.*``; ``resume`` is None, ``"auto"`` or a path;
    ``extra_hooks`` are added to the built-in ones (Python use). Returns a summary dict:
    ``work_dir``, ``last_checkpoint``, ``best_checkpoint``, ``best_metric``, ``best_metric_name``,
    ``best_epoch``, ``metrics`` (the last evaluation), ``epochs``.
    """
    cfg = _effective_train_config(cfg, seed=seed, epochs=epochs, amp=amp)
    if work_dir is None:
        name = config_name(config_path) if config_path else "run"
        work_dir = Path("work_dirs") / name
    work_dir = Path(work_dir)
    info = dist_utils.init_distributed(launcher, device)
    archived = None
    if info.is_main and resume is None and (work_dir / "last.pth").exists():
        # A new run never overwrites an earlier run's checkpoints and log: they move aside first
        # (before the log file is opened, so the new log starts fresh).
        archived = archive_previous_run(work_dir)
    try:
        with run_logging(work_dir, info.rank), _determinism(deterministic):
            return _train(cfg, info, work_dir, resume=resume, unsafe_load=unsafe_load,
                          deterministic=deterministic, extra_hooks=extra_hooks, archived=archived)
    finally:
        dist_utils.destroy_distributed(info)


def _train(cfg: dict, info: dist_utils.DistInfo, work_dir: Path, *, resume, unsafe_load: bool,
           deterministic: bool, extra_hooks: Sequence, archived: Path | None = None) -> dict:
    from detkit import __version__
    from detkit.data.builder import build_dataset
    from detkit.data.loader import build_dataloader
    from detkit.models.builder import build_detector

    tcfg, ecfg = cfg["train"], cfg["eval"]
    device = info.device
    resume_path = _find_resume(resume, work_dir)
    ckpt = load_checkpoint(resume_path, unsafe=unsafe_load) if resume_path else None
    if ckpt is not None and not is_full_checkpoint(ckpt):
        raise CheckpointError(
            f"--resume {resume_path}: holds model weights only, so training cannot resume from it; "
            "use it as initial weights with --set +train.load_from=PATH"
        )
    if tcfg["seed"] is None:
        saved = ((ckpt or {}).get("config") or {}).get("train", {}).get("seed")
        tcfg["seed"] = int(saved) if saved is not None else random.SystemRandom().randrange(2**31)
    seed = tcfg["seed"]
    if archived is not None:
        logger.warning("%s already held a run; moved it to %s (pass --resume to continue a run instead)",
                       work_dir, archived)
    logger.info("detkit %s, torch %s, device %s%s, seed %d%s", __version__, torch.__version__, device,
                f", {info.world_size} processes ({info.backend})" if info.distributed else "", seed,
                ", deterministic" if deterministic else "")
    logger.info("work dir: %s", work_dir.resolve())
    seed_everything(seed)  # identical model initialisation on every rank

    train_set = build_dataset(cfg, "train")
    class_names = tuple(train_set.classes)
    if ckpt is not None and ckpt.get("class_names"):
        _check_same_classes(ckpt["class_names"], class_names, f"checkpoint {resume_path}", "the training data")
    val_set = None
    if tcfg["eval_interval"] > 0:
        if "val" in (cfg.get("data") or {}):
            val_set = build_dataset(cfg, "val")
            _check_same_classes(val_set.classes, class_names, "data.val", "data.train")
        else:
            logger.warning("the config has no data.val: training without evaluation")

    model = build_detector(cfg["model"], class_names)
    if tcfg["load_from"] and ckpt is None:
        init = load_checkpoint(tcfg["load_from"], unsafe=unsafe_load)
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
    scheduler = build_scheduler(optimizer, tcfg["scheduler"], epochs=tcfg["epochs"],
                                iters_per_epoch=len(train_loader))
    logger.info("data: %d training images%s, batch %d x %d process(es)", len(train_set),
                f", {len(val_set)} validation images" if val_set is not None else "",
                tcfg["batch_size"], info.world_size)

    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, work_dir / "config.json")

    hooks = [LRSchedulerHook(), IterTimerHook()]
    if val_set is not None:
        from detkit.evaluation import build_evaluators, format_table

        val_loader = _eval_loader(val_set, ecfg["batch_size"], ecfg["num_workers"], tcfg["bad_sample"])
        evaluator = build_evaluators(ecfg["metric"], class_names, coco_options=_coco_options(val_set))

        def evaluate_fn(trainer):
            metrics = run_evaluation(trainer.model, val_loader, evaluator, device, amp=trainer.amp,
                                     channels_last=tcfg["channels_last"],
                                     desc=f"eval epoch {trainer.epochs_done}")
            if metrics is not None:
                logger.info("evaluation after epoch %d:\n%s", trainer.epochs_done, format_table(metrics))
            return dist_utils.broadcast_from_main(metrics)

        hooks.append(EvalHook(evaluate_fn, tcfg["eval_interval"]))
        if ecfg["save_best"]:
            hooks.append(BestMetricHook(ecfg["save_best"]))
    if info.is_main:
        hooks += [
            CheckpointHook(work_dir, tcfg["checkpoint_interval"], tcfg["keep_last"]),
            LoggerHook(tcfg["log_interval"], work_dir / "metrics.jsonl",
                       tensorboard_dir=work_dir / "tensorboard"),
            PlotHook(work_dir / "metrics.jsonl", work_dir / "plots"),
        ]
    hooks += list(extra_hooks)

    trainer = Trainer(
        model, optimizer, train_loader, max_epochs=tcfg["epochs"], device=device, scheduler=scheduler,
        hooks=hooks, grad_clip=tcfg["grad_clip"], accumulate=tcfg["accumulate"], amp=tcfg["amp"],
        amp_dtype=tcfg["amp_dtype"], channels_last=tcfg["channels_last"], nan_policy=tcfg["nan_policy"],
        seed=seed, extra_state={"class_names": list(class_names), "config": cfg},
    )
    if ckpt is not None:
        trainer.load_state_dict(ckpt, source=str(resume_path))
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


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def evaluate(cfg: Mapping, checkpoint, *, metric="all", split: str = "val", metrics_out=None,
             results_out=None, device=None, batch_size: int | None = None, unsafe_load: bool = False,
             launcher: str = "none") -> dict | None:
    """Evaluate ``checkpoint`` on ``data.<split>``; prints the table, writes ``metrics_out``
    (metrics JSON) and ``results_out`` (COCO results JSON). Returns the metrics (``None`` on
    ranks other than 0 under torchrun)."""
    from detkit.data.builder import build_dataset
    from detkit.evaluation import build_evaluators, format_table, to_coco_results
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
            _check_same_classes(class_names, dataset.classes, f"checkpoint {checkpoint}", f"data.{split}")
            model = build_detector(cfg["model"], class_names)
            load_model_weights(model, ckpt, source=str(checkpoint))
            model.to(info.device).eval()
            loader = _eval_loader(dataset, batch_size or ecfg["batch_size"], ecfg["num_workers"],
                                  tcfg["bad_sample"])
            evaluator = build_evaluators(metric, class_names, coco_options=_coco_options(dataset))
            if ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("epoch") is not None:
                logger.info("checkpoint %s: trained for %s epoch(s)", checkpoint, ckpt["epoch"])
            logger.info("evaluating on data.%s: %d images", split, len(dataset))
            metrics = run_evaluation(model, loader, evaluator, info.device)
            if metrics is None:
                return None
            print(format_table(metrics), flush=True)
            if metrics_out:
                logger.info("metrics written to %s", _write_json(metrics_out, metrics))
            if results_out:
                records = evaluator.evaluators[0].sorted_records() if hasattr(evaluator, "evaluators") \
                    else evaluator.sorted_records()
                detections = [{"boxes": r.det_boxes, "scores": r.det_scores, "labels": r.det_labels}
                              for r in records]
                results = to_coco_results(detections, [r.image_id for r in records],
                                          _coco_options(dataset).get("cat_ids"))
                logger.info("%d detections written to %s (COCO results format)", len(results),
                            _write_json(results_out, results))
            return metrics
    finally:
        dist_utils.destroy_distributed(info)
