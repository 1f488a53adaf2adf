"""Hooks: small classes the :class:`~detkit.engine.trainer.Trainer` calls at fixed points.

A hook derives from :class:`Hook` and overrides any of ``before_train``, ``before_epoch``,
``before_iter``, ``after_backward``, ``after_iter``, ``after_epoch``, ``after_train``; each receives
the trainer, whose attributes hold all state (see :mod:`detkit.engine.trainer`). Hooks run in
ascending ``priority`` for every event; ties keep registration order. The built-in ones:

=====  ====================  ===========================================================
prio   hook                  does
=====  ====================  ===========================================================
10     LRSchedulerHook       before_iter: sets the learning rate of this iteration
20     IterTimerHook         data-loading and iteration time, images/s, ETA
40     EvalHook              after_epoch (every ``eval_interval``): evaluates on the val set
50     BestMetricHook        after_epoch: tracks the best value of ``eval.save_best``
60     CheckpointHook        after_epoch: last.pth, epoch_N.pth (keep last k), best_<metric>.pth
70     EvalPlotsHook         before_train: data_train.png; after_train: PR / F1, confusion matrix, mosaics
80     LoggerHook            progress bar or log lines, metrics.jsonl, the trackers of train.loggers
90     PlotHook              after_epoch: plots/loss.png, map.png (accuracy.png), lr.png,
                             confusion.png (a classifier's latest evaluation)
=====  ====================  ===========================================================

The order matters where hooks read each other's results: the timer measures before the logger
reports; evaluation, then best tracking, then the checkpoint (which must contain the updated best
metric), then the epoch log record, then the plots drawn from that record. At the end the
evaluation plots are drawn before the logger closes the trackers, which upload ``plots/``. A custom
hook that wants the evaluation results in ``after_epoch`` uses a priority above 40; one that
changes the learning rate after the scheduler uses one above 10.

Two optional events concern checkpoints: ``before_save_checkpoint(trainer, state)`` may add or
change entries of the dict :meth:`Trainer.state_dict` returns, and ``after_load_checkpoint(trainer,
state)`` restores them when :meth:`Trainer.load_state_dict` resumes (mmengine's names; the EMA hook,
:mod:`detkit.engine.ema`, uses both).

The NaN guard is part of ``Trainer.run_step`` (it must act between forward and backward); the
``nan_policy`` is a trainer argument.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import torch

from detkit.checkpoint import link_or_copy, save_checkpoint
from detkit.engine.dist import get_world_size
from detkit.engine.run_logging import stderr_is_terminal
from detkit.errors import ConfigError
from detkit.evaluation.names import EPOCH_KEYS
from detkit.fileio import output_error, write_text_atomic
from detkit.jsonio import to_jsonable

__all__ = [
    "Hook",
    "LRSchedulerHook",
    "IterTimerHook",
    "EvalHook",
    "BestMetricHook",
    "CheckpointHook",
    "LoggerHook",
    "PlotHook",
    "EvalPlotsHook",
]

logger = logging.getLogger(__name__)


class Hook:
    """Base class: every event is a no-op. ``priority``: lower runs earlier (default 50)."""

    priority: int = 50

    def before_train(self, trainer) -> None:
        pass

    def after_train(self, trainer) -> None:
        pass

    def before_epoch(self, trainer) -> None:
        pass

    def after_epoch(self, trainer) -> None:
        pass

    def before_iter(self, trainer) -> None:
        pass

    def after_backward(self, trainer) -> None:
        pass

    def after_iter(self, trainer) -> None:
        pass

    def before_save_checkpoint(self, trainer, state: dict) -> None:
        pass

    def after_load_checkpoint(self, trainer, state) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(priority={self.priority})"


def _format_seconds(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


# ----------------------------------------------------------------------------------------------


class LRSchedulerHook(Hook):
    """Sets the learning rate of each iteration from ``trainer.scheduler`` (an
    :class:`~detkit.engine.optim.IterationScheduler`) before the step."""

    priority = 10

    def before_iter(self, trainer) -> None:
        if trainer.scheduler is not None:
            trainer.scheduler.set_iter(trainer.iter)


class IterTimerHook(Hook):
    """Per-iteration time and data-loading time; ETA from the mean of the last ``window``
    iterations (``trainer.eta_seconds``); total training time."""

    priority = 20

    def __init__(self, window: int = 50):
        self._recent = collections.deque(maxlen=window)

    def before_train(self, trainer) -> None:
        trainer.eta_seconds = float("nan")
        self._train_start = time.perf_counter()
        self._iters_start = trainer.iter

    def before_epoch(self, trainer) -> None:
        self._epoch_start = self._last = time.perf_counter()

    def before_iter(self, trainer) -> None:
        self._iter_start = time.perf_counter()
        self._data_time = self._iter_start - self._last

    def after_iter(self, trainer) -> None:
        now = time.perf_counter()
        iter_time = now - self._last  # data loading + step: what an iteration really costs
        self._last = now
        self._recent.append(iter_time)
        trainer.scalars.update({"time": iter_time, "data_time": self._data_time,
                                "images": trainer.batch_size * get_world_size()})
        remaining = trainer.max_iters - (trainer.iter + 1)
        trainer.eta_seconds = remaining * (sum(self._recent) / len(self._recent))

    def after_epoch(self, trainer) -> None:
        trainer.epoch_time = time.perf_counter() - self._epoch_start

    def after_train(self, trainer) -> None:
        trainer.train_time = time.perf_counter() - self._train_start


class EvalHook(Hook):
    """Every ``interval`` epochs (and after the last one) sets ``trainer.eval_metrics =
    evaluate_fn(trainer)``. ``evaluate_fn`` runs on every rank (distributed evaluation gathers on
    rank 0 and broadcasts the metrics back). ``interval=0`` never evaluates."""

    priority = 40

    def __init__(self, evaluate_fn: Callable, interval: int = 1):
        self.evaluate_fn = evaluate_fn
        self.interval = int(interval)

    def after_epoch(self, trainer) -> None:
        if self.interval <= 0:
            return
        if trainer.epochs_done % self.interval and trainer.epochs_done != trainer.max_epochs:
            return
        start = time.perf_counter()
        trainer.eval_metrics = self.evaluate_fn(trainer)
        trainer.eval_time = time.perf_counter() - start


class BestMetricHook(Hook):
    """Keeps ``trainer.best_metric`` (higher is better: every detkit metric is an AP) and sets
    ``trainer.improved`` in the epochs where it got better."""

    priority = 50

    def __init__(self, metric: str):
        self.metric = metric

    def before_train(self, trainer) -> None:
        if trainer.best_metric_name not in (None, self.metric):
            logger.warning("the checkpoint tracked the best %s; this run tracks %s, starting afresh",
                           trainer.best_metric_name, self.metric)
            trainer.best_metric = trainer.best_epoch = None
        trainer.best_metric_name = self.metric

    def after_epoch(self, trainer) -> None:
        metrics = trainer.eval_metrics
        if not metrics:
            return
        if self.metric not in metrics:
            available = ", ".join(k for k, v in metrics.items() if isinstance(v, (int, float)))
            raise ConfigError(f"eval.save_best: '{self.metric}' is not a computed metric "
                              f"(available: {available})")
        value = float(metrics[self.metric])
        if math.isnan(value):
            return
        if trainer.best_metric is None or value > trainer.best_metric:
            trainer.best_metric, trainer.best_epoch = value, trainer.epochs_done
            trainer.improved = True


class CheckpointHook(Hook):
    """Writes ``last.pth`` every ``interval`` epochs, after the last epoch, and whenever the best
    metric improved; keeps ``epoch_N.pth`` of the last ``keep_last`` saves (``None`` or -1: all,
    0: none) and ``best_<metric>.pth``. epoch/best files are hard links of last.pth when the file
    system allows (no extra disk space), copies otherwise. Register on rank 0 only."""

    priority = 60
    _EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth$")

    def __init__(self, work_dir: str | os.PathLike, interval: int = 1, keep_last: int | None = 3):
        self.work_dir = Path(work_dir)
        self.interval = max(1, int(interval))
        self.keep_last = None if keep_last is None or int(keep_last) < 0 else int(keep_last)

    def best_path(self, trainer) -> Path | None:
        name = trainer.best_metric_name
        return self.work_dir / f"best_{name}.pth" if name else None

    def before_train(self, trainer) -> None:
        best = self.best_path(trainer)
        if best is not None and best.is_file() and trainer.best_metric is not None:
            trainer.best_checkpoint = best

    def after_epoch(self, trainer) -> None:
        done = trainer.epochs_done
        due = done % self.interval == 0 or done == trainer.max_epochs
        if not (due or trainer.improved):
            return
        start = time.perf_counter()
        last = save_checkpoint(self.work_dir / "last.pth", trainer.state_dict())
        trainer.last_checkpoint = last
        saved = [last.name]
        if due and self.keep_last != 0:
            saved.append(link_or_copy(last, self.work_dir / f"epoch_{done}.pth").name)
            self._prune()
        if trainer.improved and self.best_path(trainer) is not None:
            trainer.best_checkpoint = link_or_copy(last, self.best_path(trainer))
            saved.append(trainer.best_checkpoint.name)
        logger.info("saved %s in %s (%.1f s)", ", ".join(saved), self.work_dir,
                    time.perf_counter() - start)

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        epochs = sorted(
            (int(m.group(1)), p) for p in self.work_dir.iterdir() if (m := self._EPOCH_FILE.match(p.name))
        )
        for _, path in epochs[: max(0, len(epochs) - self.keep_last)]:
            path.unlink(missing_ok=True)


class LoggerHook(Hook):
    """Reports training: a tqdm bar per epoch on a terminal (loss terms, lr, img/s, ETA), plain log
    lines every ``log_interval`` iterations otherwise; the lines always go to the log file.

    ``metrics_file`` (metrics.jsonl) gets one JSON record per logged window
    (``{"type": "train", "epoch", "iter", "lr", "loss", "loss_*", stats, "time", "data_time",
    "img_per_s", "eta_s"}``) and one per epoch (``{"type": "epoch", "epoch", "iter", "lr",
    epoch-mean losses, "skipped_batches", "epoch_time_s"}`` plus, when evaluated, the eval keys
    ``voc07_ap50 voc_ap50 coco_ap coco_ap50 coco_ap75`` (a classifier's: ``top1 top5``) and
    ``per_class``; ``skipped_samples`` when the loader counts unreadable samples it skipped). On resume, records after
    the checkpoint's iteration are dropped so the file reads like one uninterrupted run.
    ``trackers`` (:func:`detkit.engine.loggers.build_trackers`: TensorBoard, MLflow, W&B) get every
    record too, and upload the run's plots when training ends. Register on rank 0 only.
    """

    priority = 80

    def __init__(self, log_interval: int = 10, metrics_file: str | os.PathLike | None = None,
                 progress_bar: bool | None = None, trackers: Sequence = ()):
        from detkit.engine.loggers import TrackerSet

        self.log_interval = max(1, int(log_interval))
        self.metrics_file = Path(metrics_file) if metrics_file else None
        self.progress_bar = stderr_is_terminal() if progress_bar is None else bool(progress_bar)
        self.trackers = TrackerSet(trackers)
        self._bar = None
        self._jsonl = None

    # -- lifecycle -------------------------------------------------------------------------------
    def before_train(self, trainer) -> None:
        if self.metrics_file is not None:
            self._jsonl = _open_metrics(self.metrics_file, keep_until_iter=trainer.iter)
        self.trackers.start()
        logger.info("training epochs %d..%d, %d iterations per epoch, %d in total",
                    trainer.start_epoch + 1, trainer.max_epochs, trainer.iters_per_epoch, trainer.max_iters)

    def before_epoch(self, trainer) -> None:
        trainer.scalars.clear_window()
        trainer.scalars.clear_epoch()
        if self.progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=trainer.iters_per_epoch, file=sys.stderr, dynamic_ncols=True,
                             desc=f"epoch {trainer.epoch + 1}/{trainer.max_epochs}", leave=True)

    def after_iter(self, trainer) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(self._bar_text(trainer), refresh=False)
        last = trainer.inner_iter + 1 == trainer.iters_per_epoch
        if (trainer.inner_iter + 1) % self.log_interval and not last:
            return
        window = trainer.scalars.window_mean()
        images = trainer.scalars.window_sum("images")
        time_sum = trainer.scalars.window_sum("time")
        record = {"type": "train", "epoch": trainer.epoch + 1, "iter": trainer.iter + 1,
                  "lr": trainer.optimizer.param_groups[0]["lr"]}
        record.update({k: v for k, v in window.items() if k != "images"})
        record["img_per_s"] = images / time_sum if time_sum > 0 else float("nan")
        record["eta_s"] = getattr(trainer, "eta_seconds", float("nan"))
        if trainer.device.type == "cuda":
            record["memory_mb"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
        trainer.scalars.clear_window()
        self._write(record)
        # On a terminal the bar shows this; the log file always gets the line.
        logger.info(self._line(trainer, record), extra={"console": not self.progress_bar})

    def after_epoch(self, trainer) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        means = trainer.scalars.epoch_mean()
        record = {"type": "epoch", "epoch": trainer.epochs_done, "iter": trainer.iter,
                  "lr": trainer.optimizer.param_groups[0]["lr"]}
        record.update({k: v for k, v in means.items() if k.startswith("loss")})
        record["skipped_batches"] = trainer.skipped_this_epoch
        # samples the loader could not read and skipped (bad_sample="skip"), if it counts them
        bad = getattr(trainer.data_loader, "num_skipped", None)
        if isinstance(bad, int):
            record["skipped_samples"] = bad
        record["epoch_time_s"] = getattr(trainer, "epoch_time", float("nan"))
        metrics = trainer.eval_metrics or {}
        for key in EPOCH_KEYS:
            if key in metrics:
                record[key] = metrics[key]
        if "per_class" in metrics:
            record["per_class"] = metrics["per_class"]
        if trainer.best_metric is not None:
            record["best_" + str(trainer.best_metric_name)] = trainer.best_metric
        self._write(record)
        losses = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("loss"))
        evals = "  ".join(f"{k} {metrics[k]:.4f}" for k in EPOCH_KEYS if _is_number(metrics.get(k)))
        best = (f"  (best {trainer.best_metric_name} {trainer.best_metric:.4f} at epoch {trainer.best_epoch})"
                if trainer.best_metric is not None else "")
        logger.info("epoch %d/%d done in %s: %s%s%s%s", trainer.epochs_done, trainer.max_epochs,
                    _format_seconds(record["epoch_time_s"]), losses, "  |  " if evals else "", evals, best)
        if trainer.skipped_this_epoch:
            logger.warning("epoch %d: skipped %d batch(es) with non-finite loss", trainer.epochs_done,
                           trainer.skipped_this_epoch)

    def after_train(self, trainer) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._jsonl is not None:
            try:
                self._jsonl.close()
            except OSError:  # a full disk: already reported by the write that failed
                pass
        self._jsonl = None
        self.trackers.finish(success=bool(getattr(trainer, "completed", False)))

    # -- formatting ------------------------------------------------------------------------------
    def _write(self, record: dict) -> None:
        if self._jsonl is not None:
            try:
                self._jsonl.write(json.dumps(to_jsonable(record)) + "\n")
                self._jsonl.flush()
            except OSError as exc:  # a full disk: one line naming the file, not a traceback
                raise output_error(self.metrics_file, exc) from exc
        self.trackers.log_record(record)

    @staticmethod
    def _bar_text(trainer) -> str:
        values = trainer.log_values
        parts = [f"{k[5:] if k.startswith('loss_') else k} {v:.3f}" for k, v in values.items()
                 if k.startswith("loss")]
        if "lr" in values:
            parts.append(f"lr {values['lr']:.2e}")
        window = trainer.scalars.window_sum("time")
        if window > 0:
            parts.append(f"{trainer.scalars.window_sum('images') / window:.1f} img/s")
        parts.append(f"eta {_format_seconds(getattr(trainer, 'eta_seconds', float('nan')))}")
        return " ".join(parts)

    @staticmethod
    def _line(trainer, record: dict) -> str:
        width = len(str(trainer.iters_per_epoch))
        parts = [f"epoch [{trainer.epoch + 1}/{trainer.max_epochs}][{trainer.inner_iter + 1:>{width}}/"
                 f"{trainer.iters_per_epoch}]", f"lr {record['lr']:.3e}",
                 f"eta {_format_seconds(record['eta_s'])}"]
        if "time" in record:
            parts.append(f"time {record['time']:.3f} (data {record.get('data_time', 0):.3f})")
        if _is_number(record.get("img_per_s")) and math.isfinite(record["img_per_s"]):
            parts.append(f"{record['img_per_s']:.1f} img/s")
        parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("loss")]
        skip = {"type", "epoch", "iter", "lr", "time", "data_time", "img_per_s", "eta_s", "memory_mb"}
        parts += [f"{k} {v:.4g}" for k, v in record.items()
                  if k not in skip and not k.startswith("loss") and _is_number(v)]
        if "memory_mb" in record:
            parts.append(f"mem {record['memory_mb']:.0f}M")
        return "  ".join(parts)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _open_metrics(path: Path, keep_until_iter: int):
    """Open metrics.jsonl for appending; a fresh run empties it, a resumed one drops the records
    written after the checkpoint it resumed from (they belong to the interrupted attempt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_until_iter <= 0 or not path.exists():
        return open(path, "w", encoding="utf-8")
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(record, dict) and int(record.get("iter", 0)) <= keep_until_iter:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))
    return open(path, "a", encoding="utf-8")


class PlotHook(Hook):
    """Redraws plots/loss.png, plots/map.png (a classifier: accuracy.png) and plots/lr.png from
    metrics.jsonl after every epoch, and plots/confusion.png when the epoch's evaluation holds a
    confusion matrix (a classifier's). A plotting failure is logged and never stops training.
    Register on rank 0 only."""

    priority = 90

    def __init__(self, metrics_file: str | os.PathLike, out_dir: str | os.PathLike):
        self.metrics_file = Path(metrics_file)
        self.out_dir = Path(out_dir)
        self._warned = False

    def after_epoch(self, trainer) -> None:
        from detkit.plots.training import plot_confusion_matrix, plot_metrics

        try:
            plot_metrics(self.metrics_file, self.out_dir)
            metrics = trainer.eval_metrics or {}
            if metrics.get("confusion_matrix") is not None:
                plot_confusion_matrix(metrics["confusion_matrix"], trainer.extra_state.get("class_names"),
                                      self.out_dir / "confusion.png",
                                      title=f"confusion matrix after epoch {trainer.epochs_done}")
        except Exception as exc:  # noqa: BLE001 - plots are a convenience, training goes on
            if not self._warned:
                logger.warning("could not draw plots in %s: %s: %s", self.out_dir, type(exc).__name__, exc)
                self._warned = True


class EvalPlotsHook(Hook):
    """The diagnostics of a run, into ``out_dir`` (``<work_dir>/plots``):

    * before training: the training split's box statistics, ``data_train.png``
      (:func:`detkit.plots.data.plot_box_statistics`; needs ``load_annotation``);
    * after the last epoch: the evaluation plots of the final model from the images the last
      evaluation collected in ``evaluator`` (:func:`detkit.plots.evaluation.write_evaluator_plots`:
      PR / F1 curves, confusion matrices, per_class.csv, report.txt, validation mosaics of ``val_set``).

    Skipped when training did not complete or nothing was evaluated. A failure is logged and never
    stops training. Register on rank 0 only (where the evaluator holds every image).
    """

    priority = 70

    def __init__(self, out_dir: str | os.PathLike, evaluator=None, val_set=None, train_set=None, *,
                 iou_threshold: float = 0.5, score_threshold: float = 0.25):
        self.out_dir = Path(out_dir)
        self.evaluator, self.val_set, self.train_set = evaluator, val_set, train_set
        self.iou_threshold, self.score_threshold = iou_threshold, score_threshold

    def _guarded(self, what: str, draw: Callable) -> None:
        try:
            draw()
        except Exception as exc:  # noqa: BLE001 - plots are a convenience, training goes on
            logger.warning("could not draw the %s in %s: %s: %s", what, self.out_dir, type(exc).__name__, exc)

    def before_train(self, trainer) -> None:
        if self.train_set is None:
            return

        def draw():
            from detkit.plots.data import plot_dataset_statistics

            plot_dataset_statistics(self.train_set, self.out_dir, "train")

        self._guarded("training data statistics", draw)

    def after_train(self, trainer) -> None:
        if not getattr(trainer, "completed", False) or self.evaluator is None or not self.evaluator.num_images:
            return

        def draw():
            from detkit.plots.evaluation import write_evaluator_plots

            written = write_evaluator_plots(self.evaluator, self.out_dir, dataset=self.val_set,
                                            metrics=trainer.eval_metrics, iou_threshold=self.iou_threshold,
                                            score_threshold=self.score_threshold)
            logger.info("evaluation of the final model: %s\n%s", self.out_dir, written["report_text"].rstrip())

        self._guarded("evaluation plots", draw)
