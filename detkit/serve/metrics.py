"""``GET /metrics``: the server's Prometheus metrics, with the official client library.

=====================================  =============================================================
``detkit_requests_total``              requests answered, by ``endpoint`` and status ``code``
``detkit_request_errors_total``        the answers with a code >= 400, by ``endpoint`` and ``code``
``detkit_request_duration_seconds``    histogram of the time to answer, by ``endpoint``
``detkit_batch_size``                  histogram of the images per forward pass
``detkit_batch_duration_seconds``      histogram of the forward pass (preprocessed batch to detections)
``detkit_queue_requests``              requests admitted and not yet answered (the bounded queue)
=====================================  =============================================================

``endpoint`` is the route (``/v1/detect``...), or ``other`` for paths the server does not serve (so a
scan of random URLs cannot grow the label set). With ``--workers N`` the workers are separate
processes: ``detkit serve`` then points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder and any
worker's ``/metrics`` adds up all of them (the client library's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServeMetrics", "CONTENT_TYPE_LATEST", "MULTIPROC_ENV"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """The metrics of one server process (see the module docstring)."""

    def __init__(self, max_batch: int):
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # In multiprocess mode the values live in files and exposition reads them all; metrics must not
        # sit in the registry that collects them (they would be counted twice), so they get their own.
        self.registry = CollectorRegistry()
        if not self.multiprocess:
            from prometheus_client import ProcessCollector

            ProcessCollector(registry=self.registry)  # CPU time, memory, open files of this process
        reg = self.registry
        self.requests = Counter("detkit_requests", "Requests answered", ("endpoint", "code"), registry=reg)
        self.errors = Counter("detkit_request_errors", "Requests answered with an error (code >= 400)",
                              ("endpoint", "code"), registry=reg)
        self.latency = Histogram("detkit_request_duration_seconds", "Time to answer a request", ("endpoint",),
                                 buckets=_LATENCY_BUCKETS, registry=reg)
        sizes = [size for size in (1, 2, 4, 8, 16, 32, 64, 128) if size < max_batch] + [max_batch]
        self.batch_size = Histogram("detkit_batch_size", "Images per forward pass", buckets=sizes, registry=reg)
        self.batch_seconds = Histogram("detkit_batch_duration_seconds", "Forward pass of one batch",
                                       buckets=_LATENCY_BUCKETS, registry=reg)
        self.queue = Gauge("detkit_queue_requests", "Requests admitted and not yet answered", registry=reg,
                           multiprocess_mode="livesum")

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def expose(self) -> bytes:
        """The text exposition format (of every worker in multiprocess mode)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    @staticmethod
    def process_exited(pid: int | None = None) -> None:
        """Drop this (or a dead) worker's live gauges from the multiprocess files."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid or os.getpid())
