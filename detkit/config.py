"""Python config files.

A config is a ``.py`` file whose top-level names (``model``, ``data``, ``train``, ``eval``, ``infer``)
are plain data: dicts, lists, tuples, strings, numbers, booleans and None.

* ``_base_ = "_base_/schedule.py"`` (or a list) inherits other files, relative to this one; dicts
  are merged deeply, later files win, and ``dict(_delete_=True, ...)`` replaces instead of merging.
* Overrides ``key.path=value`` (values parsed as Python literals, else kept as strings) must name a
  key that exists, so a typo is an error; ``+key.path=value`` adds a new key. A key the config leaves
  out but that has a default (every ``train.*`` / ``eval.*`` key, :mod:`detkit.schema`) exists too:
  its default is put in place, then overridden. List items are addressed by index
  (``data.train.transforms.0.p=0.2``).
* A string ``"${data.root}"`` refers to another value and is resolved *after* overrides, so
  overriding ``data.root`` reaches every place that refers to it; ``"${data.root}/train"`` formats.
* Relative paths in ``data.<split>`` (``root``, ``ann_file``, ``img_dir``...) are made absolute as the
  config is loaded: against the folder of the file that wrote them (or ``$DETKIT_DATA``), and
  ``--set`` ones against the current directory (:mod:`detkit.data.paths`).
* The resolved config is plain JSON (:func:`dump_config`), loadable without executing any code.
"""

from __future__ import annotations

import ast
import copy
import difflib
import json
import re
import runpy
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detkit.data.paths import resolve_data_paths
from detkit.errors import ConfigError
from detkit.schema import SECTION_DEFAULTS

__all__ = ["load_config", "merge", "apply_overrides", "resolve_references", "dump_config", "config_name"]

SECTIONS = ("model", "data", "train", "eval", "infer")
_REF = re.compile(r"\$\{([^}]+)\}")


def config_name(path: str | Path) -> str:
    return Path(path).stem


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Load a config file (or a resolved ``.json`` dump), merge its bases, apply overrides."""
    path = Path(path)
    cfg = _strip_delete_markers(_load_file(path, stack=()))
    cfg = apply_overrides(cfg, overrides, defaults=SECTION_DEFAULTS)
    if overrides and "data" in cfg:  # paths given on the command line are relative to where it runs
        cfg["data"] = resolve_data_paths(cfg["data"], Path.cwd(), from_file=False)
    return resolve_references(cfg)


def _load_file(path: Path, stack: tuple) -> dict:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"_base_ cycle: {chain}")
    if path.suffix == ".json":
        try:
            cfg = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                              f"{exc.start}); JSON configs must be saved as UTF-8") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
        if isinstance(cfg, dict) and "data" in cfg:
            cfg["data"] = resolve_data_paths(cfg["data"], path.parent, from_file=True)
        return cfg
    if path.suffix != ".py":
        raise ConfigError(f"{path}: a config is a .py file (or a resolved .json dump)")
    try:
        namespace = runpy.run_path(str(path), run_name="__detkit_config__")
    except SystemExit as exc:
        # Would otherwise end `detkit train` with this status, silently and without training.
        raise ConfigError(f"{path}: the config called sys.exit({exc.code!r}); a config file only "
                          "defines values") from None
    except Exception as exc:
        raise ConfigError(f"{path}: executing the config failed: {type(exc).__name__}: {exc}") from exc

    bases = namespace.get("_base_", [])
    if isinstance(bases, (str, Path)):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        merged = merge(merged, _load_file(path.parent / base, stack + (path,)))

    own = {}
    for key, value in namespace.items():
        if key.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        own[key] = _plain(value, f"{path.name}:{key}")
    _check_section_names(own, path)
    if "data" in own:  # relative data paths are relative to the file that wrote them
        own["data"] = resolve_data_paths(own["data"], path.parent, from_file=True)
    return merge(merged, own)


def _strip_delete_markers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_delete_markers(v) for k, v in value.items() if k != "_delete_"}
    if isinstance(value, list):
        return [_strip_delete_markers(v) for v in value]
    return value


def _check_section_names(cfg: Mapping, path: Path) -> None:
    """A top-level name one letter away from a section (``trian``) is a typo, not a helper variable."""
    for key in cfg:
        if key in SECTIONS:
            continue
        close = difflib.get_close_matches(key, SECTIONS, n=1, cutoff=0.8)
        if close:
            raise ConfigError(f"{path}: top-level name '{key}' looks like a typo of '{close[0]}'")


def _plain(value: Any, where: str):
    """Configs hold plain data only, so the resolved dump is JSON and never needs code to load."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise ConfigError(
        f"{where}: configs hold plain data (dict, list, str, number, bool, None), "
        f"got {type(value).__name__}"
    )


def merge(base: Any, child: Any) -> Any:
    """Deep-merge ``child`` onto ``base``; ``dict(_delete_=True, ...)`` in child replaces instead.

    A ``_delete_`` marker that meets nothing to replace yet is kept, so a ``_base_`` fragment loaded on
    its own still replaces the recipe's dict when it is merged later; :func:`load_config` strips the
    markers that are left at the end.
    """
    if isinstance(child, Mapping):
        child = dict(child)
        replace = child.pop("_delete_", False)
        if not isinstance(base, Mapping):
            out = {k: merge(None, v) for k, v in child.items()}
            if replace:
                out["_delete_"] = True
            return out
        if replace:
            return {k: merge(None, v) for k, v in child.items()}
        out = {k: copy.deepcopy(v) for k, v in base.items()}
        for key, value in child.items():
            out[key] = merge(out.get(key), value)
        return out
    if isinstance(child, list):
        return [merge(None, v) for v in child]
    return copy.deepcopy(child)


def parse_value(text: str) -> Any:
    """``--set`` values are Python literals (``3``, ``0.1``, ``[1,2]``, ``None``, ``'x'``), else strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: dict, overrides: Sequence[str], defaults: Mapping | None = None) -> dict:
    """Apply ``key.path=value`` overrides to a copy of ``cfg``. ``defaults`` (section -> key ->
    default) names the keys that exist without being written in the config."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, text = item.split("=", 1)
        key = key.strip()
        add = key.startswith("+")
        key = key.lstrip("+")
        if not key:
            raise ConfigError(f"override '{item}' has no key")
        set_by_path(cfg, key, _plain(parse_value(text), key), add=add, defaults=defaults)
    return cfg


def set_by_path(cfg: dict, dotted: str, value: Any, *, add: bool = False, defaults: Mapping | None = None) -> None:
    parts = dotted.split(".")
    node: Any = cfg
    known: Mapping = defaults or {}  # the defaults of the keys at this level
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[:depth]) or "<top level>"
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(
                    f"--set {dotted}: '{part}' is not an index of {here} (a list of {len(node)} items)"
                )
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {here} is a {type(node).__name__}, not a dict")
        if part not in node and part in known:
            # A key with a default exists even when the config leaves it out: put the default in
            # place (a section starts empty; the run fills the rest), then override into it.
            node[part] = {} if depth == 0 else copy.deepcopy(known[part])
        if part not in node:
            if add:
                if last:
                    node[part] = value
                    return
                node[part] = {}
            else:
                msg = f"--set {dotted}: '{part}' is not a key of {here}."
                close = difflib.get_close_matches(part, [str(k) for k in {**known, **node}], n=2, cutoff=0.6)
                if close:
                    msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
                else:
                    msg += f" Keys there: {', '.join(map(str, {**known, **node})) or '(none)'}."
                msg += f" Use +{dotted}=... to add a new key."
                raise ConfigError(msg)
        if last:
            node[part] = value
            return
        # defaults name sections, then their keys; below that a default is one value (the whole
        # train.optimizer dict), whose own keys depend on its type
        known = known[part] if depth == 0 and isinstance(known.get(part), Mapping) else {}
        if node[part] is None:
            # An optional section that is off (train.ema=None): setting one of its keys turns it on
            # with that key, the rest at the component's defaults, as `--set train.ema.decay=0.99`
            # reads. Its keys are the component's to check (a typo fails there, by name).
            node[part] = {}
            add = True
        node = node[part]


def get_by_path(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            raise KeyError(dotted)
    return node


def resolve_references(cfg: dict) -> dict:
    """Replace ``"${a.b}"`` strings with the referenced value (after merging and overrides)."""

    def resolve(value, where, stack):
        if isinstance(value, dict):
            return {k: resolve(v, f"{where}.{k}" if where else k, stack) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{where}.{i}", stack) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value

        def lookup(ref):
            ref = ref.strip()
            if ref in stack:
                raise ConfigError(f"{where}: reference cycle {' -> '.join((*stack, ref))}")
            try:
                target = get_by_path(cfg, ref)
            except KeyError:
                raise ConfigError(f"{where}: '${{{ref}}}' refers to a key that does not exist") from None
            return resolve(target, ref, (*stack, ref))

        whole = _REF.fullmatch(value)
        if whole:
            return lookup(whole.group(1))
        return _REF.sub(lambda m: str(lookup(m.group(1))), value)

    return resolve(cfg, "", ())


def dump_config(cfg: Mapping, path: str | Path | None = None) -> str:
    text = json.dumps(cfg, indent=2, sort_keys=False)
    if path is not None:
        from detkit.fileio import write_text_atomic

        # atomic: a full disk must not leave a truncated config.json beside the checkpoints (eval
        # and infer read it), and its error is one line naming the file
        write_text_atomic(path, text + "\n")
    return text
