"""Dynamic batching: requests that arrive close together share one forward pass.

:class:`DynamicBatcher` runs in the server's event loop. A request first takes a place (:meth:`admit`,
the bounded queue: when ``max_queue`` requests are already admitted it is refused with
:class:`Overloaded`, which the web layer answers 503 with ``Retry-After``), prepares its image, then
:meth:`submit`\\ s it under a key. One loop takes the oldest waiting request, waits until
``max_batch`` requests with its key are waiting or ``max_wait`` seconds have passed since that
request arrived (Triton's ``max_queue_delay``; under load the wait is usually over already, as
requests pile up while the previous batch runs), and runs them in one call of ``run_batch(key,
items)`` on a dedicated thread, so the event loop keeps accepting and preparing requests meanwhile.
Result ``i`` of the call goes to the caller of item ``i``. Requests with another key wait for a batch
of their own, in arrival order.

Nothing here knows about models or HTTP (:mod:`detkit.serve.engine`, :mod:`detkit.serve.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

__all__ = ["DynamicBatcher", "Overloaded", "BatchInfo"]

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full (or the batcher stopped); ``retry_after``: seconds a client should wait."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class BatchInfo:
    """How a request's batch went: ``size`` (requests in it), ``queued`` (seconds from submit to the
    start of the forward pass) and ``run`` (seconds of ``run_batch``)."""

    size: int
    queued: float
    run: float


@dataclass
class _Entry:
    key: Hashable
    item: object
    future: asyncio.Future
    arrived: float


class DynamicBatcher:
    """See the module docstring. ``on_batch(size, seconds)`` is called after every batch (metrics).

    Use from the event loop: ``start()`` once, then per request ``with batcher.admit(): ... await
    batcher.submit(key, item)``; ``await stop()`` at shutdown."""

    def __init__(self, run_batch: Callable[[Hashable, Sequence], Sequence], *, max_batch: int = 8,
                 max_wait: float = 0.01, max_queue: int = 64,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self.run_batch, self.on_batch = run_batch, on_batch
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.in_flight = 0  # admitted and not yet answered (the bounded queue)
        self._pending: deque[_Entry] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="detkit-batch")
        self._batch_seconds = 0.0  # moving average of one batch, for Retry-After

    # -- the callers' side ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def admit(self):
        """A place in the queue for one request, held until it is answered; :class:`Overloaded` when
        ``max_queue`` requests already hold one."""
        if not self.running:
            raise Overloaded("the server is not running batches (starting or stopping)", 1)
        if self.in_flight >= self.max_queue:
            raise Overloaded(f"server busy: {self.in_flight} requests queued (--max-queue {self.max_queue})",
                             self.retry_after())
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def submit(self, key: Hashable, item) -> tuple[object, BatchInfo]:
        """Queue ``item`` for a batch of ``key``; returns its result and the batch's :class:`BatchInfo`
        (or raises what ``run_batch`` raised)."""
        loop = asyncio.get_running_loop()
        entry = _Entry(key, item, loop.create_future(), loop.time())
        self._pending.append(entry)
        self._arrived.set()
        return await entry.future

    def retry_after(self) -> int:
        """Seconds until the queue has drained at the recent speed (at least 1)."""
        batches = self.in_flight / self.max_batch
        return max(1, math.ceil(batches * self._batch_seconds))

    # -- the loop ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="detkit-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(Overloaded("the server is stopping", 1))
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._pending and self._pending[0].future.done():  # its caller went away
                self._pending.popleft()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            key = self._pending[0].key
            deadline = self._pending[0].arrived + self.max_wait
            while self._count(key) < self.max_batch and loop.time() < deadline:
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
            batch = self._take(key)
            if batch:
                await self._run(batch, loop)

    def _count(self, key) -> int:
        return sum(1 for entry in self._pending if entry.key == key and not entry.future.done())

    def _take(self, key) -> list[_Entry]:
        """Up to ``max_batch`` waiting entries of ``key`` in arrival order (dropping abandoned ones)."""
        batch, rest = [], deque()
        for entry in self._pending:
            if entry.future.done():  # the caller went away
                continue
            if entry.key == key and len(batch) < self.max_batch:
                batch.append(entry)
            else:
                rest.append(entry)
        self._pending = rest
        return batch

    async def _run(self, batch: list[_Entry], loop) -> None:
        start = loop.time()
        wall = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, batch[0].key,
                                                 [entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error; the loop goes on
            log.exception("batch of %d failed", len(batch))
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        seconds = time.perf_counter() - wall
        self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
        for entry, result in zip(batch, results):
            if not entry.future.done():
                entry.future.set_result((result, BatchInfo(len(batch), start - entry.arrived, seconds)))
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds)
