"""The run directory's life across runs: checked writable before anything else happens, cleared of
the temporary files a killed save left, an earlier run moved aside rather than overwritten, and the
checkpoint ``--resume`` continues from found (falling back past damaged files)."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from detkit.checkpoint import load_checkpoint
from detkit.errors import CheckpointError
from detkit.fileio import output_error, remove_stale_temp_files, temp_path

__all__ = ["prepare_work_dir", "archive_previous_run", "resume_candidates", "load_resume",
           "holds_a_run", "PreparedWorkDir"]

logger = logging.getLogger(__name__)

# What marks a folder as holding a run (any of a run's own files): a new run moves all of it aside.
_RUN_FILES = ("config.json", "train.log", "metrics.jsonl", "plots", "tensorboard")
_CHECKPOINT = re.compile(r"^(last|epoch_\d+|best_.+)\.pth$")


@dataclass
class PreparedWorkDir:
    """What :func:`prepare_work_dir` did, logged once the run's log is open."""

    archived: Path | None = None
    removed_temp_files: list[Path] = field(default_factory=list)

    def log(self, work_dir: Path) -> None:
        if self.removed_temp_files:
            logger.warning("removed %d temporary file(s) an interrupted save left in %s: %s",
                           len(self.removed_temp_files), work_dir,
                           ", ".join(p.name for p in self.removed_temp_files))
        if self.archived is not None:
            logger.warning("%s already held a run; moved it to %s (pass --resume to continue a run "
                           "instead)", work_dir, self.archived)


def prepare_work_dir(work_dir: Path, resume) -> PreparedWorkDir:
    """Make ``work_dir`` (checking it is writable: a read-only folder fails here, in one line, not at
    the first checkpoint), remove stale temporary files of detkit's naming, and move an earlier run
    aside unless this run continues it (``resume`` names a checkpoint in it, or ``"auto"`` finds
    one). Main process only."""
    done = PreparedWorkDir()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        probe = temp_path(work_dir / "write-test", unique=True)
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        raise output_error(work_dir, exc, "cannot write to the work dir") from exc
    done.removed_temp_files = remove_stale_temp_files(work_dir, subfolders=("plots",))
    if holds_a_run(work_dir) and not _continues(work_dir, resume):
        done.archived = archive_previous_run(work_dir)
    return done


def holds_a_run(work_dir: Path) -> bool:
    """Whether ``work_dir`` has any file a run writes (a checkpoint, config.json, train.log,
    metrics.jsonl, plots/, tensorboard/); a folder with other things only is left alone."""
    if not work_dir.is_dir():
        return False
    return any(p.name in _RUN_FILES or _CHECKPOINT.match(p.name) for p in work_dir.iterdir())


def _continues(work_dir: Path, resume) -> bool:
    if resume is None or resume is False:
        return False
    if resume == "auto" or resume is True:
        return bool(resume_candidates(work_dir))
    return Path(resume).resolve().parent == work_dir.resolve()


def archive_previous_run(work_dir: Path) -> Path:
    """Move the files of an earlier run to ``work_dir/previous/<time>/`` (never overwrite its
    checkpoints, metrics or log); returns that folder."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    target = work_dir / "previous" / stamp
    n = 1
    while target.exists():
        n += 1
        target = work_dir / "previous" / f"{stamp}_{n}"
    try:
        target.mkdir(parents=True)
        for item in work_dir.iterdir():
            if item.name != "previous":
                os.replace(item, target / item.name)
    except OSError as exc:
        raise output_error(work_dir, exc, "cannot move the earlier run aside in") from exc
    return target


def resume_candidates(work_dir: Path) -> list[Path]:
    """The checkpoints ``--resume`` may continue from, in the order tried: ``last.pth``, then the
    ``epoch_N.pth`` and ``best_*.pth`` files, newest first."""
    if not work_dir.is_dir():
        return []
    others = [p for p in work_dir.iterdir() if _CHECKPOINT.match(p.name) and p.name != "last.pth"
              and p.is_file()]

    def newest_first(p: Path):
        number = p.stem.split("_", 1)[1] if p.stem.startswith("epoch_") else ""
        return (-p.stat().st_mtime_ns, -(int(number) if number.isdigit() else -1), p.name)

    last = work_dir / "last.pth"
    return ([last] if last.is_file() else []) + sorted(others, key=newest_first)


def load_resume(resume, work_dir: Path, unsafe: bool = False) -> tuple[Path | None, dict | None]:
    """The checkpoint ``--resume`` means, loaded: ``None``/False: none; ``"auto"``/True: the first
    readable of :func:`resume_candidates` (a damaged ``last.pth`` falls back to the newest readable
    ``epoch_N.pth``, with a warning naming both), none at all: start from scratch with a warning, as
    mmengine does; a path: that file, which must exist and be readable."""
    if resume is None or resume is False:
        return None, None
    if resume == "auto" or resume is True:
        candidates = resume_candidates(work_dir)
        if not candidates:
            logger.warning("--resume: no checkpoint (last.pth or epoch_N.pth) in %s; starting from "
                           "scratch", work_dir)
            return None, None
        damaged = []
        for path in candidates:
            try:
                ckpt = load_checkpoint(path, unsafe=unsafe)
            except CheckpointError as exc:
                damaged.append(f"{path.name}: {str(exc).removeprefix(str(path) + ': ')}")
                continue
            if damaged:
                logger.warning("--resume: %s; resuming from %s instead", "; ".join(damaged), path)
            return path, ckpt
        raise CheckpointError(f"--resume: no readable checkpoint in {work_dir}: " + "; ".join(damaged))
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: checkpoint not found")
    return path, load_checkpoint(path, unsafe=unsafe)
