"""Experiment trackers: TensorBoard, MLflow and Weights & Biases, chosen by ``train.loggers``.

``train.loggers=["tensorboard", "mlflow"]`` (a name, or ``dict(type=NAME, **options)``) sends every
record the :class:`~detkit.engine.hooks.LoggerHook` writes to ``metrics.jsonl`` to each tracker,
through the tracker's own library (an optional extra: ``pip install 'detkit[mlflow]'``):

* per logging window ``train/<key>`` at step = iteration; per epoch ``epoch/<key>`` at step = epoch
  (losses, lr, the headline metrics, ``epoch/per_class/<class>``: the per-class AP50);
* at the start the resolved config (MLflow: flattened params ``train.optimizer.lr``; W&B: its config);
* at the end the run's plots (``plots/``), ``config.json`` and ``metrics.jsonl`` (MLflow: artifacts;
  W&B: images; TensorBoard: images under ``plots/``).

Options: ``tensorboard``: ``log_dir`` (default ``<work_dir>/tensorboard``). ``mlflow``:
``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``, else a SQLite store in ``<work_dir>/mlruns/mlflow.db``
with artifacts in ``<work_dir>/mlruns/artifacts``; MLflow 3 refuses its old plain-file store),
``experiment_name`` (``detkit``), ``run_name`` (the work dir's name), ``tags``. ``wandb``: ``project``
(``detkit``), ``entity``, ``name``, ``mode`` (``online`` / ``offline``; default: ``$WANDB_MODE``),
``tags``, ``init_kwargs`` (more ``wandb.init`` arguments).

A requested tracker whose package is not installed, or that cannot start (no credentials, server
unreachable), is a warning at the start and the run goes on without it; a tracker that fails later
is disabled with one warning. Trackers never stop training. Each ``detkit train`` (also a
``--resume``) is one tracker run. No torch import here: the config schema checks names with it.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from detkit.errors import ConfigError

__all__ = ["LOGGERS", "check_loggers", "build_trackers", "TrackerSet", "Tracker", "TensorBoardTracker",
           "MLflowTracker", "WandbTracker", "flatten_config", "record_scalars"]

logger = logging.getLogger(__name__)

# name -> (module that must import, the extra that installs it, options)
LOGGERS = {
    "tensorboard": ("torch.utils.tensorboard", "tensorboard", ("log_dir",)),
    "mlflow": ("mlflow", "mlflow", ("tracking_uri", "experiment_name", "run_name", "tags")),
    "wandb": ("wandb", "wandb", ("project", "entity", "name", "mode", "tags", "init_kwargs")),
}


def check_loggers(value, path: str = "train.loggers") -> list[dict]:
    """``train.loggers`` as ``[dict(type=NAME, **options)]``; ConfigError for anything else (an unknown
    name or option, with the closest one; a name listed twice)."""
    if value is None:
        return []
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise ConfigError(f"{path}: expected a list such as ['tensorboard', 'mlflow'], got {value!r}")
    specs, seen = [], set()
    for i, item in enumerate(value):
        where = f"{path}.{i}"
        spec = {"type": item} if isinstance(item, str) else dict(item) if isinstance(item, Mapping) else None
        if spec is None or not isinstance(spec.get("type"), str):
            raise ConfigError(f"{where}: expected a logger name or dict(type=NAME, ...), got {item!r}")
        name = spec["type"]
        if name not in LOGGERS:
            close = difflib.get_close_matches(name, list(LOGGERS), n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown logger {name!r}; choose from {', '.join(LOGGERS)}.{hint}")
        options = LOGGERS[name][2]
        for key in spec:
            if key != "type" and key not in options:
                close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{where}.{key}: unknown option of the {name} logger.{hint} "
                                  f"Options: {', '.join(options)}.")
        if name in seen:
            raise ConfigError(f"{where}: logger {name!r} is listed twice")
        seen.add(name)
        specs.append(spec)
    return specs


def flatten_config(cfg: Mapping, prefix: str = "") -> dict[str, str]:
    """``{'train.optimizer.lr': '0.01', 'data.classes': "['a', 'b']"}``: nested dicts joined with dots,
    every leaf (lists included) as its string."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = str(value)
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def record_scalars(record: Mapping) -> tuple[str, int, dict[str, float]]:
    """``(prefix, step, scalars)`` of a metrics.jsonl record: ``train`` records at their iteration,
    ``epoch`` records at their epoch; ``per_class`` becomes ``per_class/<class>``."""
    kind = record.get("type", "train")
    step = int(record["epoch"] if kind == "epoch" else record["iter"])
    scalars = {}
    for key, value in record.items():
        if key in ("type", "epoch", "iter"):
            continue
        if isinstance(value, Mapping):
            scalars.update({f"{key}/{k}": float(v) for k, v in value.items() if _number(v)})
        elif _number(value):
            scalars[key] = float(value)
    return kind, step, scalars


class Tracker:
    """One experiment tracker. ``start`` once, ``log_record`` for each metrics.jsonl record,
    ``finish`` once (uploading the run's plots and files)."""

    name = ""

    def __init__(self, work_dir: str | os.PathLike, config: Mapping | None = None, **options):
        self.work_dir = Path(work_dir)
        self.config = dict(config or {})
        self.options = options

    def start(self) -> None:
        raise NotImplementedError

    def log_record(self, record: Mapping) -> None:
        kind, step, scalars = record_scalars(record)
        if scalars:
            self.log_scalars({f"{kind}/{k}": v for k, v in scalars.items()}, step, record)

    def log_scalars(self, scalars: dict[str, float], step: int, record: Mapping) -> None:
        raise NotImplementedError

    def finish(self, success: bool) -> None:
        raise NotImplementedError

    def abandon(self) -> None:
        """Release what :meth:`start` took after a failure (the tracker is dropped); never raises."""

    def plot_files(self) -> list[Path]:
        plots = self.work_dir / "plots"
        return sorted(plots.rglob("*.png")) if plots.is_dir() else []


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(self.options.get("log_dir") or self.work_dir / "tensorboard")
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.last_step = 0
        # TensorBoard writes events on a background thread; a failed write (full or read-only disk)
        # ends that thread with an exception Python prints as a traceback, and the writer raises it
        # again on the next add_scalar / close, where TrackerSet reports it as one warning. The
        # thread's copy is kept off the console while this writer is open.
        self._excepthook = threading.excepthook
        previous = self._excepthook

        def quiet_writer_threads(args) -> None:
            if not type(args.thread).__module__.startswith("tensorboard."):
                previous(args)

        threading.excepthook = quiet_writer_threads

    def log_scalars(self, scalars, step, record) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.last_step = max(self.last_step, int(record.get("iter", 0)))

    def finish(self, success: bool) -> None:
        from detkit.data.io import read_image

        try:
            for path in self.plot_files():
                name = path.relative_to(self.work_dir / "plots").with_suffix("").as_posix()
                self.writer.add_image(f"plots/{name}", read_image(path), self.last_step, dataformats="HWC")
            self.writer.close()  # a failed last flush is reported (abandon's second close is a no-op)
        finally:
            self.abandon()

    def abandon(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - already reported by the write that failed
            pass
        finally:
            threading.excepthook = self._excepthook


class MLflowTracker(Tracker):
    name = "mlflow"
    _BAD_KEY = re.compile(r"[^\w\-. /:]")  # characters MLflow refuses in metric and param names

    def tracking_uri(self) -> str:
        uri = self.options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return str(uri)
        return "sqlite:///" + str((self.work_dir / "mlruns" / "mlflow.db").resolve())

    def start(self) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = self.tracking_uri()
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        name = str(self.options.get("experiment_name") or "detkit")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            # a local store keeps its artifacts beside it (not in ./mlartifacts of the current directory)
            artifacts = (self.work_dir / "mlruns" / "artifacts").resolve().as_uri() \
                if not (self.options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")) else None
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        tags = {"detkit.work_dir": str(self.work_dir.resolve()), **{str(k): str(v) for k, v in
                                                                    dict(self.options.get("tags") or {}).items()}}
        run = self.client.create_run(experiment_id, run_name=str(self.options.get("run_name") or
                                                                  self.work_dir.resolve().name), tags=tags)
        self.run_id = run.info.run_id
        params = [Param(self._key(k)[:250], v[:6000]) for k, v in flatten_config(self.config).items()]
        self.client.log_batch(self.run_id, params=params)
        logger.info("MLflow run %s in %s (experiment %s)", self.run_id, self.uri, name)

    def _key(self, key: str) -> str:
        return self._BAD_KEY.sub("_", key)

    def log_scalars(self, scalars, step, record) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(self._key(k), v, now, step) for k, v in scalars.items()])

    def finish(self, success: bool) -> None:
        try:
            if (self.work_dir / "plots").is_dir():
                self.client.log_artifacts(self.run_id, str(self.work_dir / "plots"), "plots")
            for name in ("config.json", "metrics.jsonl"):
                if (self.work_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.work_dir / name))
        finally:
            self.client.set_terminated(self.run_id, "FINISHED" if success else "FAILED")


class WandbTracker(Tracker):
    name = "wandb"

    def start(self) -> None:
        import wandb

        kwargs = dict(self.options.get("init_kwargs") or {})
        for key in ("project", "entity", "name", "mode", "tags"):
            if self.options.get(key) is not None:
                kwargs[key] = self.options[key]
        kwargs.setdefault("project", "detkit")
        kwargs.setdefault("name", self.work_dir.resolve().name)
        kwargs.setdefault("dir", str(self.work_dir))
        # detkit writes its own console log; W&B wrapping stdout / stderr would fight the progress bars
        kwargs.setdefault("settings", wandb.Settings(console="off"))
        self.run = wandb.init(config=self.config, **kwargs)
        # epoch metrics are drawn against the epoch, not the iteration (W&B's step must only grow)
        self.run.define_metric("epoch/epoch")
        self.run.define_metric("epoch/*", step_metric="epoch/epoch")

    def log_scalars(self, scalars, step, record) -> None:
        if record.get("type") == "epoch":
            scalars = {**scalars, "epoch/epoch": int(record["epoch"])}
        self.run.log(scalars, step=int(record["iter"]))

    def finish(self, success: bool) -> None:
        import wandb

        try:
            images = {f"plots/{p.stem}": wandb.Image(str(p)) for p in self.plot_files()}
            if images:
                self.run.log(images)
        finally:
            self.run.finish(exit_code=0 if success else 1)


_TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


def build_trackers(specs, work_dir: str | os.PathLike, config: Mapping | None = None) -> list[Tracker]:
    """The trackers ``train.loggers`` asks for whose library imports; a missing one is a warning."""
    trackers = []
    for spec in check_loggers(specs):
        name = spec["type"]
        module, extra, _ = LOGGERS[name]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            logger.warning("train.loggers: %s is requested but cannot be imported (%s); install it with "
                           "pip install 'detkit[%s]', or remove it from train.loggers. Training goes on "
                           "without %s.", name, exc, extra, name)
            continue
        options = {k: v for k, v in spec.items() if k != "type"}
        trackers.append(_TRACKERS[name](work_dir, config, **options))
    return trackers


class TrackerSet:
    """The started trackers of a run; a tracker that raises is dropped with one warning."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def _call(self, method: str, *args) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                what = "cannot start" if method == "start" else f"failed in {method}"
                logger.warning("%s logger %s, continuing without it: %s: %s", tracker.name, what,
                               type(exc).__name__, exc)
                self.trackers.remove(tracker)
                if method != "start":
                    tracker.abandon()

    def start(self) -> None:
        self._call("start")

    def log_record(self, record: Mapping) -> None:
        self._call("log_record", record)

    def finish(self, success: bool) -> None:
        self._call("finish", success)
        self.trackers = []
