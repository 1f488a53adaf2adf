"""Writing run files so a crash, a kill or a full disk never leaves a half-written file in place: the
temporary names detkit writes before renaming (and removes when a run starts after a kill), new files
created with the umask's mode, and file-system errors turned into one line naming the path.

Every temporary file detkit writes is hidden and ends in ``.tmp`` (optionally followed by the
extension a writer needs, e.g. matplotlib's ``.tmp.png``): ``.<target name>[.<token>].tmp[.ext]``.
Only names of that form are ever removed as stale.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path

from detkit.errors import OutputError

__all__ = ["temp_path", "is_temp_file", "remove_stale_temp_files", "create_new_file", "fsync_dir",
           "write_text_atomic", "output_error", "ENVIRONMENT_ERRNOS"]

_TEMP_FILE = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")

# Errors of the machine rather than of detkit: the message (path + reason) is all a user needs.
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EFBIG", "EIO",
                                      "ENAMETOOLONG", "ENOTDIR", "EISDIR", "EMFILE", "ENFILE")
    if hasattr(errno, name)
)


def temp_path(path: str | os.PathLike, *, unique: bool = False, extension: str = "") -> Path:
    """The temporary file written next to ``path`` before it is renamed over it. ``unique`` adds the
    process id and a random token (several writers of one target); ``extension`` is appended for
    writers that choose a format by extension."""
    path = Path(path)
    token = f".{os.getpid()}{secrets.token_hex(4)}" if unique else ""
    return path.with_name(f".{path.name}{token}.tmp{extension}")


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is one of detkit's temporary file names (see the module docstring)."""
    return bool(_TEMP_FILE.match(name))


def remove_stale_temp_files(folder: str | os.PathLike, *, subfolders: tuple[str, ...] = ()) -> list[Path]:
    """Delete the temporary files an interrupted write left in ``folder`` (and in its
    ``subfolders``); returns them. Call only when no other detkit process writes there."""
    removed = []
    for where in (Path(folder), *(Path(folder) / s for s in subfolders)):
        if not where.is_dir():
            continue
        for item in where.iterdir():
            if is_temp_file(item.name) and item.is_file() and not item.is_symlink():
                try:
                    item.unlink()
                except OSError as exc:
                    raise output_error(item, exc, "cannot remove the stale temporary file") from exc
                removed.append(item)
    return removed


def create_new_file(path: str | os.PathLike):
    """Open a new file for binary writing; fails if it exists. Unlike ``tempfile.mkstemp`` (always
    0600) its mode follows the umask, like every other file a run writes, so teammates and a serving
    container under another user can read checkpoints."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return os.fdopen(fd, "wb")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable. Not possible on every platform (Windows): best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename: a crash or a full disk
    never leaves half a file at ``path``; a failure removes the temporary file and is an
    :class:`OutputError` naming ``path`` (not the temporary name)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(path, exc) from exc
    return path


def output_error(path: str | os.PathLike, exc: OSError, what: str = "cannot write") -> OutputError:
    """``OSError`` -> :class:`OutputError` "<what> <path>: <reason>" (errno kept)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    error = OutputError(f"{what} {path}: {reason}")
    error.errno = exc.errno
    return error
