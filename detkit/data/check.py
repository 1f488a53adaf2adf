"""``detkit check-data``: read every sample of a config's data once and report counts and problems.

For each split the dataset is built as training builds it, then the verification pass that training
runs (:mod:`detkit.data.verify`: every annotation loaded, every image decoded with the same reader,
in parallel, cached by file size and modification time) is run and reported in full: what training
would exclude (missing, undecodable or over-the-pixel-limit images, unusable annotations), what it
restores (truncated JPEGs), and the per-class counts and everything the annotation loaders cleaned.

Exit status 1 when a split cannot be built or a sample would be excluded from training (a problem to
fix, even though training runs without those samples); cleaned boxes, restored JPEGs and the like are
warnings. ``--no-cache`` decodes every image again.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from detkit.data.base import ANNOTATION_STATS, CHOICE_STATS
from detkit.data.verify import EXCLUDE_KINDS, SampleCheck, format_problem_list
from detkit.errors import ConfigError, DetkitError

__all__ = ["check_data", "check_split", "SplitReport", "format_report", "data_splits"]


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
    excluded: dict = field(default_factory=lambda: {kind: [] for kind in EXCLUDE_KINDS})  # kind -> messages
    restored: list = field(default_factory=list)  # "path: why" of the truncated JPEGs restored
    build_error: str | None = None
    verification: object = field(default=None, compare=False)  # the VerifyReport training would log

    @property
    def fatal(self) -> bool:
        return bool(self.build_error or any(self.excluded.values()))

    @property
    def missing_images(self) -> list:
        return self.excluded["missing"]

    @property
    def corrupt_images(self) -> list:
        return self.excluded["undecodable"]

    @property
    def annotation_errors(self) -> list:
        return self.excluded["annotation"]

    @property
    def unknown_names(self) -> Counter:
        return Counter({k.split(":", 1)[1]: v for k, v in self.stats.items() if k.startswith("unknown_class:")})


def data_splits(cfg: dict) -> list[str]:
    """Names of the splits the config's ``data`` section defines (dicts with a ``type``)."""
    data = cfg.get("data") or {}
    return [name for name, value in data.items() if isinstance(value, dict) and "type" in value]


def check_split(cfg: dict, split: str, workers: int | None = None, progress: bool = True,
                cache: bool = True) -> SplitReport:
    """Build the dataset of ``split`` and run the verification pass over it; returns the counts."""
    from detkit.data.builder import build_dataset
    from detkit.data.verify import can_verify, verify_dataset
    from detkit.tasks import DETECTION, check_dataset_task

    defined = data_splits(cfg)
    if split not in defined:
        raise ConfigError(f"data.{split}: no such split in the config; it defines: {', '.join(defined) or 'none'}")
    report = SplitReport(split=split, dataset=str(cfg["data"][split]["type"]))
    try:
        dataset = build_dataset(cfg, split, verify=False)
        check_dataset_task(dataset, DETECTION, f"data.{split}", "check-data reads detection data")
    except DetkitError as exc:  # e.g. a root that is not a VOC folder: report it, check the other splits
        report.build_error = str(exc)
        return report
    report.classes = tuple(dataset.classes)
    report.images = len(dataset)
    if not can_verify(dataset):
        report.build_error = (f"{type(dataset).__name__} has no image files to check (it implements no "
                              "image_path / load_annotation)")
        return report
    report.verification = verify_dataset(dataset, name=f"data.{split}", workers=workers, cache=cache,
                                         progress=progress, on_check=lambda check: _add(report, check))
    return report


def _add(report: SplitReport, check: SampleCheck) -> None:
    if check.excluded:
        report.excluded[check.excluded].append(check.message)
    if check.size is not None:
        report.images_read += 1
    if check.restored:
        report.restored.append(f"{check.path}: {check.restored}")
    ann = check.annotation
    if ann is None:
        return
    report.stats.update(ann.stats)
    for label in ann.labels.tolist():
        report.boxes_per_class[report.classes[label]] += 1
    report.difficult += int(ann.difficult.sum())
    report.crowd += int(ann.iscrowd.sum())
    if len(ann.boxes) == 0:
        report.empty_images += 1
    if check.size is None:
        return
    height, width = check.size
    if ann.width is not None and (ann.width, ann.height) != (width, height):
        report.size_mismatch.append((check.path, f"{ann.width}x{ann.height}", f"{width}x{height}"))
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
    for key, text in CHOICE_STATS:
        if report.stats.get(key):
            lines.append(row(text, report.stats[key]))

    lines.append("  excluded from training (fix or remove these files)")
    for kind, text in EXCLUDE_KINDS.items():
        n = len(report.excluded[kind])
        lines.append(row(text, n, "FATAL" if n else "ok"))
    lines.append("  warnings")
    lines.append(row("truncated JPEGs restored (decoded as far as they go)", len(report.restored),
                     "warn" if report.restored else "ok"))
    for key, text in ANNOTATION_STATS:
        n = report.stats.get(key, 0)
        lines.append(row(text, n, "warn" if n else "ok"))
    lines.append(row("<size> different from the decoded image", len(report.size_mismatch),
                     "warn" if report.size_mismatch else "ok"))
    lines.append(row("boxes outside the decoded image (clipped at load)", report.outside_decoded,
                     "warn" if report.outside_decoded else "ok"))
    if report.verification is not None:  # the lines training logs when it builds this split
        lines += ["  " + line for line in report.verification.summary(max_listed).splitlines()]

    def listing(title: str, items: list) -> None:
        lines.extend("  " + line for line in format_problem_list(title, items, max_listed))

    unknown = report.unknown_names
    listing("unknown class names", [f"{name}: {n}" for name, n in unknown.most_common()])
    listing("size mismatches (file: stated WxH -> real WxH)",
            [f"{path}: {stated} -> {real}" for path, stated, real in report.size_mismatch])
    return "\n".join(lines)


def check_data(cfg: dict, split: str = "all", workers: int | None = None, *, file: TextIO | None = None,
               max_listed: int = 10, progress: bool = True, cache: bool = True) -> bool:
    """Check the ``split`` of the config's data (``"all"``: every split it defines).

    Prints one table per split and a verdict; returns True when a fatal problem was found (a sample
    training would exclude, or a dataset that cannot be built).
    """
    out = file if file is not None else sys.stdout
    splits = data_splits(cfg) if split == "all" else [split]
    if not splits:
        raise ConfigError("data: the config defines no splits (dicts with a 'type') to check")
    fatal = []
    for name in splits:
        report = check_split(cfg, name, workers=workers, progress=progress, cache=cache)
        print(format_report(report, max_listed=max_listed), file=out)
        print(file=out)
        if report.fatal:
            fatal.append(name)
    if fatal:
        print(f"check-data: FATAL problems in {', '.join(fatal)}; training would exclude the samples listed "
              "(or cannot build the split): fix them", file=out)
    else:
        print(f"check-data: OK ({', '.join(splits)})", file=out)
    out.flush()
    return bool(fatal)

