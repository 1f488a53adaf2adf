"""A trained detector from its checkpoint alone: the model, its resolved config and class names.

Every training checkpoint stores the resolved config and the class names (:mod:`detkit.checkpoint`),
so :func:`load_detector` needs nothing else; a config given as well is used instead of the stored
one (the three-argument ``detkit infer CONFIG CKPT SOURCE``), and when it does not fit the weights
the error says in one short line what differs (backbone type, number of classes...) instead of
listing state-dict keys. :func:`deployment_checkpoint` is the stripped file ``detkit export --format
pth`` writes: weights, config and class names, no optimiser / scheduler / RNG state.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from detkit.errors import CheckpointError, ConfigError

__all__ = ["LoadedDetector", "load_detector", "resolve_config", "deployment_checkpoint", "config_mismatch",
           "with_data"]

# Model config keys whose values shape no weights: a difference there never explains a misfit.
_NO_WEIGHTS = ("model.postprocessor", "model.proposals", "model.loss")
_MAX_MESSAGE = 280  # the bound is 300 characters


@dataclass
class LoadedDetector:
    """What :func:`load_detector` returns: the model (eval mode, on the CPU), the config it was built
    from (the stored one unless a config was given), the class names and the checkpoint dict."""

    model: torch.nn.Module
    cfg: dict
    class_names: tuple[str, ...]
    checkpoint: dict


def resolve_config(path, ckpt: Mapping, config=None, overrides: Sequence[str] = ()) -> dict:
    """The config a checkpoint runs with: ``config`` (a path or dict) if given, else the resolved config
    the checkpoint stores; ``overrides`` (``--set`` items) are applied to either."""
    from detkit.config import apply_overrides, load_config, resolve_references

    if config is not None:
        if isinstance(config, Mapping):
            return resolve_references(apply_overrides(dict(config), overrides))
        return load_config(config, overrides)
    stored = ckpt.get("config")
    if not isinstance(stored, Mapping) or "model" not in stored:
        raise CheckpointError(f"{path}: the file stores no config (a plain state dict or a hand-made "
                              f"checkpoint); pass the config too: detkit infer CONFIG {Path(path).name} SOURCE")
    return resolve_references(apply_overrides(copy.deepcopy(dict(stored)), overrides))


def load_detector(checkpoint: str | os.PathLike, config=None, *, overrides: Sequence[str] = (),
                  unsafe_load: bool = False, model_overrides=None) -> LoadedDetector:
    """Build the detector of ``checkpoint`` and load its weights (see the module docstring).

    ``model_overrides(cfg) -> cfg`` may change the config's model section before the model is built
    (``Predictor``'s ``--conf/--iou/--max-det`` reach the postprocessor that way).
    """
    from detkit.checkpoint import load_checkpoint, load_model_weights
    from detkit.tasks import task_of_config

    ckpt = load_checkpoint(checkpoint, map_location="cpu", unsafe=unsafe_load)
    cfg = resolve_config(checkpoint, ckpt, config, overrides)
    if not isinstance(cfg.get("model"), Mapping):
        raise ConfigError("config has no 'model' section")
    if model_overrides is not None:
        cfg = model_overrides(cfg)
    stored = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else None
    class_names = _class_names(checkpoint, ckpt, cfg)
    name = Path(checkpoint).name
    try:
        # A detector, or a classifier (detkit classify): the config's model.type says which.
        model = task_of_config(cfg).build_model(cfg["model"], class_names, pretrained=False)  # the checkpoint has every weight
    except ConfigError as exc:
        if config is None:
            raise
        raise ConfigError(_short(f"{name}: the config cannot build this checkpoint's model: {exc}")) from exc
    try:
        load_model_weights(model, ckpt, source=str(checkpoint))
    except CheckpointError as exc:
        if config is None:
            raise
        raise ConfigError(config_mismatch(name, cfg, stored, _misfit_counts(model.state_dict(), ckpt["model"]))) \
            from exc
    # Stripped deployment checkpoints may hold fp16 weights: load_state_dict copied them into the
    # model's own float32 parameters, so the model itself is always full precision.
    return LoadedDetector(model.eval(), cfg, class_names, ckpt)


def _class_names(path, ckpt: Mapping, cfg: Mapping) -> tuple[str, ...]:
    stored = ckpt.get("class_names")
    configured = (cfg.get("data") or {}).get("classes") if isinstance(cfg.get("data"), Mapping) else None
    if stored and configured and list(stored) != list(configured):
        what = (f"{len(stored)} classes but the config's data.classes has {len(configured)}"
                if len(stored) != len(configured) else "other class names than the config's data.classes")
        raise ConfigError(_short(f"{Path(path).name} has {what}: {list(stored)} vs {list(configured)}"))
    names = stored or configured
    if not names:
        raise ConfigError(f"{path}: the checkpoint stores no class names and the config sets no data.classes; "
                          "add data.classes to the config")
    return tuple(names)


def _misfit_counts(own: Mapping, state: Mapping) -> str:
    shapes = sum(1 for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    counts = (("mis-shaped", shapes), ("missing", sum(k not in state for k in own)),
              ("unexpected", sum(k not in own for k in state)))
    return ", ".join(f"{n} {label}" for label, n in counts if n)


def config_mismatch(name: str, cfg: Mapping, stored: Mapping | None, misfit: str) -> str:
    """One short line (< 300 characters) saying why ``cfg`` does not fit the weights of ``name``:
    the differing model config values when the checkpoint stores its config, else ``misfit`` (the
    counts of mis-shaped, missing and unexpected tensors)."""
    if stored is not None:
        ours, theirs = _flatten(cfg.get("model"), "model"), _flatten(stored.get("model"), "model")
        keys = [k for k in dict.fromkeys([*theirs, *ours])
                if ours.get(k, _MISSING) != theirs.get(k, _MISSING) and not k.startswith(_NO_WEIGHTS)]
        if keys:
            keys.sort(key=lambda k: (not k.endswith(".type"), k.count("."), k))  # types first
            shown = [f"{k} is {_value(ours.get(k, _MISSING))} in the config, {_value(theirs.get(k, _MISSING))} "
                     f"in the checkpoint" for k in keys[:2]]
            more = f" (+{len(keys) - 2} more)" if len(keys) > 2 else ""
            return _short(f"{name}: the config does not fit these weights: {'; '.join(shown)}{more}. "
                          f"Leave the config out to use the checkpoint's own")
    return _short(f"{name}: the weights do not fit the model the config builds ({misfit} tensors); leave the "
                  f"config out to use the checkpoint's own, if it stores one")


_MISSING = object()


def _value(v) -> str:
    return "absent" if v is _MISSING else repr(v)


def _flatten(value, prefix: str) -> dict:
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}"))
        return out
    if isinstance(value, tuple):
        value = list(value)  # the stored config is JSON data: tuples came back as lists
    return {prefix: value}


def _short(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def deployment_checkpoint(ckpt: Mapping, *, half: bool = True) -> dict:
    """The stripped checkpoint ``detkit export --format pth`` writes: model weights, config and class
    names plus provenance; no optimiser, scheduler, scaler or RNG state, so it cannot resume
    training (``train.load_from`` takes it). ``half`` stores floating-point weights as float16 (as
    ultralytics' ``strip_optimizer`` does): half the bytes, loaded back into float32 models."""
    from detkit.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, checkpoint_meta

    weights = {k: (v.half() if half and v.is_floating_point() else v).contiguous().clone()
               for k, v in ckpt["model"].items()}
    meta = dict(ckpt.get("meta") or {})
    meta.update(checkpoint_meta(), stripped=True, weights_dtype="float16" if half else "float32",
                trained_epochs=ckpt.get("epoch"))
    out = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": weights,
           "class_names": list(ckpt.get("class_names") or []), "config": ckpt.get("config"), "meta": meta}
    for key in ("best_metric", "best_metric_name"):
        if ckpt.get(key) is not None:
            out[key] = ckpt[key]
    return out


def with_data(cfg: Mapping, data_config) -> dict:
    """``cfg`` with the ``data`` section of ``data_config`` (a config path or dict; ``detkit eval
    --data``): evaluate a model on other data than it was trained on, or give an exported model its
    data set."""
    from detkit.config import load_config

    if data_config is None:
        return dict(cfg)
    other = data_config if isinstance(data_config, Mapping) else load_config(data_config)
    if not isinstance(other.get("data"), Mapping):
        raise ConfigError(f"--data {data_config if not isinstance(data_config, Mapping) else ''}: the config has "
                          "no 'data' section")
    cfg = copy.deepcopy(dict(cfg))
    cfg["data"] = copy.deepcopy(dict(other["data"]))
    return cfg
