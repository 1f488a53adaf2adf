"""``detkit serve``: a trained detector behind an HTTP endpoint, with dynamic batching.

* :mod:`~detkit.serve.run`: the command (checks, uvicorn, ``--workers``);
* :mod:`~detkit.serve.app`: the FastAPI app (endpoints, body parsing, error answers, the page);
* :mod:`~detkit.serve.engine`: the model side (settings a request may ask, decoding uploads, one
  batch through the model, per-request filtering);
* :mod:`~detkit.serve.batching`: grouping concurrent requests into one forward pass, the bounded queue;
* :mod:`~detkit.serve.metrics`: ``GET /metrics`` (Prometheus);
* :mod:`~detkit.serve.launch`: the server as a subprocess on a free local port (tests, benchmarks, tools);
* ``static/index.html``: the page at ``GET /``.

The web stack is the ``serve`` extra (``pip install 'detkit[serve]'``); importing this package needs
none of it.
"""

from __future__ import annotations

import importlib.util

__all__ = ["SERVE_EXTRA", "require_serve_extra"]

SERVE_EXTRA = "pip install 'detkit[serve]'"
# import name -> distribution (python-multipart is imported as python_multipart, formerly multipart)
_NEEDS = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart",
          "prometheus_client": "prometheus-client"}


def require_serve_extra() -> None:
    """A one-line :class:`~detkit.errors.ConfigError` naming the extra when part of it is missing."""
    from detkit.errors import ConfigError

    missing = [dist for module, dist in _NEEDS.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(f"detkit serve needs the serve extra: {SERVE_EXTRA} (missing: {', '.join(missing)})")
