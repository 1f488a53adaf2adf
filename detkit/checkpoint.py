"""Reading and writing weight and checkpoint files: the one place that touches ``torch.save`` /
``torch.load``, used by training (resume, ``load_from``), evaluation, ``Predictor`` and backbones'
``pretrained`` weights alike.

A detkit checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` can read, so
loading one never runs code from the file::

    format="detkit-checkpoint", version=1,
    model (state dict), optimizer, scheduler, scaler (state dicts or None),
    epoch (completed epochs), iter (completed iterations), best_metric, best_metric_name,
    rng (torch CPU/CUDA, numpy and python random states as tensors and lists),
    class_names (list of str), config (the resolved config as a plain dict), meta (versions, time),
    checksum ("sha256:<hex>" of everything else in the file, see :func:`state_checksum`)

* :func:`save_checkpoint` writes atomically: a temporary file in the same folder (mode from the
  umask, like every other output) is written, flushed and fsync'ed, then renamed over the target
  (``os.replace``) and the folder is fsync'ed, so a crash, a kill or a full disk mid-save leaves the
  previous checkpoint intact; a failed write is an :class:`~detkit.errors.OutputError` naming the
  file and the reason. Before writing it checks that everything in ``state`` is weights-only-safe
  (tensors, numbers, strings, lists, tuples, dicts), naming the offending key otherwise, and refuses
  model weights holding NaN or inf (a diverged model is never saved).
* :func:`load_checkpoint` tells apart what it cannot use, each with its own advice: a missing,
  empty, truncated or corrupt file; a file of another kind (text, safetensors, HDF5, a zip that
  ``torch.save`` did not write); a file that stores pickled Python objects (refused unless
  ``unsafe=True``, the CLI's ``--unsafe-load``, which then warns every time); a checksum that does
  not match (the file was damaged after it was written); non-finite model weights. It accepts a
  plain model state dict (torchvision/timm weights, ``{"state_dict": ...}`` of mmdetection,
  ``{"model": ...}`` of detectron2/torchvision references) as model weights only. A detkit
  checkpoint written before checksums existed loads, with one warning that it was not verified.
* :func:`read_state_dict` is the weights of a file for one module: a plain state dict as is, or the
  ``backbone.`` part of a detkit checkpoint for a backbone's ``pretrained``.
* :func:`load_model_weights` loads weights into a model with an error that lists the keys that do not
  fit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import pickletools
import random
import time
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.errors import CheckpointError
from detkit.fileio import create_new_file, fsync_dir, output_error, temp_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "state_checksum",
    "first_non_finite",
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
CHECKSUM_KEY = "checksum"

logger = logging.getLogger(__name__)

_SAFE_SCALARS = (bool, int, float, str, bytes, type(None))
# Where other tools keep the model's state dict inside their files (torchvision references and
# detectron2: "model"; Lightning and mmcv: "state_dict").
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "weights")


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; ``format``, ``version`` and ``checksum`` are filled in.

    Returns the path. Raises :class:`CheckpointError` naming the key when ``state`` holds something
    ``torch.load(weights_only=True)`` could not read back (an arbitrary object, a numpy array...) or
    when ``state["model"]`` holds NaN/inf, and :class:`~detkit.errors.OutputError` when the file
    cannot be written (the previous file at ``path``, if any, is then unchanged).
    """
    path = Path(path)
    state = {k: v for k, v in state.items() if k != CHECKSUM_KEY}  # a loaded checkpoint's is stale
    state.setdefault("format", CHECKPOINT_FORMAT)
    state.setdefault("version", CHECKPOINT_VERSION)
    _check_weights_only_safe(state, "checkpoint")
    if isinstance(state.get("model"), Mapping):
        bad = first_non_finite(state["model"])
        if bad is not None:
            raise CheckpointError(f"not writing {path}: the model's '{bad[0]}' holds {bad[1]} values "
                                  "(the model diverged); a checkpoint of it could only give garbage")
    state[CHECKSUM_KEY] = state_checksum(state)
    replaces = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path.parent, exc, "cannot create the folder") from exc
    tmp = temp_path(path, unique=True)
    try:
        with create_new_file(tmp) as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # Never leave half-written temporaries behind (disk full, Ctrl-C during the write).
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        os_error = _os_error_in(exc)
        if os_error is None:
            raise
        error = output_error(path, os_error)
        if replaces:
            error.args = (f"{error}; the previous {path.name} is unchanged",)
        raise error from exc
    fsync_dir(path.parent)
    return path


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: torch.save turns a failed write of its file object (ENOSPC) into
    a RuntimeError ("unexpected pos ...") whose context is the real error."""
    seen = set()
    while exc is not None and id(exc) not in seen and isinstance(exc, Exception):
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` hold the same bytes as ``src`` atomically: a hard link when the file system allows
    it (no second copy of a multi-GB checkpoint), else a copy. Replacing ``src`` later (an
    ``os.replace`` by :func:`save_checkpoint`) leaves ``dst`` pointing at the old content, as wanted for
    ``epoch_N.pth`` / ``best_*.pth`` next to ``last.pth``."""
    import shutil

    src, dst = Path(src), Path(dst)
    tmp = temp_path(dst, unique=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        raise output_error(dst, exc) from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    fsync_dir(dst.parent)
    return dst


def state_checksum(state: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of everything in ``state`` but its ``checksum``: the bytes of every tensor
    (with dtype and shape) and every key and plain value, in order. Stored by
    :func:`save_checkpoint` and recomputed by :func:`load_checkpoint`, so bytes damaged after the
    write (disk, copy, transfer) are an error instead of silently different weights."""
    digest = hashlib.sha256()
    _feed_value(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return "sha256:" + digest.hexdigest()


def _feed(digest, tag: bytes, data: bytes) -> None:
    # Length-prefixed, so no two different structures produce the same byte stream.
    digest.update(tag + len(data).to_bytes(8, "little") + data)


def _feed_value(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.is_quantized:
            t = t.int_repr()
        t = t.resolve_conj().resolve_neg().contiguous().cpu()
        _feed(digest, b"T", f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, Mapping):
        _feed(digest, b"D", str(len(value)).encode())
        for key, item in value.items():
            _feed_value(digest, key)
            _feed_value(digest, item)
    elif isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        _feed(digest, b"L", str(len(value)).encode())  # a tuple may come back as a list: same hash
        for item in value:
            _feed_value(digest, item)
    elif isinstance(value, (set, frozenset)):
        _feed_value(digest, sorted(value, key=repr))
    else:
        _feed(digest, b"S", f"{type(value).__name__}:{value!r}".encode("utf-8", "surrogatepass"))


def first_non_finite(tensors: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(name, "NaN" | "inf")`` of the first floating-point tensor of a state dict holding a
    non-finite value, or None when all are finite."""
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor) or value.is_quantized or value.numel() == 0:
            continue
        if (value.is_floating_point() or value.is_complex()) and not _all_finite(value.detach()):
            return str(name), "NaN" if bool(torch.isnan(value).any()) else "inf"
    return None


def _all_finite(t: torch.Tensor) -> bool:
    # min and max propagate NaN and show inf, in one pass without a bool tensor as large as the
    # weights: ~6x faster than isfinite().all() on CPU, which matters for multi-GB checkpoints.
    if t.is_floating_point():
        lo, hi = torch.aminmax(t)
        return bool(torch.isfinite(lo) & torch.isfinite(hi))
    return bool(torch.isfinite(t).all())


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
    file in the not-found message ("pretrained weights file"). Every refusal is a
    :class:`CheckpointError` naming the file and what is wrong with it (see the module docstring).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download or save?)")
    kind = _container_kind(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - sorted below: corrupt, foreign, or pickled objects
        refused = _refused_globals(path, kind, exc)
        if refused is None:
            raise CheckpointError(_unreadable(path, kind, exc)) from exc
        if not unsafe:
            raise CheckpointError(
                f"{path}: this file stores pickled Python objects ({refused}), which can run arbitrary "
                "code when loaded, so detkit refuses it. If you trust where it came from, pass "
                "--unsafe-load (unsafe=True in Python)."
            ) from exc
        logger.warning("%s: loading with --unsafe-load: unpickling it runs code named in the file "
                       "(%s); do this only with files you trust", path, refused)
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - any failure here means the file is unusable
            raise CheckpointError(f"{path}: cannot be loaded even with --unsafe-load: {exc2}") from exc2
    ckpt = _normalise(obj, path)
    _verify(ckpt, path)
    return ckpt


def _container_kind(path: Path) -> str:
    """``"zip"`` (what torch.save writes) or ``"pickle"`` (its legacy format); any other file is
    named for what it looks like, before torch.load can call random bytes "pickled objects" or
    fail on a text file with ``KeyError: 101``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "pickle"
    raise CheckpointError(f"{path}: not a PyTorch checkpoint: {_looks_like(head)}")


def _looks_like(head: bytes) -> str:
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file (Keras / TensorFlow weights?); detkit reads files written by torch.save"
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return ("a safetensors file; convert it with torch.save(safetensors.torch.load_file(PATH), "
                "'weights.pth')")
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file; decompress it first"
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8") if len(head) < 4096 else head[:-4].decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            start = " ".join(text.split())[:40]
            return f"a text file (it starts with {start!r})"
    return (f"its first bytes ({head[:8].hex(' ')}) are neither a zip archive (what torch.save writes) "
            "nor a pickle: the file is corrupt or of another kind")


def _refused_globals(path: Path, kind: str, exc: Exception) -> str | None:
    """What the weights-only unpickler refused, when ``exc`` is that refusal of a well-formed pickle
    (the one case where ``--unsafe-load`` is the right advice); None for anything else."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Unsupported global" not in text:
        return None
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                streams = [archive.read(names[0])] if names else []
        else:
            with open(path, "rb") as handle:
                streams = [handle.read()]
        if not streams:
            return None
        import io

        stream = io.BytesIO(streams[0])
        # The legacy format is several pickles in a row (magic, version, system info, the object).
        for _ in range(4 if kind == "pickle" else 1):
            for _op in pickletools.genops(stream):
                pass
    except Exception:  # noqa: BLE001 - a pickle that does not even parse is corrupt, not unsafe
        return None
    return _first_line(exc)


def _unreadable(path: Path, kind: str, exc: Exception) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, zipfile.BadZipFile):
        return f"{path}: cannot be read: {exc.strerror or exc}"
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return f"{path}: truncated or corrupt checkpoint (a zip archive that does not open: an " \
                   "interrupted download, copy or save?)"
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            return (f"{path}: not a PyTorch checkpoint: a zip archive without data.pkl (holds {shown}), "
                    "so torch.save did not write it")
    what = "a legacy torch.save file or another pickle" if kind == "pickle" else "a torch.save zip archive"
    return (f"{path}: truncated or corrupt checkpoint ({what} that torch.load cannot read: "
            f"{type(exc).__name__}: {_first_line(exc)})")


_UNVERIFIED: set[str] = set()  # files already reported as written without a checksum


def _verify(ckpt: dict, path: Path) -> None:
    """The checksum of a detkit checkpoint and the finiteness of any file's model weights."""
    if is_full_checkpoint(ckpt):
        stored = ckpt.get(CHECKSUM_KEY)
        if stored is None:
            if str(path.resolve()) not in _UNVERIFIED:
                _UNVERIFIED.add(str(path.resolve()))
                logger.warning("%s: written by a detkit version without checksums; loaded without "
                               "verifying its contents (the next checkpoint a run saves has one)", path)
        elif stored != state_checksum(ckpt):
            raise CheckpointError(
                f"{path}: checksum mismatch: the file was damaged after it was written (disk, copy or "
                "download); its weights cannot be trusted. Use another checkpoint (epoch_N.pth, a "
                "backup) or copy it again"
            )
    bad = first_non_finite(ckpt["model"])
    if bad is not None:
        raise CheckpointError(f"{path}: the model weights are not finite: '{bad[0]}' holds {bad[1]} "
                              "values (saved from a diverged run); use an earlier checkpoint")


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
