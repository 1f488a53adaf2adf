"""The training loop: a small :class:`Trainer` plus hooks (``detkit.engine.hooks``).

The loop, in the spirit of detectron2's ``TrainerBase``::

    before_train
    for epoch in range(start_epoch, max_epochs):
        before_epoch
        for batch in loader:
            before_iter
            run_step(batch)          # forward, loss sum, NaN guard, backward, after_backward, step
            after_iter
        after_epoch                  # evaluation, best tracking, checkpoints, logs, plots
    after_train                      # always runs, also when training fails

Hooks run in ascending ``priority`` for every event (ties keep registration order); the built-in
priorities are listed in :mod:`detkit.engine.hooks`.

State lives on the trainer and is what hooks read: ``epoch`` (0-based index of the running epoch),
``inner_iter`` (index inside it), ``iter`` (global index of the running iteration; equals the number
of completed iterations between iterations), ``epochs_done``, ``max_epochs``, ``iters_per_epoch``,
``max_iters``, ``best_metric`` / ``best_metric_name`` / ``best_epoch``, ``eval_metrics`` (the latest
evaluation, or None in an epoch without one), ``log_values`` (this iteration's loss terms, stats
and lr), ``scalars`` (running averages for the loggers), ``skipped_batches``.

One step:

* the detector returns a dict; keys starting with ``loss_`` are summed into the loss, every term is
  logged, other keys are logged as statistics;
* the NaN guard checks the summed loss and the model's floating-point buffers (batch-norm running
  statistics, which a diverging run can turn inf while the loss is still finite) every iteration
  *before* backward (it lives in the step rather than in a hook because skipping a batch means not
  running backward at all): with ``nan_policy="raise"`` a :class:`NonFiniteLossError` names the
  iteration, the loss terms (or the buffer) and the image ids of the batch; with ``"skip"`` the
  batch is dropped (its buffer updates reverted; with ``accumulate > 1`` together with the
  gradients its window gathered so far), counted and logged. Under DDP all ranks agree on the
  decision, so none waits for a gradient the others never send. A non-finite gradient norm (with
  ``grad_clip`` set, fp32/bf16) is handled by the same policy;
* after each epoch, before its evaluation and checkpoint, every parameter and buffer is checked:
  a model that is no longer finite stops the run under either policy (a batch can be skipped, a
  diverged model cannot), so a non-finite model is never saved and the last good checkpoint stays;
* gradient accumulation (``accumulate=N``) scales each loss by 1/N and steps the optimiser every N
  iterations (the last window of an epoch is flushed and scaled by its real length); under DDP the
  gradient all-reduce is skipped on the non-stepping iterations (``no_sync``);
* mixed precision runs the forward pass under autocast; fp16 uses a GradScaler (which skips steps
  with inf gradients itself);
* ``grad_clip`` clips the global L2 norm of the gradients (after unscaling).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import torch

from detkit import checkpoint as ckpt_io
from detkit.engine.dist import all_true, get_rank
from detkit.engine.optim import resolve_amp
from detkit.errors import CheckpointError, ConfigError, DetkitError
from detkit.schema import check_value
from detkit.seeding import derive_seed, seed_everything, set_loader_epoch

__all__ = ["Trainer", "ScalarBuffer", "NonFiniteLossError", "move_targets"]

logger = logging.getLogger(__name__)

HOOK_EVENTS = ("before_train", "before_epoch", "before_iter", "after_backward", "after_iter",
               "after_epoch", "after_train")


class NonFiniteLossError(DetkitError, FloatingPointError):
    """The loss, gradient norm or batch-norm statistics became NaN or infinite (``nan_policy="raise"``),
    or the weights themselves did (either policy)."""


class ScalarBuffer:
    """Running sums of named scalars over two spans: the current logging window and the epoch."""

    def __init__(self):
        self._window: dict[str, list] = defaultdict(lambda: [0.0, 0])
        self._epoch: dict[str, list] = defaultdict(lambda: [0.0, 0])

    def update(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            for store in (self._window, self._epoch):
                entry = store[name]
                entry[0] += float(value)
                entry[1] += 1

    def window_sum(self, name: str) -> float:
        return self._window[name][0] if name in self._window else 0.0

    def window_mean(self) -> dict[str, float]:
        return {k: s / n for k, (s, n) in self._window.items() if n}

    def epoch_mean(self) -> dict[str, float]:
        return {k: s / n for k, (s, n) in self._epoch.items() if n}

    def clear_window(self) -> None:
        self._window.clear()

    def clear_epoch(self) -> None:
        self._epoch.clear()


def move_targets(targets: Sequence[Mapping], device: torch.device) -> list[dict]:
    """Tensors of each target dict to ``device`` (meta and ids stay as they are)."""
    return [
        {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
        for t in targets
    ]


class Trainer:
    """Runs ``max_epochs`` epochs of ``data_loader`` through ``model`` and calls the hooks.

    ``model`` is already on ``device`` (and wrapped in DDP / torch.compile if wanted); ``optimizer``
    was built over its parameters. ``extra_state`` (class names, the resolved config) is stored in
    every checkpoint. ``seed``: every epoch reseeds the global torch / numpy / python RNGs from
    (seed, epoch, rank), so augmentation and shuffling of epoch ``e`` do not depend on what ran
    before it — a resumed run draws exactly what an uninterrupted one would.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data_loader: Iterable,
                 *, max_epochs: int, device: torch.device | str = "cpu", scheduler=None,
                 hooks: Iterable = (), grad_clip: float | None = None, accumulate: int = 1,
                 amp: bool = False, amp_dtype: str = "bf16", channels_last: bool = False,
                 nan_policy: str = "raise", seed: int | None = None,
                 extra_state: Mapping | None = None):
        # The checks of the config schema (values from `detkit train` passed them already; this is
        # for Python code that builds a Trainer itself).
        for key, value in (("accumulate", accumulate), ("grad_clip", grad_clip), ("nan_policy", nan_policy)):
            check_value("train", key, value)
        self.model = model
        self.optimizer = optimizer
        self.data_loader = data_loader
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.max_epochs = int(max_epochs)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.accumulate = int(accumulate)
        self.amp = resolve_amp(amp, amp_dtype, self.device)
        self.scaler = torch.amp.GradScaler(self.amp.device_type if self.amp.device_type == "cuda" else "cpu",
                                           enabled=self.amp.use_scaler)
        self.channels_last = bool(channels_last)
        self.nan_policy = nan_policy
        self.seed = seed
        self.extra_state = dict(extra_state or {})

        self.iters_per_epoch = len(data_loader)
        if self.iters_per_epoch == 0:
            raise ConfigError("the training loader yields no batches (empty data set, or drop_last "
                              "with fewer images than train.batch_size)")
        self.max_iters = self.max_epochs * self.iters_per_epoch
        self.start_epoch = 0
        self.epoch = 0
        self.epochs_done = 0
        self.inner_iter = 0
        self.iter = 0
        self.best_metric: float | None = None
        self.best_metric_name: str | None = None
        self.best_epoch: int | None = None
        self.eval_metrics: dict | None = None
        self.improved = False
        self.skipped_batches = 0
        self.skipped_this_epoch = 0
        self.log_values: dict[str, float] = {}
        self.batch_size = 0
        self.scalars = ScalarBuffer()
        self.completed = False
        self.last_checkpoint = None
        self.best_checkpoint = None
        self._pending_rng = None
        self._hooks: list = []
        self.register_hooks(hooks)

    # -- hooks -----------------------------------------------------------------------------------
    def register_hooks(self, hooks: Iterable) -> None:
        """Add hooks; all hooks are kept sorted by ``priority`` (stable for equal priorities)."""
        for hook in hooks:
            if hook is None:
                continue
            missing = [e for e in HOOK_EVENTS if not callable(getattr(hook, e, None))]
            if missing:
                raise TypeError(f"{type(hook).__name__} is not a hook: no {', '.join(missing)} "
                                "(derive from detkit.engine.hooks.Hook)")
            self._hooks.append(hook)
        self._hooks.sort(key=lambda h: getattr(h, "priority", 50))

    @property
    def hooks(self) -> list:
        return list(self._hooks)

    def call_hooks(self, event: str) -> None:
        for hook in self._hooks:
            getattr(hook, event)(self)

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> None:
        """Run from ``start_epoch`` (0, or what :meth:`load_state_dict` restored) to ``max_epochs``."""
        self.completed = False
        self.iter = self.start_epoch * self.iters_per_epoch
        self.optimizer.zero_grad(set_to_none=True)
        try:
            self.call_hooks("before_train")
            if self._pending_rng is not None:
                # Restored after the hooks and model building so nothing else draws from them.
                ckpt_io.set_rng_state(self._pending_rng)
                self._pending_rng = None
            for self.epoch in range(self.start_epoch, self.max_epochs):
                self._train_epoch()
            self.completed = True
        finally:
            self.call_hooks("after_train")

    def _train_epoch(self) -> None:
        if self.seed is not None:
            seed_everything(derive_seed(self.seed, self.epoch, get_rank()))
        set_loader_epoch(self.data_loader, self.epoch, self.seed)
        self.model.train()
        self.eval_metrics = None
        self.improved = False
        self.skipped_this_epoch = 0
        self.call_hooks("before_epoch")
        self.inner_iter = 0
        for self.inner_iter, batch in enumerate(self.data_loader):
            self.call_hooks("before_iter")
            self.run_step(batch)
            self.call_hooks("after_iter")
            self.iter += 1
        expected_end = (self.epoch + 1) * self.iters_per_epoch
        if self.iter != expected_end:
            # The loader yielded fewer batches than len() (e.g. a batch of unreadable samples
            # dropped): keep the schedule aligned to epochs, and do not let an unfinished
            # accumulation window leak into the next epoch.
            logger.warning("epoch %d: the loader yielded %d of %d batches", self.epoch + 1,
                           self.iters_per_epoch - (expected_end - self.iter), self.iters_per_epoch)
            self.optimizer.zero_grad(set_to_none=True)
            self.iter = expected_end
        if self.skipped_this_epoch and self.skipped_this_epoch >= self.iters_per_epoch:
            raise NonFiniteLossError(
                f"epoch {self.epoch + 1}: every batch had a non-finite loss and was skipped; "
                "training has diverged (lower the learning rate, check the data)"
            )
        self._check_weights_finite()
        self.epochs_done = self.epoch + 1
        self.call_hooks("after_epoch")

    # -- one iteration ---------------------------------------------------------------------------
    def _window(self) -> tuple[bool, int]:
        """(optimiser steps after this iteration, number of iterations in its accumulation window)."""
        n, i, last = self.accumulate, self.inner_iter, self.iters_per_epoch
        start = (i // n) * n
        size = min(n, last - start)
        return (i - start == size - 1), size

    def run_step(self, batch) -> None:
        images, targets = batch
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = move_targets(targets, self.device)
        self.batch_size = int(images.shape[0])
        step_now, window = self._window()

        no_sync = getattr(self.model, "no_sync", None)
        sync_ctx = no_sync() if (no_sync is not None and not step_now) else contextlib.nullcontext()
        buffers = [b for b in self.model.buffers() if b.is_floating_point()]
        # Under "skip" a batch that corrupts the batch-norm statistics is undone like one with a NaN
        # loss: its buffer updates must be reverted too.
        saved_buffers = [b.detach().clone() for b in buffers] if self.nan_policy == "skip" else None
        with sync_ctx:
            with torch.autocast(self.amp.device_type, dtype=self.amp.dtype, enabled=self.amp.enabled):
                outputs = self.model(images, targets)
            losses, stat_tensors, stats = self._split_outputs(outputs)
            total = sum(losses.values())
            # Running statistics can turn inf/NaN while the loss (computed with batch statistics) is
            # still finite, so the guard checks them too.
            buffers_finite = (torch.isfinite(torch.cat([b.detach().reshape(-1).float().to(total.device)
                                                        for b in buffers])).all()
                              if buffers else torch.ones((), device=total.device))
            # One device->host copy for every logged number (a GPU sync per value would stall).
            values = torch.stack([total.detach().float(), *(v.detach().float() for v in losses.values()),
                                  *(v.detach().float().to(total.device) for v in stat_tensors.values()),
                                  buffers_finite.float()]).tolist()
            stats.update(zip(stat_tensors, values[1 + len(losses):-1]))
            buffers_ok = values[-1] == 1.0
            values = values[: 1 + len(losses)]
            if not all_true(math.isfinite(values[0]) and buffers_ok, self.device):
                self.log_values = {}
                what = "loss"
                if math.isfinite(values[0]):
                    bad = ckpt_io.first_non_finite(dict(ckpt_io.unwrap_model(self.model).named_buffers()))
                    what = f"model statistics ('{bad[0]}' became {bad[1]})" if bad else \
                        "model statistics (on another process)"
                if saved_buffers is not None:
                    with torch.no_grad():
                        for buffer, saved in zip(buffers, saved_buffers):
                            buffer.copy_(saved)
                self._non_finite(what, dict(zip(["loss", *losses], values)), targets)
                return
            self.scaler.scale(total / window).backward()
        self.call_hooks("after_backward")

        lr = self.optimizer.param_groups[0]["lr"]
        if step_now:
            grad_norm = self._optimizer_step(targets)
            if grad_norm is not None:
                stats["grad_norm"] = grad_norm
        self.log_values = {"loss": values[0], **dict(zip(losses, values[1:])), **stats, "lr": lr}
        self.scalars.update({k: v for k, v in self.log_values.items() if k != "lr"})

    def _optimizer_step(self, targets) -> float | None:
        """Unscale, clip, step, zero the gradients; returns the gradient norm when clipping."""
        norm_value = None
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            if not self.scaler.is_enabled():
                # With a GradScaler inf gradients are expected now and then; it skips the step.
                if not all_true(bool(torch.isfinite(norm)), self.device):
                    self._non_finite("gradient norm", {"grad_norm": float(norm)}, targets)
                    return None
            norm_value = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm_value

    def _split_outputs(self, outputs) -> tuple[dict, dict, dict]:
        """(loss terms, statistics that are tensors, statistics that are numbers)."""
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"the detector returned a {type(outputs).__name__} in training mode; it must return "
                "a dict of named loss terms ('loss_*' keys are summed)"
            )
        losses, stat_tensors, stats = {}, {}, {}
        for key, value in outputs.items():
            if key.startswith("loss_"):
                if not (isinstance(value, torch.Tensor) and value.numel() == 1):
                    raise TypeError(f"the detector's '{key}' must be a scalar tensor, got "
                                    f"{type(value).__name__} {getattr(value, 'shape', '')}")
                losses[key] = value.reshape(())
            elif isinstance(value, torch.Tensor) and value.numel() == 1:
                stat_tensors[key] = value.reshape(())
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                stats[key] = float(value)
        if not losses:
            raise TypeError(
                f"the detector returned no 'loss_*' terms (keys: {', '.join(outputs) or 'none'})"
            )
        return losses, stat_tensors, stats

    def _check_weights_finite(self) -> None:
        """Before an epoch's evaluation and checkpoint: weights or statistics that went NaN/inf (with
        either nan_policy: a batch can be skipped, a diverged model cannot) stop the run, so no
        checkpoint of them is written and the last good one stays the newest."""
        bad = ckpt_io.first_non_finite(ckpt_io.unwrap_model(self.model).state_dict())
        if bad is not None:
            raise NonFiniteLossError(
                f"after epoch {self.epoch + 1}: the model's '{bad[0]}' holds {bad[1]} values: training "
                f"diverged; nothing of this epoch was saved ({self._last_good()}). Lower the learning "
                "rate or set train.grad_clip"
            )

    def _last_good(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint is {self.last_checkpoint}"

    def _non_finite(self, what: str, values: Mapping[str, float], targets) -> None:
        ids = [t.get("image_id") for t in targets]
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        where = (f"iteration {self.iter} (epoch {self.epoch + 1}, batch {self.inner_iter + 1}/"
                 f"{self.iters_per_epoch})")
        if self.nan_policy == "raise":
            raise NonFiniteLossError(
                f"non-finite {what} at {where}: {terms}; image ids in the batch: {ids}; "
                f"{self._last_good()}. Lower the learning rate, set train.grad_clip, check these "
                "images' annotations, or set train.nan_policy='skip' to drop such batches"
            )
        # Drop the gradients this accumulation window gathered so far too: with a bad gradient
        # they are poisoned, and a window never stepped must not leak into the next one.
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_batches += 1
        self.skipped_this_epoch += 1
        logger.warning("skipped batch with non-finite %s at %s: %s; image ids: %s (%d skipped so far)",
                       what, where, terms, ids, self.skipped_batches)

    # -- checkpoint state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs (weights-only-safe; see detkit.checkpoint)."""
        state = {
            "format": ckpt_io.CHECKPOINT_FORMAT,
            "version": ckpt_io.CHECKPOINT_VERSION,
            "model": ckpt_io.unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": int(self.epochs_done),
            "iter": int(self.iter),
            "best_metric": None if self.best_metric is None else float(self.best_metric),
            "best_metric_name": self.best_metric_name,
            "best_epoch": self.best_epoch,
            "skipped_batches": int(self.skipped_batches),
            "rng": ckpt_io.get_rng_state(),
            "meta": ckpt_io.checkpoint_meta(),
        }
        for key, value in self.extra_state.items():
            state.setdefault(key, value)
        return state

    def load_state_dict(self, state: Mapping, *, source: str = "checkpoint") -> None:
        """Restore a :meth:`state_dict` to continue training after its last completed epoch."""
        if not ckpt_io.is_full_checkpoint(state):
            raise CheckpointError(
                f"{source}: holds model weights only (no optimiser, epoch, ...), so training cannot "
                "resume from it; use it as initial weights (train.load_from) instead"
            )
        missing = [k for k in ("optimizer", "epoch", "iter") if state.get(k) is None]
        if missing:
            raise CheckpointError(f"{source}: not a training checkpoint (no {', '.join(missing)})")
        ckpt_io.load_model_weights(self.model, state, source=source)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{source}: the optimiser state does not fit this optimiser "
                                  f"(different train.optimizer or parameter groups?): {exc}") from exc
        self.start_epoch = self.epochs_done = int(state["epoch"])
        expected_iter = self.start_epoch * self.iters_per_epoch
        if int(state["iter"]) != expected_iter:
            logger.warning("%s: saved at iteration %d, but %d epochs of %d iterations make %d "
                           "(batch size or data changed?); continuing from iteration %d",
                           source, state["iter"], self.start_epoch, self.iters_per_epoch,
                           expected_iter, expected_iter)
        self.iter = expected_iter
        if self.scheduler is not None:
            if state.get("scheduler") is not None:
                self.scheduler.load_state_dict({**state["scheduler"], "last_iter": expected_iter})
            else:
                self.scheduler.set_iter(expected_iter)
        if state.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.best_metric = state.get("best_metric")
        self.best_metric_name = state.get("best_metric_name")
        self.best_epoch = state.get("best_epoch")
        self.skipped_batches = int(state.get("skipped_batches") or 0)
        self._pending_rng = state.get("rng")
        if self.start_epoch >= self.max_epochs:
            logger.warning("%s: already trained for %d epochs (train.epochs=%d); nothing left to do "
                           "(raise --epochs to train longer)", source, self.start_epoch, self.max_epochs)
