"""Where data lives: the data folder, how relative data paths resolve, and errors that say where we looked.

**Relative paths in the ``data`` section** (``root``, ``ann_file``, ``img_dir`` and any key ending in
``_file``, ``_dir``, ``_path`` or ``_root`` of ``data.<split>``) are resolved when the config is
loaded, so a command works from any directory:

* written in a config file: against ``$DETKIT_DATA`` when that is set (one place for all data sets,
  like detectron2's ``DETECTRON2_DATASETS`` or ultralytics' ``datasets_dir``), else against the
  folder of *the file that wrote the value* (a ``_base_`` fragment's paths are relative to the
  fragment, not to the recipe that includes it);
* given with ``--set`` on the command line: against the current directory, as any command-line path.

``~`` is expanded; absolute paths are used as they are; ``${...}`` references are left alone (they
point at a value resolved by these rules).

**The data folder** (:func:`data_home`) is where ``detkit data get`` puts data sets and where the
shipped recipes look for them: ``$DETKIT_DATA``, else ``data/`` in the detkit clone that is running,
else ``./data``.
"""

from __future__ import annotations

import os
from pathlib import Path

from detkit.errors import DataError

__all__ = ["DATA_ENV", "data_home", "resolve_data_paths", "is_path_key", "require_folder", "require_file",
           "describe_layout", "not_a", "PATH_RULE"]

DATA_ENV = "DETKIT_DATA"
PATH_RULE = ("relative data paths in a config resolve against $DETKIT_DATA when set, else against the folder "
             "of the config file that sets them; --set paths against the current directory")


def data_home() -> Path:
    """``$DETKIT_DATA``, else ``data/`` of the detkit clone that is running, else ``./data``."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    clone = Path(__file__).resolve().parents[2]
    if (clone / "configs").is_dir() and (clone / "setup.cfg").is_file():
        return clone / "data"
    return Path.cwd() / "data"


def is_path_key(key: str) -> bool:
    """Keys of a ``data.<split>`` dict that hold file or folder paths."""
    return key == "root" or key.endswith(("_file", "_dir", "_path", "_root"))


def _resolve(value, base: Path):
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    if not isinstance(value, str) or not value or "${" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def resolve_data_paths(data, base: str | os.PathLike, *, from_file: bool) -> dict:
    """``data`` with the relative paths of its splits made absolute (see the module docstring).

    ``base`` is the folder of the config file that wrote ``data`` (``from_file=True``; then
    ``$DETKIT_DATA`` wins when set) or the current directory (``from_file=False``: ``--set``).
    """
    if not isinstance(data, dict):
        return data
    env = os.environ.get(DATA_ENV, "").strip()
    root = Path(env).expanduser().absolute() if from_file and env else Path(base).absolute()
    out = dict(data)
    for name, split in data.items():
        if isinstance(split, dict):
            out[name] = {k: _resolve(v, root) if is_path_key(k) else v for k, v in split.items()}
    return out


# ----------------------------------------------------------------------------------------------
# Errors that say which problem it is and where we looked
# ----------------------------------------------------------------------------------------------
def _fetch_hint(path: Path) -> str:
    """``; `detkit data get NAME` fetches it`` when ``path`` is where that command puts a known data set."""
    from detkit.data.fetch import DATASETS

    home = data_home()
    for spec in DATASETS.values():
        target = home / spec.target
        if path == target or target in path.parents:
            return f"; `detkit data get {spec.name}` fetches it"
    return ""


def _not_found(path: Path, what: str) -> DataError:
    parent = next((p for p in path.parents if p.is_dir()), None)
    hint = f"; the nearest folder that exists is {parent}" if parent is not None and parent != Path("/") else ""
    return DataError(f"{what} not found: {path} does not exist{_fetch_hint(path)}{hint} ({PATH_RULE})")


def require_folder(path: str | os.PathLike, what: str = "data folder") -> Path:
    """``path`` as a Path; DataError saying it does not exist (and where it looked) or is a file."""
    path = Path(path)
    if not path.exists():
        raise _not_found(path, what)
    if not path.is_dir():
        raise DataError(f"{what} {path} is a file, not a folder")
    return path


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path; DataError saying it does not exist (and where it looked) or is a folder."""
    path = Path(path)
    if not path.exists():
        raise _not_found(path, what)
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder, not a file")
    return path


def describe_layout(folder: str | os.PathLike) -> str | None:
    """The data set layout ``folder`` looks like: ``'voc'``, ``'coco'``, ``'yolo'`` or None."""
    folder = Path(folder)
    if (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir():
        return "voc"
    if (folder / "data.yaml").is_file() or ((folder / "images").is_dir() and (folder / "labels").is_dir()):
        return "yolo"
    if (folder / "annotations").is_dir() and any((folder / "annotations").glob("*.json")):
        return "coco"
    if any(folder.glob("VOC20*/Annotations")):
        return "vocdevkit"
    return None


_LAYOUT_HINT = {
    "voc": "it looks like a Pascal VOC folder: use type='voc', root=<this folder>",
    "yolo": "it looks like a YOLO data set: use type='yolo', root=<this folder or its data.yaml>",
    "coco": "it looks like a COCO data set: use type='coco', ann_file=<annotations/*.json>, img_dir=<image folder>",
    "vocdevkit": "it looks like a VOCdevkit folder: point root at one of its VOC20xx folders",
}


def not_a(folder: str | os.PathLike, expected: str, missing: str) -> DataError:
    """DataError for a folder that exists but is not laid out as ``expected`` (says what it holds)."""
    folder = Path(folder)
    layout = describe_layout(folder)
    if layout is not None:
        hint = _LAYOUT_HINT[layout]
    else:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        hint = "it holds " + (", ".join(names[:12]) + (", ..." if len(names) > 12 else "") if names else "nothing")
    return DataError(f"{folder}: not a {expected} folder, it has no {missing}; {hint}")
