"""Where a run's log lines go: the console (through tqdm, so a progress bar is not torn) and the
run directory's ``train.log``, set up for the length of one ``detkit train`` / ``detkit eval``."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

__all__ = ["run_logging", "stderr_is_terminal", "escape_undecodable"]


def stderr_is_terminal() -> bool:
    """Whether progress bars make sense (a terminal, not a log file or a pipe)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _ConsoleHandler(logging.Handler):
    """Prints through tqdm so log lines do not tear a progress bar; honours ``extra={"console":
    False}`` (lines the progress bar already shows go to the log file only)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "console", True):
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        record.message = record.getMessage()
        text = f"{self.formatTime(record, '%m/%d %H:%M:%S')} {prefix}{record.message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return escape_undecodable(text)


def escape_undecodable(text: str) -> str:
    """File names that are not valid UTF-8 reach Python as lone surrogates, which no UTF-8 stream
    can write ("--- Logging error ---"); they are shown as ``\\xNN`` escapes of the original bytes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no file name produced
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _FileHandler(logging.FileHandler):
    """train.log. A write that fails (disk full, file system gone read-only) is reported once, in one
    line naming the file, and the log continues on the console only, instead of logging's
    "--- Logging error ---" stack dump for every later line."""

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        reason = getattr(exc, "strerror", None) or exc
        try:
            sys.stderr.write(f"WARNING: cannot write {self.baseFilename}: {reason}; log lines go to "
                             "the console only from here\n")
        except Exception:  # noqa: BLE001 - logging must never raise
            pass
        self.setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def run_logging(work_dir: Path | None, rank: int = 0, log_name: str = "train.log"):
    """Log the ``detkit`` logger to the console (rank 0: INFO, others: WARNING) and, on rank 0 with
    a work dir, to ``work_dir/train.log`` (appended, so a resumed run continues the same log).
    Handlers are removed again on exit."""
    root = logging.getLogger("detkit")
    old_level = root.level
    handlers: list[logging.Handler] = []
    console = _ConsoleHandler(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(_Formatter())
    handlers.append(console)
    if work_dir is not None and rank == 0:
        work_dir.mkdir(parents=True, exist_ok=True)
        file_handler = _FileHandler(work_dir / log_name, mode="a", encoding="utf-8")
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(_Formatter())
        handlers.append(file_handler)
    for h in handlers:
        root.addHandler(h)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)
