"""Data loaders for detection: collate with padding, seeding, distributed sampling, bad samples.

``build_dataloader(dataset, batch_size=..., shuffle=...)`` returns a :class:`DetectionDataLoader`
(a ``torch.utils.data.DataLoader``) that yields ``(images, targets)``:

* ``images``: float32 ``[N, 3, H, W]``, 0..1; images of different sizes are padded with zeros at the
  bottom / right to the largest, which leaves every box and ``meta`` valid (padding is outside the
  picture, and the origin does not move).
* ``targets``: the list of per-image target dicts of the dataset contract.

**Reproducibility.** The loader owns a ``torch.Generator`` seeded from ``seed`` (and the epoch, when
``set_epoch`` is called, and the rank when distributed): it drives the shuffle order and the base
seed torch hands to each worker. :func:`seed_worker` (the ``worker_init_fn``) seeds ``random``,
``numpy`` and the dataset's augmentation (``transforms.set_random_seed``; albumentations ignores
the global seeds) from that per-worker seed, so workers do not repeat each other and a run is
repeatable. With ``num_workers=0`` the augmentation is reseeded from the generator at the start of
each epoch instead. With ``distributed=True`` a ``DistributedSampler(shuffle, seed, drop_last)`` is
used; call ``loader.set_epoch(epoch)`` every epoch (it forwards to the sampler). ``set_epoch`` also
reseeds the generator from ``(seed, epoch, rank)``, so a resumed run replays the same epochs; with
``persistent_workers`` the workers are seeded once, at the first epoch, and their augmentation
streams then simply continue (the shuffle order still follows ``set_epoch``).

**Bad samples.** Files that are unusable from the start never get here: ``build_dataset`` verifies
every sample once and excludes them (:mod:`detkit.data.verify`). What is left are files that change
while training runs. Every ``dataset[i]`` runs under a guard: an exception inside a worker does not
surface as a worker traceback but travels to the main process as a :class:`BadSample` record (index,
image path, message). There, per ``bad_sample``:

* ``"raise"``: :class:`~detkit.errors.DataError` naming the index and the file (for errors that are
  not ``DataError`` the worker's traceback is attached as a note, since that is probably a bug);
* ``"skip"``: the sample is dropped from its batch, a warning with the path is logged, and it is
  counted: ``loader.num_skipped`` (this epoch, reset when iteration starts), ``loader.skipped``
  (the records) and ``loader.total_skipped`` (since the loader was built). A batch whose samples
  were *all* bad is not yielded (the epoch has one step fewer) and ``loader.num_skipped_batches``
  counts it; under ``distributed=True`` that would leave the ranks with different step counts and
  hang the next collective, so there it raises ``DataError`` instead.
"""

from __future__ import annotations

import bisect
import logging
import traceback
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, default_collate

from detkit.errors import ConfigError, DataError
from detkit.seeding import derive_seed, seed_host

__all__ = ["BadSample", "DetectionDataLoader", "build_dataloader", "collate", "seed_worker"]

logger = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("raise", "skip")


# ----------------------------------------------------------------------------------------------
# Collate
# ----------------------------------------------------------------------------------------------
def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack ``(image [3,H,W], target)`` pairs; pad smaller images with zeros at the bottom / right."""
    if len(batch) == 0:
        raise ValueError("collate: empty batch")
    images = [sample[0] for sample in batch]
    targets = [sample[1] for sample in batch]
    channels = {img.shape[0] for img in images}
    if len(channels) != 1 or any(img.ndim != 3 for img in images):
        shapes = [tuple(img.shape) for img in images]
        raise ValueError(f"collate: images must all be [C, H, W] with the same C, got {shapes}")
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    images = [img if img.shape[1:] == (height, width)
              else torch.nn.functional.pad(img, (0, width - img.shape[2], 0, height - img.shape[1]))
              for img in images]
    # default_collate stacks straight into shared memory inside a worker, saving the copy the
    # worker -> main process transfer would otherwise make of the whole batch.
    return default_collate(images), targets


@dataclass(frozen=True)
class BadSample:
    """A sample that could not be loaded; made in the worker, handled in the main process."""

    index: int
    path: str | None
    error: str  # "ExceptionType: message"
    details: str | None = None  # the worker's traceback, for exceptions that are not DataError

    def describe(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"sample {self.index}{where}: {self.error}"


def _collate_with_bad_samples(batch):
    """Collate the good samples; hand the bad ones to the main process alongside."""
    bad = [s for s in batch if isinstance(s, BadSample)]
    good = [s for s in batch if not isinstance(s, BadSample)]
    if not good:
        return None, [], bad
    images, targets = collate(good)
    return images, targets, bad


# ----------------------------------------------------------------------------------------------
# The guard around dataset[i]
# ----------------------------------------------------------------------------------------------
def _sample_path(dataset, index: int) -> str | None:
    """Best-effort path of sample ``index`` (through ConcatDataset / Subset) for messages."""
    try:
        while True:
            if isinstance(dataset, _GuardedDataset):
                dataset = dataset.dataset
            elif isinstance(dataset, Subset):
                index = int(dataset.indices[index])
                dataset = dataset.dataset
            elif isinstance(dataset, ConcatDataset):
                part = bisect.bisect_right(dataset.cumulative_sizes, index)
                index -= dataset.cumulative_sizes[part - 1] if part > 0 else 0
                dataset = dataset.datasets[part]
            else:
                break
        if hasattr(dataset, "image_path"):
            return str(dataset.image_path(index))
    except Exception:  # noqa: BLE001 - the path only decorates a message; never mask the real error
        return None
    return None


class _GuardedDataset(Dataset):
    """``dataset[i]`` that returns a :class:`BadSample` instead of raising (attributes forwarded)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except Exception as exc:  # noqa: BLE001 - reported in the main process, per policy
            details = None if isinstance(exc, DataError) else traceback.format_exc()
            return BadSample(int(index), _sample_path(self.dataset, index), f"{type(exc).__name__}: {exc}", details)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally: forward `classes`, `num_classes`, ... to
        # the wrapped dataset. Guard against recursion while unpickling (no `dataset` yet).
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


# ----------------------------------------------------------------------------------------------
# Seeding
# ----------------------------------------------------------------------------------------------
def _seed_transforms(dataset, seed: int) -> None:
    """Reseed the augmentation of ``dataset`` (and of the datasets it wraps)."""
    stack = [dataset]
    seen = set()
    k = 0
    while stack:
        ds = stack.pop()
        if id(ds) in seen:
            continue
        seen.add(id(ds))
        if isinstance(ds, ConcatDataset):
            stack.extend(ds.datasets)
            continue
        if isinstance(ds, (_GuardedDataset, Subset)):
            stack.append(ds.dataset)
            continue
        transforms = getattr(ds, "transforms", None)
        if hasattr(transforms, "set_random_seed"):
            # Different parts of a ConcatDataset get different streams.
            transforms.set_random_seed((seed + 7919 * k) % 2**32)
            k += 1


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed random, numpy and the dataset's augmentation from torch's worker seed."""
    seed = torch.initial_seed() % 2**32  # torch sets base_seed + worker_id in each worker
    seed_host(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        _seed_transforms(info.dataset, seed)


# ----------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------
class DetectionDataLoader(DataLoader):
    """A DataLoader that applies the bad-sample policy and counts skips (see the module docstring)."""

    def __init__(self, dataset, *, bad_sample: str = "raise", distributed: bool = False, seed: int = 0,
                 rank: int = 0, **kwargs):
        if bad_sample not in BAD_SAMPLE_POLICIES:
            raise ConfigError(f"bad_sample must be one of {', '.join(BAD_SAMPLE_POLICIES)}, got {bad_sample!r}")
        self.source_dataset = dataset
        super().__init__(_GuardedDataset(dataset), collate_fn=_collate_with_bad_samples,
                         worker_init_fn=seed_worker, **kwargs)
        self.bad_sample = bad_sample
        self.distributed = distributed
        self.seed = int(seed)
        self.rank = int(rank)
        self.skipped: list[BadSample] = []
        self.num_skipped_batches = 0
        self.total_skipped = 0

    @property
    def num_skipped(self) -> int:
        """Samples skipped so far in the current (or last) epoch."""
        return len(self.skipped)

    def set_epoch(self, epoch: int) -> None:
        """Make epoch ``epoch`` reproducible on its own (shuffle order, worker seeds), e.g. after resuming."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(derive_seed(self.seed, epoch, self.rank, bits=63))

    def __iter__(self):
        self.skipped = []
        self.num_skipped_batches = 0
        if self.num_workers == 0:
            # No worker_init_fn runs in the main process: seed the augmentation from the generator.
            seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
            _seed_transforms(self.source_dataset, seed % 2**32)
        iterator = super().__iter__()
        error = None
        for images, targets, bad in iterator:
            error = self._handle_bad_samples(bad)
            if error is not None:
                break
            if images is None:
                error = self._handle_empty_batch(bad)
                if error is not None:
                    break
                continue
            yield images, targets
        if error is not None:
            # Shut the workers down now, by dropping every reference to the iterator (ours and, with
            # persistent workers, the loader's). The error's traceback keeps this frame and usually
            # the caller's frame holding the loader alive; if the workers were left to the cyclic
            # garbage collector instead, torch's shutdown would find its queues already torn down
            # and wait 5 s per worker before killing them.
            if self._iterator is iterator:
                self._iterator = None
            del iterator
            raise error

    def _handle_bad_samples(self, bad: list[BadSample]) -> DataError | None:
        """Apply the policy to a batch's bad samples; returns the error to raise, if any."""
        for record in bad:
            if self.bad_sample == "raise":
                error = DataError(f"cannot load {record.describe()}")
                if record.details:
                    error.add_note("traceback in the data loader worker:\n" + record.details.rstrip())
                return error
            self.skipped.append(record)
            self.total_skipped += 1
            logger.warning("skipped bad %s", record.describe())
        return None

    def _handle_empty_batch(self, bad: list[BadSample]) -> DataError | None:
        if self.distributed:
            return DataError(
                "every sample of a batch failed to load (" + "; ".join(r.describe() for r in bad) + "); with "
                "distributed training a batch cannot be dropped on one rank without desynchronising the "
                "others. Fix or remove these files (detkit check-data lists them)."
            )
        self.num_skipped_batches += 1
        logger.warning("dropped a batch: all of its %d samples failed to load", len(bad))
        return None


def build_dataloader(dataset, *, batch_size: int, shuffle: bool, num_workers: int = 0, drop_last: bool = False,
                     distributed: bool = False, seed: int = 0, pin_memory: bool | None = None,
                     persistent_workers: bool | None = None, bad_sample: str = "raise") -> DetectionDataLoader:
    """Build the loader of a detection dataset (see the module docstring for seeding and bad samples)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    rank = 0
    sampler = None
    if distributed:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("build_dataloader(distributed=True) needs an initialised torch.distributed process "
                               "group (the launcher or detkit.engine.dist sets it up)")
        rank = dist.get_rank()
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, 0, rank, bits=63))
    return DetectionDataLoader(
        dataset,
        bad_sample=bad_sample,
        distributed=distributed,
        seed=seed,
        rank=rank,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=generator,
    )
