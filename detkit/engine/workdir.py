"""The run directory's life across runs: an earlier run is moved aside rather than overwritten, and
``--resume`` finds the checkpoint to continue from."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from detkit.errors import CheckpointError

__all__ = ["archive_previous_run", "find_resume"]

logger = logging.getLogger(__name__)


def archive_previous_run(work_dir: Path) -> Path:
    """Move the files of an earlier run to ``work_dir/previous/<time>/`` (never overwrite its
    checkpoints); returns that folder."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    target = work_dir / "previous" / stamp
    n = 1
    while target.exists():
        n += 1
        target = work_dir / "previous" / f"{stamp}_{n}"
    target.mkdir(parents=True)
    for item in work_dir.iterdir():
        if item.name != "previous":
            os.replace(item, target / item.name)
    return target


def find_resume(resume, work_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` means: ``None``/False: none; ``"auto"``/True: ``last.pth`` of the
    work dir, else its newest ``epoch_N.pth``, else none (with a warning, like mmengine); a path:
    that file, which must exist."""
    if resume is None or resume is False:
        return None
    if resume == "auto" or resume is True:
        last = work_dir / "last.pth"
        if last.is_file():
            return last
        epochs = sorted(work_dir.glob("epoch_*.pth"),
                        key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit() else -1)
        if epochs:
            return epochs[-1]
        logger.warning("--resume: no checkpoint (last.pth or epoch_N.pth) in %s; starting from scratch",
                       work_dir)
        return None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: checkpoint not found")
    return path
