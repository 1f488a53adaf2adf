"""Choosing the torch device a run uses, for training, evaluation and inference alike."""

from __future__ import annotations

import torch

from detkit.errors import ConfigError

__all__ = ["select_device"]


def select_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``None`` / ``""`` = CUDA when available (``cuda:LOCAL_RANK``, so each torchrun process takes
    its own GPU), else the CPU. A bare ``"cuda"`` gets the same index; a CUDA request on a machine
    without CUDA, or a string that is no device, is a :class:`ConfigError` naming ``--device``."""
    if device is None or device == "":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {device!r}: not a device (cpu, cuda, cuda:1, ...)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev
