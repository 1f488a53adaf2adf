"""Exponential moving average of the weights (``train.ema``), as a trainer hook.

The averaged weights are what a short, noisy schedule on a small data set should ship: they fit
boxes more steadily than the last iterate (ultralytics and mmdetection's YOLO recipes train with an
EMA for that reason). ``train.ema = dict(decay=0.9998, tau=2000)`` turns it on; ``None`` (the
default) leaves training as it was.

* **Update** (ultralytics' ``ModelEMA``): after every optimiser step that really happened (a
  post-step hook on the optimiser, so accumulation windows, skipped non-finite batches and fp16 steps
  the GradScaler skips do not count), with ``n`` the number of updates so far::

      d = decay * (1 - exp(-n / tau))          # warm-up ramp: early averages follow the model
      ema_param = d * ema_param + (1 - d) * param

  Buffers (BatchNorm running statistics, counters) are **copied** from the model, as mmengine's
  ``ExponentialMovingAverage`` does by default: they already are running averages. ``tau`` is in
  optimiser steps and the ramp reaches 95% of ``decay`` after ``3 tau`` of them: ultralytics'
  ``tau=2000`` suits its long schedules, while 30 epochs of 10 steps (raccoon at batch 16) need a
  ``tau`` of tens of steps and a ``decay`` whose horizon ``1 / (1 - decay)`` is a few epochs.
* **Evaluation** during training scores the averaged weights (the trainer's ``eval_model``).
* **Checkpoints** (mmengine's swap): ``model`` holds the **averaged** weights, so every consumer of
  a checkpoint (``detkit eval``, ``detkit infer``, export, ``train.load_from``, best_<metric>.pth)
  uses them without knowing about EMA; the entry ``ema`` holds ``train_model`` (the weights the
  optimiser works on), ``updates``, ``decay`` and ``tau``. Resuming puts each back where it was, so
  a resumed run continues bit for bit. Resuming a checkpoint without ``ema`` starts the average
  from the loaded weights (a warning says so).
"""

from __future__ import annotations

import copy
import logging
import math

import torch

from detkit.checkpoint import unwrap_model
from detkit.engine.hooks import Hook
from detkit.errors import ConfigError

__all__ = ["EMAHook", "ema_decay"]

logger = logging.getLogger(__name__)


def ema_decay(updates: int, decay: float, tau: float) -> float:
    """The decay of update number ``updates`` (1-based) with the warm-up ramp."""
    return decay * (1.0 - math.exp(-updates / tau))


class EMAHook(Hook):
    """Keeps ``module``, an averaged copy of the trained model (see the module docstring).

    Priority 5: before every built-in hook, so the copy exists before anything evaluates or saves.
    """

    priority = 5

    def __init__(self, decay: float = 0.9998, tau: float = 2000.0):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
            raise ConfigError(f"train.ema.decay: expected a number in (0, 1), got {decay!r}")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
            raise ConfigError(f"train.ema.tau: expected a number > 0 (optimiser steps), got {tau!r}")
        self.decay = float(decay)
        self.tau = float(tau)
        self.updates = 0
        self.module: torch.nn.Module | None = None
        self._handle = None
        self._source: torch.nn.Module | None = None

    # -- the average -----------------------------------------------------------------------------
    def _ensure(self, trainer) -> torch.nn.Module:
        if self.module is None:
            self._source = unwrap_model(trainer.model)
            self.module = copy.deepcopy(self._source).eval()
            for p in self.module.parameters():
                p.requires_grad_(False)
        trainer.eval_model = self.module
        return self.module

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step from the current model weights."""
        self.updates += 1
        d = ema_decay(self.updates, self.decay, self.tau)
        model_params = dict(self._source.named_parameters())
        for name, ema_param in self.module.named_parameters():
            param = model_params[name].detach()
            if ema_param.is_floating_point():
                ema_param.mul_(d).add_(param.to(ema_param.dtype), alpha=1.0 - d)
            else:
                ema_param.copy_(param)
        model_buffers = dict(self._source.named_buffers())
        for name, buffer in self.module.named_buffers():
            buffer.copy_(model_buffers[name])

    # -- hook events -----------------------------------------------------------------------------
    def before_train(self, trainer) -> None:
        self._ensure(trainer)
        # after optimizer.step() only: steps the GradScaler skips (inf gradients) never call it
        self._handle = trainer.optimizer.register_step_post_hook(lambda *_: self.update())
        logger.info("EMA of the weights: decay %g, tau %g steps (%d updates so far); evaluation and "
                    "checkpoints use the averaged weights", self.decay, self.tau, self.updates)

    def after_train(self, trainer) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def before_save_checkpoint(self, trainer, state: dict) -> None:
        """``model`` <- the averaged weights; the trained ones go to ``ema.train_model``."""
        module = self._ensure(trainer)
        state["ema"] = {"train_model": state["model"], "updates": self.updates, "decay": self.decay,
                        "tau": self.tau}
        state["model"] = module.state_dict()

    def after_load_checkpoint(self, trainer, state) -> None:
        """Undo :meth:`before_save_checkpoint`: the model gets ``ema.train_model`` back."""
        module = self._ensure(trainer)
        saved = state.get("ema")
        if not saved:
            logger.warning("the checkpoint has no EMA state (trained without train.ema): the average "
                           "starts from its weights")
            module.load_state_dict(self._source.state_dict())
            self.updates = 0
            return
        module.load_state_dict(state["model"])
        self._source.load_state_dict(saved["train_model"])
        self.updates = int(saved["updates"])
        if (saved.get("decay"), saved.get("tau")) != (self.decay, self.tau):
            logger.warning("the checkpoint's EMA used decay %s, tau %s; continuing with decay %g, tau %g",
                           saved.get("decay"), saved.get("tau"), self.decay, self.tau)
