"""Finding components: one registry per group over Python package entry points.

Every component (backbone, head, loss, postprocessor, detector, classifier, dataset, proposal
generator) is found through an entry point in the group ``detkit.<group>``. detkit declares its own components in its
``setup.cfg`` exactly as a third-party package would, so a plugin is just another distribution.

* Listing names reads package metadata only; a component's module is imported the first time it is
  built (or looked up with :func:`get`).
* An unknown name raises :class:`~detkit.errors.UnknownComponentError` with the closest names and the
  list of what is available.
* The same name in one group from two distributions raises
  :class:`~detkit.errors.DuplicateComponentError` naming both, but only when that name is used.
* A plugin whose import fails raises :class:`~detkit.errors.PluginLoadError` for its own names only.
* ``DETKIT_DISABLE_PLUGINS=dist-a,dist-b`` hides those distributions' entry points without
  uninstalling them (detkit's own built-ins cannot be disabled).
* :func:`register` adds a component in-process, for tests and notebooks, without touching the
  installed entry points.
"""

from __future__ import annotations

import difflib
import importlib.metadata as importlib_metadata
import os
from dataclasses import dataclass
from typing import Any, Callable

from detkit.errors import DuplicateComponentError, PluginLoadError, RegistryError, UnknownComponentError

__all__ = ["GROUPS", "ComponentInfo", "available", "get", "register", "unregister", "components", "refresh"]

GROUPS = ("backbones", "heads", "losses", "postprocessors", "detectors", "classifiers", "datasets", "proposals")
ENTRY_POINT_PREFIX = "detkit."
DISABLE_ENV = "DETKIT_DISABLE_PLUGINS"
CORE_DISTRIBUTION = "detkit"

# Singular nouns for messages ("'resnet19' is not a registered backbone").
_SINGULAR = {
    "backbones": "backbone",
    "heads": "head",
    "losses": "loss",
    "postprocessors": "postprocessor",
    "detectors": "detector",
    "classifiers": "classifier",
    "datasets": "dataset",
    "proposals": "proposal generator",
}


def _normalise_dist(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _disabled_distributions() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {_normalise_dist(part.strip()) for part in raw.split(",") if part.strip()}


@dataclass(frozen=True)
class ComponentInfo:
    """Where one registered name comes from. ``status`` is filled by :func:`components`."""

    group: str
    name: str
    target: str  # "module:attr" for entry points, repr of the object for in-process registrations
    distribution: str
    version: str
    status: str = "not loaded"  # "ok" | "failed" | "conflict" | "disabled" | "not loaded"
    error: str = ""


@dataclass
class _Entry:
    name: str
    target: str
    distribution: str
    version: str
    entry_point: Any = None  # importlib.metadata.EntryPoint, or None for in-process registrations
    obj: Any = None
    loaded: bool = False


class _GroupRegistry:
    """The components of one group: entry points found in the installed metadata plus in-process ones."""

    def __init__(self, group: str):
        self.group = group
        self._scanned = False
        self._entries: dict[str, list[_Entry]] = {}
        self._disabled: dict[str, list[_Entry]] = {}
        self._local: dict[str, _Entry] = {}

    # -- discovery ---------------------------------------------------------------------------
    def refresh(self) -> None:
        self._scanned = False
        self._entries = {}
        self._disabled = {}

    def _scan(self) -> None:
        if self._scanned:
            return
        disabled = _disabled_distributions() - {CORE_DISTRIBUTION}
        entries: dict[str, list[_Entry]] = {}
        blocked: dict[str, list[_Entry]] = {}
        for ep in importlib_metadata.entry_points(group=ENTRY_POINT_PREFIX + self.group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "<unknown>"
            version = dist.version if dist is not None else "?"
            entry = _Entry(ep.name, ep.value, dist_name, version, entry_point=ep)
            target = blocked if _normalise_dist(dist_name) in disabled else entries
            same = target.setdefault(ep.name, [])
            # importlib.metadata already de-duplicates distributions by name; this guards against
            # one distribution declaring a name twice.
            if not any(e.distribution == entry.distribution for e in same):
                same.append(entry)
        self._entries, self._disabled, self._scanned = entries, blocked, True

    # -- queries -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._scan()
        return sorted(set(self._entries) | set(self._local))

    def entries(self) -> list[tuple[_Entry, str]]:
        """All known entries with their state: "ok", "conflict" or "disabled" (before loading)."""
        self._scan()
        rows = []
        for name in sorted(set(self._entries) | set(self._local) | set(self._disabled)):
            if name in self._local:
                rows.append((self._local[name], "ok"))
                continue
            found = self._entries.get(name, [])
            state = "conflict" if len(found) > 1 else "ok"
            rows.extend((e, state) for e in found)
            rows.extend((e, "disabled") for e in self._disabled.get(name, []))
        return rows

    def get(self, name: str, *, path: str | None = None) -> Callable:
        self._scan()
        if name in self._local:
            return self._local[name].obj
        found = self._entries.get(name)
        if not found:
            raise UnknownComponentError(self._unknown_message(name, path))
        if len(found) > 1:
            dists = " and ".join(f"'{e.distribution}' ({e.target})" for e in found)
            raise DuplicateComponentError(
                f"{_where(path)}{_SINGULAR[self.group]} '{name}' is registered by two distributions: "
                f"{dists}. Uninstall one, or hide it with {DISABLE_ENV}=<distribution>."
            )
        entry = found[0]
        if not entry.loaded:
            try:
                entry.obj = entry.entry_point.load()
            except Exception as exc:  # any import-time failure of a plugin is reported, not fatal
                raise PluginLoadError(
                    f"{_where(path)}{_SINGULAR[self.group]} '{name}' from distribution "
                    f"'{entry.distribution}' {entry.version} failed to load ({entry.target}): "
                    f"{type(exc).__name__}: {exc}. Other components are unaffected; "
                    f"`detkit plugins` lists what loads."
                ) from exc
            entry.loaded = True
        return entry.obj

    def _unknown_message(self, name: str, path: str | None) -> str:
        names = self.names()
        noun = _SINGULAR[self.group]
        msg = f"{_where(path)}'{name}' is not a registered {noun}."
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
        if close:
            msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        if name in self._disabled:
            dists = ", ".join(e.distribution for e in self._disabled[name])
            msg += f" It is provided by {dists}, which {DISABLE_ENV} disables."
        msg += f" Available {self.group}: {', '.join(names) if names else '(none)'}."
        msg += " Run `detkit plugins` to see which packages provide what."
        return msg

    # -- in-process registration ------------------------------------------------------------
    def register(self, name: str, obj: Callable, *, override: bool = False) -> None:
        self._scan()
        if not override and (name in self._local or name in self._entries):
            raise RegistryError(
                f"{_SINGULAR[self.group]} '{name}' is already registered; pass override=True to "
                f"shadow it in this process."
            )
        module = getattr(obj, "__module__", "?")
        qualname = getattr(obj, "__qualname__", repr(obj))
        self._local[name] = _Entry(name, f"{module}:{qualname}", "<in-process>", "", obj=obj, loaded=True)

    def unregister(self, name: str) -> None:
        self._local.pop(name, None)


def _where(path: str | None) -> str:
    return f"{path}: " if path else ""


def _group(group: str) -> _GroupRegistry:
    short = group[len(ENTRY_POINT_PREFIX):] if group.startswith(ENTRY_POINT_PREFIX) else group
    if short not in _REGISTRIES:
        close = difflib.get_close_matches(short, GROUPS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RegistryError(f"unknown component group '{group}'.{hint} Groups: {', '.join(GROUPS)}.")
    return _REGISTRIES[short]


# One registry object per group. They cache installed metadata (cleared by refresh()) and hold the
# explicit in-process registrations made through register(); importing a module registers nothing.
_REGISTRIES = {g: _GroupRegistry(g) for g in GROUPS}


def available(group: str) -> list[str]:
    """Sorted names registered in ``group`` (imports nothing)."""
    return _group(group).names()


def get(group: str, name: str) -> Callable:
    """The factory registered as ``name`` in ``group`` (imports its module on first use)."""
    return _group(group).get(name)


def refresh(group: str | None = None) -> None:
    """Forget cached entry-point metadata (after installing a plugin or changing DETKIT_DISABLE_PLUGINS)."""
    for reg in [_group(group)] if group else _REGISTRIES.values():
        reg.refresh()


class _Registration:
    """Handle returned by :func:`register`; a context manager that unregisters on exit."""

    def __init__(self, group: str, name: str, obj: Callable):
        self.group, self.name, self.obj = group, name, obj

    def remove(self) -> None:
        unregister(self.group, self.name)

    def __enter__(self):
        return self.obj

    def __exit__(self, *exc):
        self.remove()
        return False


def register(group: str, name: str, obj: Callable | None = None, *, override: bool = False):
    """Register a component in this process only (tests, notebooks, quick experiments).

    Three forms::

        register("backbones", "tiny", TinyNet)            # returns a handle; handle.remove() undoes it
        with register("backbones", "tiny", TinyNet): ...  # unregistered when the block ends
        @register("backbones", "tiny")                    # decorator; returns the class unchanged
        class TinyNet(nn.Module): ...

    Installed packages should declare entry points instead (see docs/plugins.md).
    """
    reg = _group(group)
    if obj is None:

        def decorator(target):
            reg.register(name, target, override=override)
            return target

        return decorator
    reg.register(name, obj, override=override)
    return _Registration(group, name, obj)


def unregister(group: str, name: str) -> None:
    """Remove an in-process registration (installed entry points are never touched)."""
    _group(group).unregister(name)


def components(group: str | None = None, *, load: bool = True) -> list[ComponentInfo]:
    """Every known component with its distribution; with ``load=True`` also whether it imports."""
    infos = []
    for g in [group] if group else GROUPS:
        reg = _group(g)
        for entry, state in reg.entries():
            status, error = state, ""
            if state == "conflict":
                others = [e.distribution for e in reg._entries.get(entry.name, []) if e is not entry]
                error = "also registered by " + ", ".join(others)
            elif state == "ok" and load:
                try:
                    reg.get(entry.name)
                except PluginLoadError as exc:
                    status, error = "failed", str(exc.__cause__ or exc)
                    error = f"{type(exc.__cause__).__name__}: {error}" if exc.__cause__ else error
            elif state == "ok":
                status = "ok" if entry.loaded else "not loaded"
            elif state == "disabled":
                error = f"disabled by {DISABLE_ENV}"
            infos.append(
                ComponentInfo(
                    g, entry.name, entry.target, entry.distribution, entry.version, status, error
                )
            )
    return infos
