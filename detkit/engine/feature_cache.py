"""A disk cache of per-image region features: what R-CNN's stage 2 writes and its stages 3-4 read.

Layout (one folder per cache)::

    manifest.json          {"format": "detkit-region-features", "version": 1, "header": {...}}
    000000.npz ...         one file per image (dataset index), numpy arrays only

The header says what the entries were computed from (layers and sizes, storage dtype, a fingerprint
of the fine-tuned network, the image ids, the proposal settings). Opening a cache whose manifest
differs from the expected header (another network, other proposals, an older format) removes the
stale entries with a warning and starts afresh: features of another network must never be mixed in.

Writing is resumable: every entry is written to a temporary file and renamed into place, so after an
interruption an entry is either complete or absent, and :meth:`FeatureCache.missing` lists what is
left to compute. Entries load with ``allow_pickle=False``; an unreadable one is a :class:`DataError`
naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from detkit.errors import DataError
from detkit.jsonio import to_jsonable, write_json

__all__ = ["FeatureCache", "CACHE_FORMAT", "CACHE_VERSION"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = "detkit-region-features"
# Bump when the entries' layout changes: older caches are then recomputed, not misread.
CACHE_VERSION = 1
_MANIFEST = "manifest.json"


class FeatureCache:
    """``num_items`` entries of named numpy arrays under ``root``, valid for ``header``."""

    def __init__(self, root: str | os.PathLike, header: Mapping, num_items: int):
        self.root = Path(root)
        self.header = to_jsonable(dict(header))
        self.num_items = int(num_items)

    def path(self, index: int) -> Path:
        return self.root / f"{index:06d}.npz"

    def open(self) -> FeatureCache:
        """Create the folder and manifest, or check an existing one (stale entries are removed)."""
        manifest = self.root / _MANIFEST
        expected = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "header": self.header}
        if manifest.is_file():
            try:
                found = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                found = None
            if found == expected:
                return self
            logger.warning("feature cache %s was computed for other settings (%s); recomputing it", self.root,
                           _difference(found, expected))
            self.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(manifest, expected)
        return self

    def clear(self) -> None:
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.suffix == ".npz" or entry.name == _MANIFEST or entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)

    def missing(self) -> list[int]:
        """Indices without a complete entry."""
        return [i for i in range(self.num_items) if not self.path(i).is_file()]

    def write(self, index: int, arrays: Mapping[str, np.ndarray]) -> Path:
        path = self.path(index)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def read(self, index: int) -> dict[str, np.ndarray]:
        path = self.path(index)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise DataError(f"{path}: feature cache entry missing (the features stage has not finished)") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: unreadable feature cache entry ({type(exc).__name__}: {exc}); delete it "
                            f"and run again with --resume to recompute it") from None

    def nbytes(self) -> int:
        return sum(self.path(i).stat().st_size for i in range(self.num_items) if self.path(i).is_file())


def _difference(found, expected: Mapping) -> str:
    if not isinstance(found, Mapping):
        return "unreadable manifest"
    if (found.get("format"), found.get("version")) != (expected["format"], expected["version"]):
        return f"format {found.get('format')} v{found.get('version')}"
    old, new = found.get("header") or {}, expected["header"]
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "different " + ", ".join(keys)
