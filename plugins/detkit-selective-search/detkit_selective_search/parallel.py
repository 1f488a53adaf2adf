"""Fill the proposal cache for many images in parallel worker processes, with a progress bar.

Selective search is single-threaded C++ costing seconds per image, so the way to use several cores
is one image per process. Run this once before training an R-CNN; the training loader's generator
then reads every image's proposals from the cache.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from detkit.errors import ConfigError, DataError

from detkit_selective_search.selective_search import SelectiveSearch

__all__ = ["precompute", "PrecomputeReport"]

logger = logging.getLogger(__name__)


@dataclass
class PrecomputeReport:
    """What :func:`precompute` did. ``proposals`` is filled only with ``return_proposals=True``."""

    total: int = 0
    computed: int = 0
    cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    seconds: float = 0.0
    proposals: list[np.ndarray | None] | None = None

    def __str__(self):
        text = (f"{self.total} images: {self.computed} computed, {self.cached} already cached, "
                f"{len(self.failed)} failed ({self.seconds:.1f} s)")
        for name, reason in self.failed[:10]:
            text += f"\n  {name}: {reason}"
        if len(self.failed) > 10:
            text += f"\n  ... and {len(self.failed) - 10} more"
        return text


def _name(item, index: int) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"<array #{index}>"


def _load(item) -> np.ndarray:
    if isinstance(item, (str, os.PathLike)):
        # detkit's one image reader, so pixels (and so cache keys) equal what the datasets decode.
        from detkit.data.io import read_image

        return read_image(Path(item))
    return item


# The generator of each worker process, created once by the pool's initializer.
_WORKER_GENERATOR: SelectiveSearch | None = None


def _init_worker(generator: SelectiveSearch) -> None:
    global _WORKER_GENERATOR
    _WORKER_GENERATOR = generator


def _run_one(generator: SelectiveSearch, item) -> tuple[np.ndarray, bool]:
    before = generator.num_cached
    boxes = generator(_load(item))
    return boxes, generator.num_cached > before


def _worker(index: int, item, keep: bool):
    try:
        boxes, hit = _run_one(_WORKER_GENERATOR, item)
    except DataError as exc:
        return index, None, False, str(exc)
    return index, boxes if keep else None, hit, None


def precompute(
    images: Iterable,
    generator: SelectiveSearch | dict | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    return_proposals: bool = False,
) -> PrecomputeReport:
    """Compute (or find cached) proposals for every image; return counts and failures.

    Args:
        images: image paths (read with :func:`detkit.data.io.read_image`, the reader detkit's datasets
            use, so the cache keys match theirs) and/or ``uint8 [H, W, 3]`` RGB arrays.
        generator: a :class:`SelectiveSearch`, or the keyword arguments of one (its cache settings
            decide where results go). Default: ``SelectiveSearch()``.
        workers: worker processes (default: the CPU count); ``0`` or ``1`` runs in this process.
        progress: show a tqdm progress bar.
        return_proposals: also return every image's boxes (``None`` for a failed image), in input
            order. Off by default: for a large data set they belong in the cache, not in memory.

    An image that cannot be read is counted and logged in the report, not fatal.
    """
    from tqdm.auto import tqdm

    if generator is None:
        generator = SelectiveSearch()
    elif isinstance(generator, dict):
        generator = SelectiveSearch(**generator)
    if generator.cache is None and not return_proposals:
        raise ConfigError("precompute: the generator's cache is off (cache=False), so the results would be "
                          "thrown away; enable the cache or pass return_proposals=True")
    items = list(images)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    workers = max(1, min(workers, len(items)))
    report = PrecomputeReport(total=len(items), proposals=[None] * len(items) if return_proposals else None)
    start = time.perf_counter()
    bar = tqdm(total=len(items), desc="selective search", unit="img", disable=not progress)

    def record(index, boxes, hit, error):
        if error is not None:
            report.failed.append((_name(items[index], index), error))
            logger.warning("selective search skipped %s: %s", _name(items[index], index), error)
        elif hit:
            report.cached += 1
        else:
            report.computed += 1
        if return_proposals:
            report.proposals[index] = boxes
        bar.update(1)

    try:
        if workers == 1:
            _init_worker(generator)
            for index, item in enumerate(items):
                record(*_worker(index, item, return_proposals))
        else:
            # spawn, not fork: forking a process whose OpenCV / torch thread pools already ran can hang.
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=_init_worker, initargs=(generator,)) as pool:
                futures = [pool.submit(_worker, i, item, return_proposals) for i, item in enumerate(items)]
                for future in as_completed(futures):
                    record(*future.result())
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    logger.info("precompute: %s", report)
    return report
