"""Reproducibility in one place: seeding the global RNGs, deriving seeds, deterministic mode.

Who seeds what:

* ``detkit train`` calls :func:`seed_everything` once, before building the model, so every rank
  initialises identical weights;
* the :class:`~detkit.engine.trainer.Trainer` reseeds the global RNGs at the start of every epoch
  from ``derive_seed(seed, epoch, rank)``, and :func:`set_loader_epoch` tells the loader which epoch
  starts: augmentation and shuffling of epoch ``e`` then depend on ``(seed, e, rank)`` only, so a
  resumed run draws exactly what an uninterrupted one would;
* the data loader (:mod:`detkit.data.loader`) seeds its shuffling generator from
  ``derive_seed(seed, epoch, rank, bits=63)`` and each worker's python / numpy RNGs with
  :func:`seed_host` from the per-worker seed torch hands out.

:func:`derive_seed` is the one way to mix several integers into a seed (numpy's ``SeedSequence``:
neighbouring epochs or ranks get unrelated streams, unlike ``seed + epoch``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch

__all__ = ["derive_seed", "seed_everything", "seed_host", "set_loader_epoch", "deterministic_mode"]

logger = logging.getLogger(__name__)


def derive_seed(*parts: int, bits: int = 32) -> int:
    """One well-mixed seed of ``bits`` (32 or 63) bits from several integers, e.g. (seed, epoch, rank).

    32 bits where the consumer takes no more (numpy's global seed); 63 for a ``torch.Generator``
    (a non-negative int64). Both are the first 64-bit word of the ``SeedSequence``, cut to width.
    """
    if bits not in (32, 63):
        raise ValueError(f"bits must be 32 or 63, got {bits}")
    word = np.random.SeedSequence([int(p) % 2**bits for p in parts]).generate_state(1, np.uint64)[0]
    return int(word & 0xFFFFFFFF) if bits == 32 else int(word >> 1)


def seed_host(seed: int) -> None:
    """Seed python ``random`` and numpy's global RNG (what a data loader worker needs: torch seeds
    the worker's own torch RNG itself)."""
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU), numpy and python ``random``."""
    torch.manual_seed(seed)
    seed_host(seed)


def set_loader_epoch(loader, epoch: int, seed: int | None = None) -> None:
    """Tell a training loader which epoch starts, so its shuffling depends on (seed, epoch) only.

    Calls ``set_epoch`` on the loader, its sampler and batch sampler where they have it
    (``DistributedSampler``, detkit's loaders). A loader without any ``set_epoch`` that shuffles
    with a ``torch.Generator`` gets that generator reseeded from (seed, epoch), so a resumed run
    draws the same order as an uninterrupted one.
    """
    owners = [loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
              getattr(getattr(loader, "batch_sampler", None), "sampler", None)]
    called = False
    for owner in owners:
        if owner is not None and callable(getattr(owner, "set_epoch", None)):
            owner.set_epoch(epoch)
            called = True
    if called or seed is None:
        return
    for owner in owners:
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(derive_seed(seed, epoch, 0))


@contextlib.contextmanager
def deterministic_mode(enabled: bool):
    """``torch.use_deterministic_algorithms(True)``, ``cudnn.deterministic``, no ``cudnn.benchmark``
    and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (when unset) inside the block; the previous settings
    come back on exit. Does nothing when ``enabled`` is false."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
            # cuBLAS reads it when CUDA initialises: too late if CUDA is already up, hence the hint.
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            logger.info("deterministic mode: set CUBLAS_WORKSPACE_CONFIG=:4096:8 (export it before "
                        "starting Python if CUDA was already initialised)")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        if enabled:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]
