"""``detkit serve MODEL``: load the model, then run the app under uvicorn until stopped (Ctrl-C / SIGTERM).

With one worker (the default) the model is loaded here and the app object handed to uvicorn. With
``--workers N`` uvicorn starts N processes that each import the app factory
(:func:`detkit.serve.app.app_from_environment`) and load their own copy of the model: N times the
memory (the 448 ResNet-18 YOLOv1 holds 70M parameters, about 0.3 GB per worker on top of the runtime)
for requests served in parallel; each worker batches its own requests. The model is loaded once here
first, so a bad file is one error line rather than N worker tracebacks, and each worker gets
``CPUs / N`` intra-op threads unless ``--threads`` says otherwise (N workers with every core each
would fight over the same cores).
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile

from detkit.errors import ConfigError

__all__ = ["serve"]

log = logging.getLogger("detkit.serve")


def serve(options, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log_level: str = "info",
          announce=print) -> None:
    """Serve ``options`` (:class:`~detkit.serve.app.ServeOptions`) on ``host:port`` until stopped."""
    from detkit.serve import require_serve_extra

    require_serve_extra()
    import uvicorn

    from detkit.serve.app import OPTIONS_ENV, create_app
    from detkit.serve.metrics import MULTIPROC_ENV

    if workers < 1:
        raise ConfigError(f"--workers {workers}: at least 1")
    if workers > 1 and options.threads is None:
        options.threads = max(1, (os.cpu_count() or 1) // workers)
    engine = options.build_engine()
    info = engine.info()
    announce(f"detkit serve: {info['source']} ({info['kind']}, {info['detector']}, {len(info['classes'])} classes, "
             f"input {info['input_size'][0]}x{info['input_size'][1]}, {info['device']}), batches of up to "
             f"{options.max_batch} within {options.max_wait_ms:g} ms, {workers} worker(s); "
             f"page http://{host}:{port}/, API http://{host}:{port}/v1/detect")
    common = dict(host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
    if workers == 1:
        uvicorn.run(create_app(engine, options), **common)
        return
    del engine
    gc.collect()  # the check above is done: free its copy of the weights before the workers load theirs
    os.environ[OPTIONS_ENV] = options.to_json()
    with tempfile.TemporaryDirectory(prefix="detkit-serve-metrics-") as folder:
        # every worker writes its metrics here and /metrics adds them up (see detkit.serve.metrics)
        os.environ.setdefault(MULTIPROC_ENV, folder)
        uvicorn.run("detkit.serve.app:app_from_environment", factory=True, workers=workers, **common)
