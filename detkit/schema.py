"""The ``train`` and ``eval`` config sections: every key, its default and its check, stated once.

Used by

* the config loader (:mod:`detkit.config`): :data:`SECTION_DEFAULTS` makes every key with a default
  overridable by its plain dotted path (``--set train.bad_sample=skip``), and ``detkit config show``
  prints the config with :func:`fill_defaults` applied, i.e. what a run will use;
* ``detkit train`` / ``detkit eval``: :func:`resolve_config` fills and checks both sections once,
  before anything is built (an unknown key is an error naming ``train.<key>`` with a suggestion);
* the :class:`~detkit.engine.trainer.Trainer`, which Python code may build without a config: it
  checks its arguments with the same checks (:func:`check_value`), so the messages are the same.

No torch import: ``detkit config show`` stays fast.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from detkit.errors import ConfigError
from detkit.evaluation.names import EVAL_DEFAULTS as TASK_EVAL_DEFAULTS
from detkit.evaluation.names import check_task, metric_keys

__all__ = ["TRAIN_KEYS", "EVAL_KEYS", "TRAIN_DEFAULTS", "EVAL_DEFAULTS", "SECTION_DEFAULTS", "fill_defaults",
           "section_defaults", "check_keys", "check_choice", "check_value", "resolve_train_config",
           "resolve_eval_config", "resolve_config"]


@dataclass(frozen=True)
class Key:
    default: Any
    check: Callable[[Any, str], None]  # raises ConfigError naming the dotted path


# -- checks ---------------------------------------------------------------------------------------


def _integer(minimum: int, allow_none: bool = False):
    def check(value, path):
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{path}: expected an integer >= {minimum}, got {value!r}")
    return check


def _boolean(value, path):
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected True or False, got {value!r}")


def check_choice(value, choices, path: str):
    """``value`` if it is one of ``choices``, else a ConfigError with the closest choice."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(choices)}.{hint}")
    return value


def _choice(*choices):
    return lambda value, path: check_choice(value, choices, path)


def _positive_or_none(value, path):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ConfigError(f"{path}: expected a number > 0 or None, got {value!r}")


def _optimizer(value, path):
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected dict(type='sgd' or 'adamw', lr=...)")


def _scheduler(value, path):
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected dict(type=...) or None")


def _path_or_none(value, path):
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}: expected a checkpoint path or None, got {value!r}")


# -- the sections ---------------------------------------------------------------------------------
# Documented in docs/training.md ("The train and eval sections"); keep the two in step.

TRAIN_KEYS = {
    "epochs": Key(12, _integer(1)),
    "batch_size": Key(16, _integer(1)),  # per process under DDP
    "num_workers": Key(2, _integer(0)),
    "seed": Key(0, _integer(0, allow_none=True)),  # None: a random seed, logged and saved
    "optimizer": Key(dict(type="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, no_decay_norm_bias=True),
                     _optimizer),  # its keys are checked by engine.optim.build_optimizer
    "scheduler": Key(dict(type="constant"), _scheduler),  # keys checked by build_scheduler
    "grad_clip": Key(None, _positive_or_none),
    "accumulate": Key(1, _integer(1)),
    "amp": Key(False, _boolean),
    "amp_dtype": Key("bf16", _choice("bf16", "fp16", "bfloat16", "float16")),
    "channels_last": Key(False, _boolean),
    "compile": Key(False, _boolean),
    "sync_bn": Key(False, _boolean),
    "log_interval": Key(10, _integer(1)),
    "checkpoint_interval": Key(1, _integer(1)),
    "keep_last": Key(3, _integer(-1, allow_none=True)),  # None or -1: keep all
    "eval_interval": Key(1, _integer(0)),  # 0: never
    "nan_policy": Key("raise", _choice("raise", "skip")),
    "load_from": Key(None, _path_or_none),
    "bad_sample": Key("raise", _choice("raise", "skip")),
    "find_unused_parameters": Key(False, _boolean),
}
EVAL_KEYS = {
    # metric and save_best: the detection defaults here; a classification run's come from
    # names.EVAL_DEFAULTS. Both are checked against the run's task in resolve_eval_config.
    "metric": Key(TASK_EVAL_DEFAULTS["detection"]["metric"], lambda value, path: None),
    "batch_size": Key(None, _integer(1)),  # None: train.batch_size
    "num_workers": Key(None, _integer(0)),  # None: train.num_workers
    "save_best": Key(TASK_EVAL_DEFAULTS["detection"]["save_best"], lambda value, path: None),
}
_SCHEMA = {"train": TRAIN_KEYS, "eval": EVAL_KEYS}

TRAIN_DEFAULTS = {key: spec.default for key, spec in TRAIN_KEYS.items()}
EVAL_DEFAULTS = {key: spec.default for key, spec in EVAL_KEYS.items()}
# what the config loader knows before applying --set overrides: section -> key -> default
SECTION_DEFAULTS = {"train": TRAIN_DEFAULTS, "eval": EVAL_DEFAULTS}


def section_defaults(task: str = "detection") -> dict:
    """section -> key -> default for a run of ``task`` (``"detection"`` or ``"classification"``)."""
    check_task(task)
    return {"train": TRAIN_DEFAULTS, "eval": {**EVAL_DEFAULTS, **TASK_EVAL_DEFAULTS[task]}}


def fill_defaults(cfg: Mapping, task: str = "detection") -> dict:
    """``cfg`` with every missing ``train`` / ``eval`` key set to its default for ``task`` (a missing
    section is added whole). A key the config sets keeps its value as it is: a dict value such as
    ``train.optimizer`` is replaced, not merged, since its keys depend on its ``type``."""
    out = dict(cfg)
    for section, defaults in section_defaults(task).items():
        given = out.get(section)
        if given is None:
            given = {}
        if isinstance(given, Mapping):
            out[section] = {**copy.deepcopy(defaults), **copy.deepcopy(dict(given))}
    return out


def check_keys(cfg: Mapping, allowed, path: str) -> None:
    """Unknown keys are typos: raise ConfigError naming ``path.key`` with the closest allowed key."""
    for key in cfg:
        if key in allowed:
            continue
        msg = f"{path}.{key}: unknown key."
        close = difflib.get_close_matches(str(key), sorted(allowed), n=2, cutoff=0.6)
        if close:
            msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        raise ConfigError(msg + f" Allowed: {', '.join(sorted(allowed))}.")


def check_value(section: str, key: str, value) -> None:
    """Check one value of ``section`` (``'train'`` or ``'eval'``) the way a config's is checked."""
    _SCHEMA[section][key].check(value, f"{section}.{key}")


def _section(cfg: Mapping | None, section: str, task: str = "detection") -> dict:
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{section}: expected a dict, got {type(cfg).__name__}")
    check_keys(cfg, _SCHEMA[section], section)
    return fill_defaults({section: cfg}, task)[section]


def resolve_train_config(train_cfg: Mapping | None) -> dict:
    """``train`` with defaults filled in and every value checked (ConfigError names the key)."""
    cfg = _section(train_cfg, "train")
    for key in TRAIN_KEYS:
        check_value("train", key, cfg[key])
    return cfg


def resolve_eval_config(eval_cfg: Mapping | None, train_cfg: Mapping | None = None,
                        task: str = "detection") -> dict:
    """``eval`` with the defaults of ``task`` (batch size and workers default to the training ones);
    ``eval.metric`` must name metrics of that task."""
    cfg = _section(eval_cfg, "eval", task)
    train_cfg = train_cfg or TRAIN_DEFAULTS
    for key in ("batch_size", "num_workers"):
        if cfg[key] is None:
            cfg[key] = train_cfg[key]
    for key in EVAL_KEYS:
        check_value("eval", key, cfg[key])
    keys = metric_keys(cfg["metric"], task)  # its errors name eval.metric
    if cfg["save_best"] is not None and cfg["save_best"] not in keys:
        close = difflib.get_close_matches(str(cfg["save_best"]), keys, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"eval.save_best: '{cfg['save_best']}' is not computed by eval.metric="
                          f"{cfg['metric']!r}.{hint} It computes: {', '.join(keys)}.")
    return cfg


def resolve_config(cfg: Mapping, *, seed: int | None = None, epochs: int | None = None,
                   amp: bool | None = None, task: str = "detection") -> dict:
    """The whole config a run of ``task`` uses: plain JSON data, ``train`` and ``eval`` filled and
    checked, with the command line's ``--seed`` / ``--epochs`` / ``--amp`` applied."""
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
        _integer(1)(epochs, "--epochs")
        tcfg["epochs"] = epochs
    if amp is not None:
        tcfg["amp"] = bool(amp)
    cfg["train"] = tcfg
    cfg["eval"] = resolve_eval_config(cfg.get("eval"), tcfg, task)
    return cfg
