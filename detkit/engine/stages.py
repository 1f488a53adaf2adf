"""Training stages after the training loop, resumable: for detectors fitted in several steps (the
classic R-CNN: fine-tune, then features, SVMs, box regressors).

A detector class that needs them names a function in its ``training_stages`` attribute
(``"package.module:function"``, imported when training starts, as entry points are). The function
takes a :class:`StageContext` and returns the list of :class:`Stage` to run in order. ``detkit train``
then adds a :class:`StagesHook`, which runs the stages once the training loop has completed every
epoch (a fresh run, or one resumed with ``--resume``, also one whose loop had already finished).

Resuming. ``<work dir>/stages.json`` records every finished stage (seconds, summary) with a
fingerprint of the fine-tuned network. After each stage the model, with whatever the stage fitted
into it, is saved to ``last.pth`` *before* the stage is marked finished, so an interruption at any
point loses at most the running stage, and a resumed run skips every finished one. When the network
changed (more epochs trained after the stages ran), the recorded stages no longer apply and all run
again. A stage that can resume its own work halfway (the feature cache) does so by itself.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detkit.checkpoint import save_checkpoint, unwrap_model
from detkit.engine.hooks import Hook
from detkit.errors import ConfigError
from detkit.jsonio import write_json

__all__ = ["Stage", "StageContext", "StagesHook", "stage_hooks", "network_fingerprint", "stage_seconds",
           "STATE_FILE"]

logger = logging.getLogger("detkit")

STATE_FILE = "stages.json"
EPOCH_TIMES_FILE = "finetune_epochs.json"  # {epoch: [wall seconds, CPU seconds]} of the training loop
_STATE_FORMAT = "detkit-stages"


@dataclass
class Stage:
    """One step: ``run(context)`` does the work and returns a JSON-able summary."""

    name: str
    run: Callable[[StageContext], Mapping]


@dataclass
class StageContext:
    """What the stages work with: the (unwrapped) model on ``device``, the resolved config, the run
    directory, the trainer (its state is saved after each stage), ``results`` (summaries of the
    stages finished so far, by name), ``seconds`` and ``cpu_seconds`` (their wall-clock and CPU
    durations, and ``finetune``: the loop's)."""

    model: torch.nn.Module
    cfg: dict
    work_dir: Path
    device: torch.device
    trainer: Any = None
    results: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    cpu_seconds: dict = field(default_factory=dict)


def network_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the weights the stages start from (``model.network_state()`` when it has one, else
    the whole state dict)."""
    state = model.network_state() if hasattr(model, "network_state") else model.state_dict()
    digest = hashlib.sha1()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class StagesHook(Hook):
    """Runs ``stages`` after a completed training loop, skipping those ``stages.json`` marks finished."""

    priority = 95  # after every built-in after_train (timer, logger, plots): the loop is over

    def __init__(self, make_stages: Callable[[StageContext], list[Stage]], context: StageContext):
        self.make_stages = make_stages
        self.context = context
        self._cpu_start = None
        self._epoch_start = None

    def before_train(self, trainer) -> None:
        # CPU seconds of this process (all its threads): what a stage costs whatever else the machine
        # runs; wall-clock times on a shared machine mostly measure the others.
        self._cpu_start = time.process_time()

    def before_epoch(self, trainer) -> None:
        self._epoch_start = (time.perf_counter(), time.process_time())

    def after_epoch(self, trainer) -> None:
        # Each epoch's wall-clock and CPU seconds (its evaluation included: this hook runs last), kept
        # in the work dir by epoch number, so that a fine-tuning interrupted and resumed is timed in
        # full, not only the epochs of the last process.
        if self._epoch_start is None:
            return
        path = self.context.work_dir / EPOCH_TIMES_FILE
        times = _read_json(path)
        times[str(trainer.epoch + 1)] = [time.perf_counter() - self._epoch_start[0],
                                         time.process_time() - self._epoch_start[1]]
        write_json(path, times)

    def after_train(self, trainer) -> None:
        if not trainer.completed:
            return  # the loop failed or was stopped; a resumed run gets here
        context = self.context
        context.trainer = trainer
        context.model = unwrap_model(trainer.model)
        path = context.work_dir / STATE_FILE
        fingerprint = network_fingerprint(context.model)
        state = _read_state(path)
        if state.get("fingerprint") != fingerprint:
            if state.get("stages"):
                logger.warning("the fine-tuned network differs from the one the recorded stages used; "
                               "running every stage again")
            state = {"format": _STATE_FORMAT, "fingerprint": fingerprint, "stages": {}}
        # The loop's time: the sum of its epochs' when every epoch was timed (across resumed processes),
        # else the loop of this process (a resumed run keeps the first record; a loop that had no epoch
        # left to run measured nothing).
        epochs = _read_json(context.work_dir / EPOCH_TIMES_FILE)
        timed = [epochs.get(str(e)) for e in range(1, trainer.epochs_done + 1)]
        if trainer.epochs_done and all(isinstance(t, list) and len(t) == 2 for t in timed):
            state["finetune_seconds"] = sum(t[0] for t in timed)
            state["finetune_cpu_seconds"] = sum(t[1] for t in timed)
        ran = trainer.epochs_done > getattr(trainer, "start_epoch", 0)
        state.setdefault("finetune_seconds", getattr(trainer, "train_time", None) if ran else None)
        state.setdefault("finetune_cpu_seconds",
                         time.process_time() - self._cpu_start if ran and self._cpu_start is not None else None)
        context.seconds["finetune"] = state["finetune_seconds"]
        context.cpu_seconds["finetune"] = state["finetune_cpu_seconds"]
        write_json(path, state)
        done = state["stages"]
        for stage in self.make_stages(context):
            if stage.name in done:
                logger.info("stage %s: finished earlier (%.1f s), skipped", stage.name, done[stage.name]["seconds"])
                context.results[stage.name] = done[stage.name]["summary"]
                context.seconds[stage.name] = done[stage.name]["seconds"]
                context.cpu_seconds[stage.name] = done[stage.name].get("cpu_seconds")
                continue
            logger.info("stage %s: starting", stage.name)
            start, cpu_start = time.perf_counter(), time.process_time()
            summary = dict(stage.run(context) or {})
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            context.results[stage.name] = summary
            context.seconds[stage.name] = seconds
            context.cpu_seconds[stage.name] = cpu_seconds
            # The fitted parts first, then the mark: an interruption in between only repeats the stage.
            trainer.last_checkpoint = save_checkpoint(context.work_dir / "last.pth", trainer.state_dict())
            done[stage.name] = {"seconds": seconds, "cpu_seconds": cpu_seconds, "summary": summary}
            write_json(path, state)
            logger.info("stage %s: finished in %.1f s (%.1f s of CPU)", stage.name, seconds, cpu_seconds)


def stage_seconds(work_dir: Path) -> dict[str, float]:
    """Wall-clock seconds of each finished stage of the run in ``work_dir`` (``{}`` for a detector
    trained by the loop alone, or an unreadable ``stages.json``); ``detkit kfold`` counts them as
    training time."""
    state = _read_json(Path(work_dir) / STATE_FILE, "its stage times are left out")
    if state.get("format") != _STATE_FORMAT:
        return {}
    return {name: float(entry["seconds"]) for name, entry in (state.get("stages") or {}).items()
            if isinstance(entry, dict) and isinstance(entry.get("seconds"), (int, float))}


def _read_state(path: Path) -> dict:
    state = _read_json(path, "running every stage again")
    return state if state.get("format") == _STATE_FORMAT else {}


def _read_json(path: Path, consequence: str = "ignored") -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("%s is unreadable; %s", path, consequence)
        return {}
    return data if isinstance(data, dict) else {}


def stage_hooks(model: torch.nn.Module, **context) -> list[Hook]:
    """The :class:`StagesHook` of ``model`` (``[]`` for a detector trained by the loop alone)."""
    target = getattr(unwrap_model(model), "training_stages", None)
    if not target:
        return []
    module_name, _, function = str(target).partition(":")
    try:
        make_stages = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{type(model).__name__}.training_stages = {target!r} cannot be imported: {exc}") from exc
    return [StagesHook(make_stages, StageContext(model=unwrap_model(model), **context))]
