"""``detkit check-data``: read every sample of a config's data once and report counts and problems.

For each split the dataset is built as training would build it, then every annotation is loaded and
every image decoded with the same reader training uses (:func:`detkit.data.io.read_image`). Work runs
in a thread pool: nearly all of it is ``cv2.imdecode``, and OpenCV's Python bindings release the GIL
around every call (``ERRWRAP2`` / ``PyAllowThreads``), so threads run decodes in parallel without
pickling the dataset to worker processes. (On the 2-CPU development machine a process pool was never
faster than the thread pool.)

Fatal (exit status 1): the dataset cannot be built, an image file is missing or cannot be decoded
(including truncated files), an annotation cannot be parsed. Everything that was cleaned or skipped
(unknown classes, clipped / dropped boxes, missing or wrong ``<size>``) is a warning.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TextIO

from detkit.errors import ConfigError, DataError, DetkitError

__all__ = ["check_data", "check_split", "SplitReport", "format_report", "data_splits"]

_CHUNK = 512  # samples queued to the thread pool at a time

# Annotation.stats counters reported as warnings, in display order, with their explanations.
WARNING_STATS = (
    ("unknown_class", "boxes of unknown classes (skipped)"),
    ("clipped", "boxes partly outside the image (clipped)"),
    ("outside", "boxes entirely outside the image (dropped)"),
    ("dropped", "zero-area / inverted boxes (dropped)"),
    ("size_missing", "annotations without a usable <size>"),
)
# Counters that are the user's choice, shown for information.
INFO_STATS = (
    ("skipped_difficult", "difficult boxes left out (skip_difficult)"),
    ("excluded_class", "boxes of classes not selected (classes=)"),
)


@dataclass
class SplitReport:
    """What check-data found in one split."""

    split: str
    dataset: str = ""
    classes: tuple = ()
    images: int = 0
    images_read: int = 0
    empty_images: int = 0
    boxes_per_class: Counter = field(default_factory=Counter)
    difficult: int = 0
    crowd: int = 0
    stats: Counter = field(default_factory=Counter)  # summed Annotation.stats
    size_mismatch: list = field(default_factory=list)  # (path, stated WxH, real WxH)
    outside_decoded: int = 0  # boxes (partly) outside the decoded image: clipped or dropped at load
    missing_images: list = field(default_factory=list)  # messages naming the missing file
    corrupt_images: list = field(default_factory=list)  # messages naming the file and the problem
    annotation_errors: list = field(default_factory=list)
    build_error: str | None = None

    @property
    def fatal(self) -> bool:
        return bool(self.build_error or self.missing_images or self.corrupt_images or self.annotation_errors)

    @property
    def unknown_names(self) -> Counter:
        return Counter({k.split(":", 1)[1]: v for k, v in self.stats.items() if k.startswith("unknown_class:")})


@dataclass
class _Sample:
    annotation: object = None
    annotation_error: str | None = None
    missing_image: str | None = None
    corrupt_image: str | None = None
    image_size: tuple | None = None  # (H, W) decoded
    path: str = ""


def data_splits(cfg: dict) -> list[str]:
    """Names of the splits the config's ``data`` section defines (dicts with a ``type``)."""
    data = cfg.get("data") or {}
    return [name for name, value in data.items() if isinstance(value, dict) and "type" in value]


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use (containers, taskset)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_one(dataset, index: int) -> _Sample:
    from detkit.data.io import read_image

    result = _Sample()
    try:
        result.annotation = dataset.load_annotation(index)
    except DataError as exc:
        result.annotation_error = str(exc)
    try:
        path = dataset.image_path(index)
    except DataError as exc:
        result.missing_image = str(exc)
        return result
    result.path = str(path)
    try:
        image = read_image(path)
    except DataError as exc:
        if os.path.exists(path):
            result.corrupt_image = str(exc)
        else:
            result.missing_image = str(exc)
        return result
    result.image_size = image.shape[:2]
    return result


def check_split(cfg: dict, split: str, workers: int | None = None, progress: bool = True) -> SplitReport:
    """Build the dataset of ``split`` and read every sample once; returns the counts."""
    from detkit.data.builder import build_dataset
    from detkit.tasks import DETECTION, check_dataset_task

    defined = data_splits(cfg)
    if split not in defined:
        raise ConfigError(f"data.{split}: no such split in the config; it defines: {', '.join(defined) or 'none'}")
    report = SplitReport(split=split, dataset=str(cfg["data"][split]["type"]))
    try:
        dataset = build_dataset(cfg, split)
        check_dataset_task(dataset, DETECTION, f"data.{split}", "check-data reads detection data")
    except DetkitError as exc:  # e.g. a root that is not a VOC folder: report it, check the other splits
        report.build_error = str(exc)
        return report
    report.classes = tuple(dataset.classes)
    report.images = len(dataset)
    workers = max(1, int(workers or _cpu_count()))

    from tqdm import tqdm

    def results():
        # In chunks, so a 100k-image split does not queue 100k futures at once; results come back in
        # index order, so the report does not depend on the number of workers.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(dataset), _CHUNK):
                stop = min(start + _CHUNK, len(dataset))
                yield from pool.map(lambda i: _check_one(dataset, i), range(start, stop))

    for sample in tqdm(results(), total=len(dataset), desc=f"check-data {split}", unit="img",
                       disable=None if progress else True, leave=False, file=sys.stderr):
        _add(report, sample)
    return report


def _add(report: SplitReport, sample: _Sample) -> None:
    if sample.annotation_error:
        report.annotation_errors.append(sample.annotation_error)
    if sample.missing_image:
        report.missing_images.append(sample.missing_image)
    if sample.corrupt_image:
        report.corrupt_images.append(sample.corrupt_image)
    if sample.image_size is not None:
        report.images_read += 1
    ann = sample.annotation
    if ann is None:
        return
    report.stats.update(ann.stats)
    for label in ann.labels.tolist():
        report.boxes_per_class[report.classes[label]] += 1
    report.difficult += int(ann.difficult.sum())
    report.crowd += int(ann.iscrowd.sum())
    if len(ann.boxes) == 0:
        report.empty_images += 1
    if sample.image_size is None:
        return
    height, width = sample.image_size
    if ann.width is not None and (ann.width, ann.height) != (width, height):
        report.size_mismatch.append((sample.path, f"{ann.width}x{ann.height}", f"{width}x{height}"))
    if len(ann.boxes):
        b = ann.boxes
        report.outside_decoded += int(((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > width) | (b[:, 3] > height)).sum())


def format_report(report: SplitReport, max_listed: int = 10) -> str:
    """The report of one split as a readable table."""
    lines = [f"split '{report.split}' ({report.dataset or 'dataset'})"]
    if report.build_error:
        lines.append(f"  FATAL  cannot build the dataset: {report.build_error}")
        return "\n".join(lines)
    width = 52

    def row(label: str, value, mark: str = "") -> str:
        return f"  {mark:<7}{label:<{width}}{value:>8}"

    lines.append(row("images", report.images))
    lines.append(row("images decoded", report.images_read))
    lines.append(row("empty images (no boxes: negatives)", report.empty_images))
    lines.append(row("boxes", sum(report.boxes_per_class.values())))
    for name in report.classes:
        lines.append(row(f"  {name}", report.boxes_per_class.get(name, 0)))
    lines.append(row("difficult boxes (kept, flagged)", report.difficult))
    if report.crowd:
        lines.append(row("crowd boxes (kept as ignore regions)", report.crowd))
    for key, text in INFO_STATS:
        if report.stats.get(key):
            lines.append(row(text, report.stats[key]))

    lines.append("  problems")
    for text, items in (("missing image files", report.missing_images),
                        ("unreadable / corrupt image files", report.corrupt_images),
                        ("unusable annotation files", report.annotation_errors)):
        lines.append(row(text, len(items), "FATAL" if items else "ok"))
    for key, text in WARNING_STATS:
        n = report.stats.get(key, 0)
        lines.append(row(text, n, "warn" if n else "ok"))
    lines.append(row("<size> different from the decoded image", len(report.size_mismatch),
                     "warn" if report.size_mismatch else "ok"))
    lines.append(row("boxes outside the decoded image (clipped at load)", report.outside_decoded,
                     "warn" if report.outside_decoded else "ok"))

    def listing(title: str, items: list) -> None:
        if not items:
            return
        lines.append(f"  {title} (first {min(len(items), max_listed)} of {len(items)}):")
        lines.extend(f"    {item}" for item in items[:max_listed])

    listing("missing image files", report.missing_images)
    listing("unreadable / corrupt image files", report.corrupt_images)
    listing("unusable annotation files", report.annotation_errors)
    unknown = report.unknown_names
    listing("unknown class names", [f"{name}: {n}" for name, n in unknown.most_common()])
    listing("size mismatches (file: stated WxH -> real WxH)",
            [f"{path}: {stated} -> {real}" for path, stated, real in report.size_mismatch])
    return "\n".join(lines)


def check_data(cfg: dict, split: str = "all", workers: int | None = None, *, file: TextIO | None = None,
               max_listed: int = 10, progress: bool = True) -> bool:
    """Check the ``split`` of the config's data (``"all"``: every split it defines).

    Prints one table per split and a verdict; returns True when a fatal problem was found (missing or
    corrupt image, unusable annotation, dataset that cannot be built).
    """
    out = file if file is not None else sys.stdout
    splits = data_splits(cfg) if split == "all" else [split]
    if not splits:
        raise ConfigError("data: the config defines no splits (dicts with a 'type') to check")
    fatal = []
    for name in splits:
        report = check_split(cfg, name, workers=workers, progress=progress)
        print(format_report(report, max_listed=max_listed), file=out)
        print(file=out)
        if report.fatal:
            fatal.append(name)
    if fatal:
        print(f"check-data: FATAL problems in {', '.join(fatal)}; fix them before training", file=out)
    else:
        print(f"check-data: OK ({', '.join(splits)})", file=out)
    out.flush()
    return bool(fatal)

