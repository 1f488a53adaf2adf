"""The verification pass: every sample of a data set is checked once, when the data set is built.

A training run must never die at epoch N on a data file. So :func:`verify_dataset` loads every
annotation and decodes every image once, before the first iteration, and
:func:`~detkit.data.builder.build_dataset` excludes the unusable samples from the data set, logging
their count and list. ``detkit check-data`` runs the same pass and prints the same report. What is
left for ``train.bad_sample`` are files that change while training runs.

A sample is **excluded** when its annotation cannot be used (malformed file, a ``file_name`` outside
the image folder...), its image file is missing, cannot be decoded, or has more pixels than the
limit (a decompression bomb; see :mod:`detkit.data.io`). A truncated JPEG is **restored** (decoded
as far as it goes) and kept, counted and listed as such.

**Cache.** Decoding every image of a big set takes minutes, so the result for each image file is
cached, keyed by the file's size and modification time (as ultralytics' ``labels.cache`` does): a
second run only ``stat``\\ s the files and starts at once. The cache holds one JSON file per set of
image folders under ``$DETKIT_CACHE_DIR`` (default ``$XDG_CACHE_HOME/detkit`` or ``~/.cache/detkit``);
a cache that cannot be written only costs the next run the decoding. The pixel limit is applied when
the cache is read, so changing it needs no re-decode.

**Parallel.** Images are checked in a thread pool: nearly all of the work is ``cv2.imdecode``, and
OpenCV's Python bindings release the GIL around it (``ERRWRAP2``), so threads decode in parallel
without pickling the data set to worker processes. JPEGs are checked at 1/8 scale (libjpeg still
decodes every block, so corrupt data fails the same way, at about half the cost).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from detkit.errors import DataError

__all__ = ["SampleCheck", "VerifyReport", "verify_dataset", "check_sample", "can_verify", "cache_dir",
           "format_problem_list"]

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
_CHUNK = 512  # samples queued to the thread pool at a time

# Why a sample is excluded, in report order, with the words used in messages.
EXCLUDE_KINDS = {
    "annotation": "unusable annotations",
    "missing": "missing image files",
    "undecodable": "undecodable image files",
    "too_large": "images over the pixel limit",
}


@dataclass
class SampleCheck:
    """The verdict on one sample."""

    index: int
    path: str = ""
    annotation: object = None  # the Annotation while ``on_check`` sees it (then dropped: memory)
    num_boxes: int = 0
    size: tuple | None = None  # (height, width) of the decoded image
    restored: str | None = None  # why the image had to be restored (a truncated JPEG)
    excluded: str | None = None  # key of EXCLUDE_KINDS
    message: str | None = None  # the DataError message behind ``excluded``
    cached: bool = False


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_dataset` (``checks[i]`` is sample ``i`` of the data set as built)."""

    name: str
    checks: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def excluded(self) -> list[SampleCheck]:
        return [c for c in self.checks if c.excluded]

    @property
    def restored(self) -> list[SampleCheck]:
        return [c for c in self.checks if c.restored and not c.excluded]

    @property
    def from_cache(self) -> int:
        return sum(c.cached for c in self.checks)

    @property
    def num_boxes(self) -> int:
        """Boxes in the usable samples."""
        return sum(c.num_boxes for c in self.checks if not c.excluded)

    def excluded_by_kind(self) -> Counter:
        return Counter(c.excluded for c in self.excluded)

    def summary(self, max_listed: int = 10) -> str:
        """The lines the log and check-data print: counts, then the files (the first ``max_listed``)."""
        n, excluded, restored = len(self.checks), self.excluded, self.restored
        kinds = self.excluded_by_kind()
        head = (f"{self.name}: verified {n} samples in {self.seconds:.1f} s ({self.from_cache} from the cache): "
                f"{n - len(excluded)} usable, {len(excluded)} excluded")
        if kinds:
            head += " (" + ", ".join(f"{kinds[k]} {EXCLUDE_KINDS[k]}" for k in EXCLUDE_KINDS if kinds[k]) + ")"
        head += f", {len(restored)} truncated JPEGs restored"
        lines = [head]
        lines += format_problem_list("excluded", [c.message for c in excluded], max_listed)
        lines += format_problem_list("restored", [f"{c.path}: {c.restored}" for c in restored], max_listed)
        return "\n".join(lines)


def format_problem_list(title: str, items: list, max_listed: int = 10) -> list[str]:
    """``title (first k of n):`` and the first ``max_listed`` items, indented; nothing for no items."""
    if not items:
        return []
    lines = [f"  {title} ({'all' if len(items) <= max_listed else f'first {max_listed} of'} {len(items)}):"]
    lines += [f"    {item}" for item in items[:max_listed]]
    return lines


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$DETKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/detkit``, else ``~/.cache/detkit``."""
    if os.environ.get("DETKIT_CACHE_DIR"):
        return Path(os.environ["DETKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "detkit"


class _Cache:
    """``path -> [size, mtime_ns, status, height, width, message]`` for one set of image folders.

    ``status``: ``ok`` / ``restored`` (decoded; size after EXIF), ``bad`` (undecodable: message),
    ``large`` (only the header was read, it was over the limit then; size as declared).
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict = {}
        self.dirty = False
        if path is None:
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict):
                self.entries = data["entries"]
        except (OSError, ValueError):
            pass  # no cache yet, or an unreadable one: it is rebuilt

    def get(self, path: str, stat: os.stat_result):
        entry = self.entries.get(path)
        if entry is not None and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry
        return None

    def put(self, path: str, stat: os.stat_result, status: str, height: int, width: int, message) -> list:
        entry = [stat.st_size, stat.st_mtime_ns, status, height, width, message]
        self.entries[path] = entry
        self.dirty = True
        return entry

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".verify.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": CACHE_VERSION, "entries": self.entries}, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.warning("could not write the verification cache %s (%s): the next run decodes every "
                           "image again; set DETKIT_CACHE_DIR to a writable folder", self.path, exc.strerror or exc)


def _cache_file(paths: list[str]) -> Path:
    folders = sorted({os.path.dirname(p) for p in paths if p})
    key = hashlib.sha1("\n".join(folders).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return cache_dir() / "verify" / f"{key}.json"


# ----------------------------------------------------------------------------------------------
# One sample
# ----------------------------------------------------------------------------------------------
def _image_verdict(path: str, cache: _Cache, max_pixels: int | None) -> tuple[list, bool]:
    """The cache entry for ``path`` (checking the file when the cache has none); ``(entry, cached)``."""
    from detkit.data.io import ImageTooLargeError, check_image_file, max_image_pixels

    stat = os.stat(path)
    entry = cache.get(path, stat)
    if entry is not None:
        status, height, width = entry[2], entry[3], entry[4]
        # A file refused under a lower limit is decoded once the limit allows it.
        if not (status == "large" and not _over(height, width, max_image_pixels(max_pixels))):
            return entry, True
    try:
        check = check_image_file(path, max_pixels)
    except ImageTooLargeError as exc:
        return cache.put(path, stat, "large", exc.height, exc.width, None), False
    except DataError as exc:
        return cache.put(path, stat, "bad", 0, 0, str(exc)), False
    status = "restored" if check.restored else "ok"
    return cache.put(path, stat, status, check.height, check.width, check.restored), False


def _over(height: int, width: int, limit: int) -> bool:
    return bool(limit) and height * width > limit


def check_sample(dataset, index: int, cache: _Cache | None = None, max_pixels: int | None = None,
                 path: str | None = None) -> SampleCheck:
    """Check the image file of sample ``index``, then load its annotation (see the module docstring).

    A sample with a bad image file and a bad annotation is reported for its image, except when no
    image path can be given at all and the annotation says why (an unsafe COCO ``file_name``).
    """
    result = SampleCheck(index)
    path_error = None
    try:
        path = path or str(dataset.image_path(index))  # (verify_dataset knows the paths already)
    except DataError as exc:  # no image file found, or (COCO) a file_name that leaves img_dir
        path_error = str(exc)
    else:
        result.path = path
        _check_image(result, path, cache if cache is not None else _Cache(None), max_pixels)
    note = getattr(dataset, "note_image_size", None)  # data sets not derived from DetectionDataset lack it
    if result.size is not None and note is not None:
        note(index, result.size)
    try:
        result.annotation = dataset.load_annotation(index)
        result.num_boxes = len(result.annotation.boxes)
    except DataError as exc:
        if not result.excluded:
            result.excluded, result.message = "annotation", str(exc)
    if path_error and not result.excluded:
        result.excluded, result.message = "missing", path_error
    return result


def _check_image(result: SampleCheck, path: str, cache: _Cache, max_pixels: int | None) -> None:
    from detkit.data.io import max_image_pixels

    try:
        entry, result.cached = _image_verdict(path, cache, max_pixels)
    except FileNotFoundError:
        result.excluded, result.message = "missing", f"image file not found: {path}"
        return
    except OSError as exc:
        result.excluded, result.message = "undecodable", f"{path}: cannot read image file: {exc.strerror or exc}"
        return
    status, height, width, message = entry[2], entry[3], entry[4], entry[5]
    limit = max_image_pixels(max_pixels)
    if status == "bad":
        result.excluded, result.message = "undecodable", message
    elif status == "large" or _over(height, width, limit):
        result.excluded = "too_large"
        result.message = (f"{path}: refused, {width}x{height} = {width * height:,} pixels is over the limit of "
                          f"{limit:,} (data.max_image_pixels; 0 = no limit)")
    else:
        result.size = (height, width)
        result.restored = message


# ----------------------------------------------------------------------------------------------
# The whole data set
# ----------------------------------------------------------------------------------------------
def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use (containers, taskset)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def can_verify(dataset) -> bool:
    """Whether ``dataset`` has files to check: it implements ``image_path`` and ``load_annotation``
    (a data set that makes its samples in memory, as some tests and plugins do, has nothing to verify)."""
    from detkit.data.base import DetectionDataset

    for name in ("image_path", "load_annotation"):
        method = getattr(type(dataset), name, None)
        if not callable(method) or method is getattr(DetectionDataset, name):
            return False
    return True


def verify_dataset(dataset, *, name: str = "data", workers: int | None = None, cache: bool = True,
                   max_pixels: int | None = None, progress: bool = True,
                   on_check: Callable[[SampleCheck], None] | None = None) -> VerifyReport:
    """Check every sample of ``dataset`` once; returns the :class:`VerifyReport` (nothing is excluded here).

    ``max_pixels`` defaults to the data set's ``max_image_pixels``; ``cache=False`` decodes every
    image again (and refreshes the cache). ``on_check`` sees each :class:`SampleCheck` in index order,
with its annotation (the report keeps only the box count).
    """
    from tqdm import tqdm

    from detkit.data.io import max_image_pixels

    if max_pixels is None:
        max_pixels = getattr(dataset, "max_image_pixels", None)
    start = time.perf_counter()
    n = len(dataset)
    paths = []
    for i in range(n):
        try:
            paths.append(str(dataset.image_path(i)))
        except DataError:
            paths.append("")
    store = _Cache(_cache_file(paths))
    if not cache:
        store.entries = {}
    workers = max(1, int(workers or _cpu_count()))
    report = VerifyReport(name)

    limit = max_image_pixels(max_pixels)

    def cached(i: int) -> bool:
        try:
            entry = store.get(paths[i], os.stat(paths[i])) if paths[i] else None
        except OSError:
            return True  # missing: nothing to decode, answered at once
        return entry is not None and not (entry[2] == "large" and not _over(entry[3], entry[4], limit))

    def run(i: int) -> SampleCheck:
        return check_sample(dataset, i, store, max_pixels, paths[i] or None)

    def results():
        # In chunks, so a 100k-image set does not queue 100k futures at once; results come back in
        # index order, so the report does not depend on the number of threads. Samples whose image
        # the cache answers are checked right here: a thread hop costs more than the check itself.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for lo in range(0, n, _CHUNK):
                chunk = [(i, None) if cached(i) else (i, pool.submit(run, i)) for i in range(lo, min(lo + _CHUNK, n))]
                for i, future in chunk:
                    yield run(i) if future is None else future.result()

    bar = tqdm(results(), total=n, desc=f"verify {name}", unit="img", file=sys.stderr, leave=False,
               disable=None if progress else True, mininterval=0.5)
    for check in bar:
        if on_check is not None:
            on_check(check)
        check.annotation = None  # 100k Annotation objects would cost ~150 MB for nothing
        report.checks.append(check)
    store.save()
    report.seconds = time.perf_counter() - start
    return report


def log_report(report: VerifyReport, max_listed: int = 10) -> None:
    """Log the report: one info line when everything is usable, a warning with the lists otherwise."""
    text = report.summary(max_listed)
    if report.excluded or report.restored:
        logger.warning("%s", text)
    else:
        logger.info("%s", text)
