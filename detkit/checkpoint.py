"""Reading and writing weight and checkpoint files: the one place that touches ``torch.save`` /
``torch.load``, used by training (resume, ``load_from``), evaluation, ``Predictor`` and backbones'
``pretrained`` weights alike.

A detkit checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` can read, so
loading one never runs code from the file::

    format="detkit-checkpoint", version=1,
    model (state dict), optimizer, scheduler, scaler (state dicts or None),
    epoch (completed epochs), iter (completed iterations), best_metric, best_metric_name,
    rng (torch CPU/CUDA, numpy and python random states as tensors and lists),
    class_names (list of str), config (the resolved config as a plain dict), meta (versions, time)

* :func:`save_checkpoint` writes atomically: a temporary file in the same folder is written,
  flushed and fsync'ed, then renamed over the target (``os.replace``) and the folder is fsync'ed, so a
  crash or a full disk mid-save leaves the previous checkpoint intact. Before writing it checks that
  everything in ``state`` is weights-only-safe (tensors, numbers, strings, lists, tuples, dicts) and
  names the offending key otherwise, instead of producing a file nobody can load safely.
* :func:`load_checkpoint` refuses files that need pickle (unless ``unsafe=True``, the CLI's
  ``--unsafe-load``), reports a missing, truncated or corrupt file with its path, and accepts a plain
  model state dict (torchvision/timm weights, ``{"state_dict": ...}`` of mmdetection,
  ``{"model": ...}`` of detectron2/torchvision references) as model weights only.
* :func:`read_state_dict` is the weights of a file for one module: a plain state dict as is, or the
  ``backbone.`` part of a detkit checkpoint for a backbone's ``pretrained``.
* :func:`load_model_weights` loads weights into a model with an error that lists the keys that do not
  fit.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import time
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "is_full_checkpoint",
    "load_model_weights",
    "read_state_dict",
    "get_rng_state",
    "set_rng_state",
    "unwrap_model",
]

CHECKPOINT_FORMAT = "detkit-checkpoint"
CHECKPOINT_VERSION = 1
# What load_checkpoint() returns for a file that holds model weights only.
STATE_DICT_FORMAT = "state-dict"

_SAFE_SCALARS = (bool, int, float, str, bytes, type(None))
# Where other tools keep the model's state dict inside their files (torchvision references and
# detectron2: "model"; Lightning and mmcv: "state_dict").
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "weights")


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; ``format`` and ``version`` are filled in if absent.

    Returns the path. Raises :class:`CheckpointError` naming the key when ``state`` holds something
    ``torch.load(weights_only=True)`` could not read back (an arbitrary object, a numpy array...).
    """
    path = Path(path)
    state = dict(state)
    state.setdefault("format", CHECKPOINT_FORMAT)
    state.setdefault("version", CHECKPOINT_VERSION)
    _check_weights_only_safe(state, "checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Never leave half-written temporaries behind (disk full, Ctrl-C during the write).
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` hold the same bytes as ``src`` atomically: a hard link when the file system allows
    it (no second copy of a multi-GB checkpoint), else a copy. Replacing ``src`` later (an
    ``os.replace`` by :func:`save_checkpoint`) leaves ``dst`` pointing at the old content, as wanted for
    ``epoch_N.pth`` / ``best_*.pth`` next to ``last.pth``."""
    import shutil

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(dst.parent)
    return dst


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable. Not possible on every platform (Windows): best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_weights_only_safe(value: Any, where: str) -> None:
    # Exact types: a str subclass such as torch.__version__ (TorchVersion) needs pickle.
    if isinstance(value, torch.Tensor) or type(value) in _SAFE_SCALARS:
        return
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return
    if isinstance(value, Mapping):
        # OrderedDict (what state_dict() returns) and dict are both allowed by weights_only.
        if type(value) not in (dict, OrderedDict):
            raise CheckpointError(
                f"{where}: a {type(value).__name__} cannot be loaded with weights_only=True; "
                "convert it to a dict"
            )
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise CheckpointError(f"{where}: key {key!r} of type {type(key).__name__} is not allowed")
            _check_weights_only_safe(item, f"{where}.{key}")
        return
    if isinstance(value, (list, tuple, set)):
        if type(value) not in (list, tuple, set):  # namedtuples etc. need pickle
            raise CheckpointError(
                f"{where}: a {type(value).__name__} cannot be loaded with weights_only=True; "
                "convert it to a list or tuple"
            )
        for i, item in enumerate(value):
            _check_weights_only_safe(item, f"{where}.{i}")
        return
    if isinstance(value, _SAFE_SCALARS):
        raise CheckpointError(f"{where}: a {type(value).__name__} (subclass of {type(value).__mro__[1].__name__}) "
                              "needs pickle; store a plain value")
    if isinstance(value, np.generic):
        raise CheckpointError(f"{where}: numpy scalar {value!r}; store it as a Python number")
    raise CheckpointError(
        f"{where}: a {type(value).__module__}.{type(value).__name__} cannot be loaded with "
        "weights_only=True; store tensors, numbers, strings, lists and dicts only"
    )


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", unsafe: bool = False, *,
                    what: str = "checkpoint") -> dict:
    """Load a checkpoint, weights-only unless ``unsafe``.

    Returns the detkit checkpoint dict, or for a plain state dict
    ``dict(format="state-dict", model=<state dict>, class_names=None)``: model weights only, which
    :func:`is_full_checkpoint` tells apart (a training run cannot resume from it). ``what`` names the
    file in the not-found message ("pretrained weights file").
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download or save?)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise CheckpointError(f"{path}: corrupt checkpoint ({exc})") from exc
        if not unsafe:
            raise CheckpointError(
                f"{path}: this file stores pickled Python objects, which can run arbitrary code "
                "when loaded, so detkit refuses it (torch.load weights_only=True failed: "
                f"{_first_line(exc)}). If you trust where it came from, pass --unsafe-load "
                "(unsafe=True in Python)."
            ) from exc
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - any failure here means the file is unusable
            raise CheckpointError(f"{path}: cannot be loaded even with --unsafe-load: {exc2}") from exc2
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt file?): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    return _normalise(obj, path)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # torch's weights-only message is long; the line naming the offending global is the useful one.
    for line in lines:
        if "Unsupported global" in line or "WeightsUnpickler error" in line:
            return line.split(" Please use")[0]
    return lines[0] if lines else type(exc).__name__


def _normalise(obj: Any, path: Path) -> dict:
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        # A hand-made dict may leave the version out: it can only mean the format as it is now.
        version = obj.get("version", CHECKPOINT_VERSION)
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint version {version!r} is newer than this detkit understands "
                f"({CHECKPOINT_VERSION}); upgrade detkit"
            )
        if not isinstance(obj.get("model"), Mapping):
            raise CheckpointError(f"{path}: detkit checkpoint without model weights ('model' key)")
        return dict(obj)
    state = _find_state_dict(obj)
    if state is None:
        kind = type(obj).__name__
        keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else ""
        raise CheckpointError(
            f"{path}: neither a detkit checkpoint nor a model state dict: a {kind}{keys} is not a state "
            f"dict (parameter names mapped to tensors, at the top level or under one of "
            f"{', '.join(_STATE_DICT_KEYS)})"
        )
    return {"format": STATE_DICT_FORMAT, "model": state, "class_names": None}


def _find_state_dict(obj: Any) -> dict | None:
    """A mapping of parameter names to tensors, at the top level or under a usual key."""
    if _is_state_dict(obj):
        return _strip_prefix(dict(obj), "module.")
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return _strip_prefix(dict(obj[key]), "module.")
    return None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _strip_prefix(state: dict, prefix: str) -> dict:
    # Weights saved from a DDP-wrapped model carry "module." on every key.
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def is_full_checkpoint(ckpt: Mapping) -> bool:
    """True for a detkit training checkpoint (can resume), False for model weights only."""
    return ckpt.get("format") == CHECKPOINT_FORMAT


def load_model_weights(model: torch.nn.Module, ckpt: Mapping, *, source: str = "checkpoint",
                       strict: bool = True) -> None:
    """Load ``ckpt["model"]`` into ``model`` (unwrapping DDP / torch.compile), with an error that
    lists missing, unexpected and mis-shaped keys instead of torch's wall of text."""
    target = unwrap_model(model)
    state = ckpt["model"] if "model" in ckpt else ckpt
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        for label, items in (("shape mismatch", mismatched), ("missing", missing),
                             ("unexpected", unexpected)):
            if items:
                shown = ", ".join(items[:5]) + (f" ... (+{len(items) - 5} more)" if len(items) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(parts))
    target.load_state_dict(state, strict=strict)


def read_state_dict(path: str | os.PathLike, *, submodule: str | None = None) -> dict[str, torch.Tensor]:
    """The weights in ``path`` for one module, read weights-only (see :func:`load_checkpoint` for the
    accepted files).

    With ``submodule="backbone"`` a detkit checkpoint gives its ``backbone.*`` weights with that
    prefix removed (a trained detector's backbone as ``pretrained`` weights); any other file is taken
    as the module's own state dict (torchvision's classification weights, say).
    """
    ckpt = load_checkpoint(path, what="pretrained weights file" if submodule else "weights file")
    state = dict(ckpt["model"])
    if submodule is None or not is_full_checkpoint(ckpt):
        return state
    prefix = submodule + "."
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not own:
        prefixes = sorted({k.split(".", 1)[0] for k in state})
        raise CheckpointError(f"{path}: detkit checkpoint holds no '{prefix}*' weights "
                              f"(its model keys start with: {', '.join(prefixes) or 'nothing'})")
    return own


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        else:
            return model


# ----------------------------------------------------------------------------------------------
# Random number generator states (weights-only-safe form)
# ----------------------------------------------------------------------------------------------


def get_rng_state() -> dict:
    """Every global RNG as tensors / lists / numbers (no numpy objects, no tuples of mixed types
    that need pickle): torch CPU, each CUDA device, numpy's MT19937, python ``random``."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "algorithm": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss_next": py_gauss},
    }


def set_rng_state(state: Mapping) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda_states])
        else:  # a different number of GPUs: restore the ones both runs have
            for i, s in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s.cpu().to(torch.uint8), i)
    np_state = state["numpy"]
    np.random.set_state((
        np_state["algorithm"],
        np_state["keys"].cpu().numpy().astype(np.uint32),
        int(np_state["pos"]),
        int(np_state["has_gauss"]),
        float(np_state["cached_gaussian"]),
    ))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"]), py["gauss_next"]))


def checkpoint_meta() -> dict:
    """Provenance stored with every training checkpoint."""
    from detkit import __version__

    return {"detkit_version": str(__version__), "torch_version": str(torch.__version__),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
