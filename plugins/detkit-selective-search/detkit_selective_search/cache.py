"""A disk cache of proposal arrays, one ``.npy`` file per key.

Safe to share between the worker processes of :func:`~detkit_selective_search.precompute` and of a
DataLoader: every file is written to a temporary name in the same folder and renamed into place, so a
reader sees either no file or a complete one, and two writers of the same key just both win.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["ProposalCache", "default_cache_dir"]

logger = logging.getLogger(__name__)

CACHE_ENV = "DETKIT_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$DETKIT_CACHE_DIR/proposals``, else ``$XDG_CACHE_HOME/detkit/proposals``, else ``~/.cache/...``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "proposals"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "detkit" / "proposals"


class ProposalCache:
    """``get(key)`` / ``put(key, boxes)`` for float32 ``[P, 4]`` arrays under ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        # Two-character fan-out keeps folders small for data sets of 100k images.
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        try:
            boxes = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as exc:
            # A damaged entry (disk full, killed mid-copy by another tool) is recomputed, not fatal.
            logger.warning("proposal cache entry %s is unreadable (%s); recomputing it", path, exc)
            return None
        if boxes.dtype != np.float32 or boxes.ndim != 2 or boxes.shape[1] != 4:
            logger.warning("proposal cache entry %s holds %s %s, not float32 [P, 4]; recomputing it",
                           path, boxes.dtype, boxes.shape)
            return None
        return boxes

    def put(self, key: str, boxes: np.ndarray) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(boxes, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __repr__(self):
        return f"ProposalCache({str(self.root)!r})"
