"""Optimisers, parameter groups, learning-rate schedules and mixed precision, built from ``train``.

Config (``train.optimizer`` / ``train.scheduler``)::

    optimizer=dict(type="sgd", lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   no_decay_norm_bias=True)
    optimizer=dict(type="adamw", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
                   no_decay_norm_bias=True)

    scheduler=dict(type="cosine", warmup_epochs=1, warmup_start_factor=0.1, min_lr_factor=0.01)
    scheduler=dict(type="step", warmup_epochs=1, warmup_start_factor=0.1, milestones=[16, 22], gamma=0.1)
    scheduler=dict(type="yolov1", warmup_epochs=5, warmup_start_factor=0.1, milestones=[75, 105], gamma=0.1)
    scheduler=dict(type="constant", warmup_epochs=0)

The schedule is per iteration: the learning rate of iteration ``i`` (0-based, counted over the whole
run) is ``base_lr * factor(i)`` where

* warm-up (``i < W``, ``W = round(warmup_epochs * iters_per_epoch)``): the factor rises linearly from
  ``warmup_start_factor`` to 1 and multiplies the main schedule;
* ``step`` / ``yolov1``: ``gamma ** (number of milestones passed)``, milestones in epochs;
* ``cosine``: from 1 at the end of warm-up down to ``min_lr_factor`` at the last iteration;
* ``constant``: 1.

``yolov1`` is the YOLOv1 paper's schedule (raise the LR from 1e-3 to 1e-2 over the first epochs, 1e-2
for 75 epochs, then 1e-3 for 30 epochs and 1e-4 for 30: 135 epochs, the paper's total, so the warm-up
is counted in the 75): a step schedule whose defaults are the paper's (``warmup_epochs=5,
warmup_start_factor=0.1, milestones=[75, 105], gamma=0.1``) for 135 epochs.

Because the factor is a pure function of the iteration number, resuming sets it exactly
(:meth:`IterationScheduler.set_iter`), whatever happened in between.

``no_decay_norm_bias=True`` puts every parameter of a normalisation layer (BatchNorm, GroupNorm,
LayerNorm, InstanceNorm, SyncBatchNorm) and every bias in a group with ``weight_decay=0``, as in
timm / detectron2 / torchvision's references: decaying them only shrinks scales and offsets that
normalisation makes scale-free.

Mixed precision (:func:`resolve_amp`): ``amp=True`` on CUDA runs the forward pass in autocast with
``amp_dtype`` ``"bf16"`` (no loss scaling needed) or ``"fp16"`` (with ``torch.amp.GradScaler``).
On CPU it is switched off with one warning: CPU autocast is slower than fp32 on most CPUs without
bf16 matrix units and changes numerics, and CPU runs are usually debugging runs where fp32 is what
you want to compare against.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from detkit.errors import ConfigError
from detkit.schema import check_choice, check_keys, check_value

__all__ = [
    "build_optimizer",
    "param_groups",
    "build_scheduler",
    "LRSchedule",
    "IterationScheduler",
    "resolve_amp",
    "AmpSettings",
]

logger = logging.getLogger(__name__)

NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)

_OPTIMIZER_KEYS = {
    "sgd": {"type", "lr", "momentum", "nesterov", "weight_decay", "dampening", "no_decay_norm_bias"},
    "adamw": {"type", "lr", "betas", "eps", "weight_decay", "amsgrad", "no_decay_norm_bias"},
}
_SCHEDULER_KEYS = {
    "cosine": {"type", "warmup_epochs", "warmup_start_factor", "min_lr_factor"},
    "step": {"type", "warmup_epochs", "warmup_start_factor", "milestones", "gamma"},
    "yolov1": {"type", "warmup_epochs", "warmup_start_factor", "milestones", "gamma"},
    "constant": {"type", "warmup_epochs", "warmup_start_factor"},
}
_SCHEDULER_DEFAULTS = {
    "cosine": dict(warmup_epochs=0.0, warmup_start_factor=0.1, min_lr_factor=0.0),
    "step": dict(warmup_epochs=0.0, warmup_start_factor=0.1, milestones=[], gamma=0.1),
    "yolov1": dict(warmup_epochs=5.0, warmup_start_factor=0.1, milestones=[75, 105], gamma=0.1),
    "constant": dict(warmup_epochs=0.0, warmup_start_factor=0.1),
}


# ----------------------------------------------------------------------------------------------
# Optimiser
# ----------------------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """Trainable parameters split into a decayed and a non-decayed group (empty groups dropped).

    Each group carries a ``name`` ("decay" / "no_decay") so logs and checkpoints are readable.
    Parameters shared between modules appear once.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if no_decay_norm_bias and (is_norm or name == "bias"):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("train.optimizer: the model has no trainable parameters (all frozen?)")
    return groups


def build_optimizer(model: nn.Module, cfg: Mapping, path: str = "train.optimizer") -> torch.optim.Optimizer:
    """``torch.optim.SGD`` or ``AdamW`` over :func:`param_groups` of ``model``."""
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ConfigError(f"{path}: expected dict(type='sgd' or 'adamw', lr=...), got {cfg!r}")
    kind = check_choice(str(cfg["type"]).lower(), tuple(_OPTIMIZER_KEYS), f"{path}.type")
    check_keys(cfg, _OPTIMIZER_KEYS[kind], path)
    if "lr" not in cfg:
        raise ConfigError(f"{path}.lr: the learning rate is required")
    lr = _positive(cfg["lr"], f"{path}.lr")
    weight_decay = float(cfg.get("weight_decay", 0.0 if kind == "sgd" else 1e-2))
    if weight_decay < 0:
        raise ConfigError(f"{path}.weight_decay must be >= 0, got {weight_decay}")
    groups = param_groups(model, weight_decay, bool(cfg.get("no_decay_norm_bias", False)))
    if kind == "sgd":
        momentum = float(cfg.get("momentum", 0.9))
        nesterov = bool(cfg.get("nesterov", False))
        if nesterov and momentum <= 0:
            raise ConfigError(f"{path}.nesterov needs momentum > 0")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov,
                               dampening=float(cfg.get("dampening", 0.0)))
    betas = cfg.get("betas", (0.9, 0.999))
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
        raise ConfigError(f"{path}.betas must be two numbers, got {betas!r}")
    return torch.optim.AdamW(groups, lr=lr, betas=(float(betas[0]), float(betas[1])),
                             eps=float(cfg.get("eps", 1e-8)), amsgrad=bool(cfg.get("amsgrad", False)))


def _positive(value, path: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if not value > 0:
        raise ConfigError(f"{path}: must be > 0, got {value}")
    return value


# ----------------------------------------------------------------------------------------------
# Learning-rate schedule
# ----------------------------------------------------------------------------------------------


@dataclass
class LRSchedule:
    """The LR factor as a function of the global iteration (see the module docstring)."""

    kind: str
    total_iters: int
    warmup_iters: int = 0
    warmup_start_factor: float = 0.1
    milestones: list = field(default_factory=list)  # in iterations
    gamma: float = 0.1
    min_lr_factor: float = 0.0

    def factor(self, it: int) -> float:
        if self.kind == "cosine":
            span = max(1, self.total_iters - 1 - self.warmup_iters)
            t = min(1.0, max(0.0, (it - self.warmup_iters) / span))
            main = self.min_lr_factor + (1 - self.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))
        elif self.kind in ("step", "yolov1"):
            main = self.gamma ** sum(it >= m for m in self.milestones)
        else:
            main = 1.0
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            main *= self.warmup_start_factor + (1 - self.warmup_start_factor) * alpha
        return main


class IterationScheduler:
    """Sets every parameter group's ``lr`` to ``base_lr * schedule.factor(iteration)``.

    Called by :class:`detkit.engine.hooks.LRSchedulerHook` before each iteration. ``state_dict``
    holds plain numbers only (weights-only-safe). On ``load_state_dict`` only the iteration is taken
    from the checkpoint: the schedule follows the current config, so extending ``--epochs`` on
    resume stretches it as expected.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule):
        self.optimizer = optimizer
        self.schedule = schedule
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_iter = -1
        self.set_iter(0)

    def set_iter(self, it: int) -> None:
        factor = self.schedule.factor(it)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.last_iter = it

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_iter": int(self.last_iter), "base_lrs": [float(b) for b in self.base_lrs],
                "schedule": asdict(self.schedule)}

    def load_state_dict(self, state: Mapping) -> None:
        self.set_iter(int(state["last_iter"]))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping | None, *, epochs: int,
                    iters_per_epoch: int, path: str = "train.scheduler") -> IterationScheduler:
    """An :class:`IterationScheduler` for ``epochs * iters_per_epoch`` iterations."""
    cfg = dict(cfg or {"type": "constant"})
    kind = check_choice(str(cfg.get("type", "")).lower(), tuple(_SCHEDULER_KEYS), f"{path}.type")
    check_keys(cfg, _SCHEDULER_KEYS[kind], path)
    opts = {**_SCHEDULER_DEFAULTS[kind], **{k: v for k, v in cfg.items() if k != "type"}}
    iters_per_epoch = max(1, int(iters_per_epoch))
    total = max(1, int(epochs) * iters_per_epoch)
    warmup_epochs = float(opts["warmup_epochs"])
    if warmup_epochs < 0:
        raise ConfigError(f"{path}.warmup_epochs must be >= 0, got {warmup_epochs}")
    start = float(opts["warmup_start_factor"])
    if not 0 <= start <= 1:
        raise ConfigError(f"{path}.warmup_start_factor must lie in [0, 1], got {start}")
    schedule = LRSchedule(kind=kind, total_iters=total,
                          warmup_iters=int(round(warmup_epochs * iters_per_epoch)),
                          warmup_start_factor=start)
    if kind in ("step", "yolov1"):
        milestones = opts["milestones"]
        if not isinstance(milestones, (list, tuple)) or sorted(milestones) != list(milestones):
            raise ConfigError(f"{path}.milestones must be an increasing list of epochs, got {milestones!r}")
        schedule.milestones = [int(round(float(m) * iters_per_epoch)) for m in milestones]
        schedule.gamma = float(opts["gamma"])
        late = [m for m in milestones if m >= epochs]
        if late:
            logger.warning(
                "%s.milestones %s are at or beyond train.epochs=%d: the learning rate never decays "
                "there (scale the milestones with the number of epochs?)", path, list(late), epochs)
    if kind == "cosine":
        schedule.min_lr_factor = float(opts["min_lr_factor"])
        if not 0 <= schedule.min_lr_factor <= 1:
            raise ConfigError(f"{path}.min_lr_factor must lie in [0, 1], got {schedule.min_lr_factor}")
    return IterationScheduler(optimizer, schedule)


# ----------------------------------------------------------------------------------------------
# Mixed precision
# ----------------------------------------------------------------------------------------------

_AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
               "float16": torch.float16}


@dataclass(frozen=True)
class AmpSettings:
    enabled: bool
    dtype: torch.dtype
    device_type: str
    use_scaler: bool  # loss scaling: fp16 only


def resolve_amp(amp: bool, amp_dtype: str, device: torch.device | str) -> AmpSettings:
    """What ``amp`` / ``amp_dtype`` mean on ``device`` (see module docstring for the CPU choice)."""
    device = torch.device(device)
    check_value("train", "amp_dtype", amp_dtype)
    dtype = _AMP_DTYPES[amp_dtype]
    if amp and device.type != "cuda":
        logger.warning("train.amp=True is ignored on %s: mixed precision is used on CUDA only "
                       "(training runs in float32)", device.type)
        amp = False
    if amp and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        logger.warning("this GPU has no bf16 support; using fp16 with loss scaling instead")
        dtype = torch.float16
    return AmpSettings(enabled=bool(amp), dtype=dtype, device_type=device.type,
                       use_scaler=bool(amp) and dtype is torch.float16)
