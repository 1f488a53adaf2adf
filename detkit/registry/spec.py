"""Building components from config dicts: validation, nested components, values a parent passes.

:func:`build` takes ``dict(type=NAME, **kwargs)``, checks the keyword arguments against the factory's
signature before calling it, and reports a wrong key with its dotted config path
(``model.backbone.depht``) and a suggestion.

* A parameter is a nested component only when its annotation says so: :class:`Spec` (the validated
  config is handed over unbuilt, for a parent that passes values to its child) or :class:`Component`
  (built before the factory is called). Annotations are resolved as objects (``Optional[Spec]``,
  ``Spec | None``, string annotations under ``from __future__ import annotations``), never by name.
* A whole nested config is validated before anything is constructed.
* Values a parent passes to a child (``spec.build(num_classes=...)``) fill what the config leaves
  out; a factory that does not take one is an error naming the factory and the parameter (a factory
  with ``**kwargs`` takes everything), never a value silently dropped.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any

from detkit.errors import ConfigError, DetkitError, RegistryError
from detkit.registry.groups import _SINGULAR, GROUPS, _group, _where, available

__all__ = ["CHILD_GROUPS", "Spec", "Component", "build"]

# The group of a parameter annotated with a bare ``Spec`` or ``Component``, by the parameter's name
# (``backbone: Spec``). The name alone never makes a parameter a nested component: the annotation does.
CHILD_GROUPS = {
    "backbone": "backbones",
    "head": "heads",
    "loss": "losses",
    "postprocessor": "postprocessors",
    "proposals": "proposals",
    "proposal_generator": "proposals",
    "dataset": "datasets",
}


class _ChildMarker:
    """Base of the annotation markers :class:`Spec` and :class:`Component`: ``Spec["heads"]`` is a
    subclass that names the group (cached, so ``Spec["heads"] is Spec["heads"]``)."""

    _child_group: str | None = None
    _subclasses: dict = {}

    def __class_getitem__(cls, group: str):
        key = (cls, group)
        if key not in _ChildMarker._subclasses:
            short = _group(group).group  # an unknown group is an error here, where it is written
            _ChildMarker._subclasses[key] = type(f"{cls.__name__}[{short!r}]", (cls,), {"_child_group": short})
        return _ChildMarker._subclasses[key]


class Spec(_ChildMarker):
    """A validated component config that is not built yet.

    ``build()`` validates a whole nested config before constructing anything, so a typo deep inside
    ``model.head`` is reported before a backbone spends seconds being built.

    As a parameter annotation it declares a nested component handed over unbuilt: a parent factory
    that passes values to a child (a detector giving its head ``in_channels`` and ``num_classes``)
    writes ``head: Spec`` and calls ``spec.build(in_channels=..., num_classes=...)``; values in the
    config win over those defaults. The group is named by ``Spec["heads"]``; a bare ``Spec`` takes it
    from the parameter's name (:data:`CHILD_GROUPS`). ``Optional[Spec]``, ``Spec | None`` and unions
    with other types (``Spec | nn.Module``) mean the same.
    """

    def __init__(self, group: str, cfg: Mapping, path: str | None = None):
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{_where(path)}expected a dict with 'type', got {type(cfg).__name__}")
        if "type" not in cfg:
            raise ConfigError(
                f"{_where(path)}missing 'type' (one of: {', '.join(available(group)) or 'none'})"
            )
        self.group = _group(group).group
        self.name = cfg["type"]
        self.path = path or _SINGULAR[self.group]
        self.factory = _group(group).get(self.name, path=f"{self.path}.type")
        self.kwargs: dict[str, Any] = {}
        self._signature = _signature(self.factory)
        self._children = _child_parameters(self.factory, self._signature, self._describe())
        for key, value in cfg.items():
            if key == "type":
                continue
            if not self.accepts(key):
                raise ConfigError(self._unknown_argument(key))
            if key in self._children and isinstance(value, Mapping):
                value = Spec(self._children[key][0], value, f"{self.path}.{key}")
            self.kwargs[key] = value

    def _describe(self) -> str:
        target = f"{getattr(self.factory, '__module__', '?')}:{getattr(self.factory, '__qualname__', '?')}"
        return f"{_SINGULAR[self.group]} '{self.name}' ({target})"

    def _parameter_names(self) -> list[str]:
        params = self._signature.parameters if self._signature else {}
        return [n for n, p in params.items()
                if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]

    def _unknown_argument(self, key: str) -> str:
        names = self._parameter_names()
        msg = f"{self.path}.{key}: unknown argument for {_SINGULAR[self.group]} '{self.name}'."
        close = difflib.get_close_matches(key, names, n=2, cutoff=0.6)
        if close:
            msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        return msg + f" It accepts: {', '.join(names) or '(no arguments)'}."

    def accepts(self, name: str) -> bool:
        """Whether the factory takes a keyword argument ``name`` (always, with ``**kwargs``)."""
        if self._signature is None:
            return True
        params = self._signature.parameters
        param = params.get(name)
        if param is not None:
            return param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def build(self, **defaults):
        """Construct the component. ``defaults`` fill arguments the config leaves out; the factory
        must take every one of them (a parent passes them because the child needs them: one the
        factory does not take is an error naming both, not silently dropped)."""
        for key in defaults:
            if not self.accepts(key):
                raise ConfigError(self._dropped_default(key))
        kwargs = dict(defaults)
        for key, value in self.kwargs.items():
            if isinstance(value, Spec) and not self._children[key][1]:
                value = value.build()  # a Component: built before the call; a Spec: handed over
            kwargs[key] = value
        if self._signature is not None:
            missing = [
                n
                for n, p in self._signature.parameters.items()
                if p.default is inspect.Parameter.empty
                and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                and n not in kwargs
            ]
            if missing:
                raise ConfigError(
                    f"{self.path}: {_SINGULAR[self.group]} '{self.name}' needs "
                    f"{', '.join(repr(m) for m in missing)}, which the config does not set."
                )
        try:
            return self.factory(**kwargs)
        except ConfigError as exc:
            if str(exc).startswith(self.path):
                raise
            raise ConfigError(f"{self.path}: {exc}") from exc  # say where in the config it happened
        except DetkitError:  # already says what is wrong (e.g. a bad data file, naming the file)
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{self.path}: building {_SINGULAR[self.group]} '{self.name}' failed: {exc}"
            ) from exc

    def _dropped_default(self, key: str) -> str:
        names = self._parameter_names()
        msg = (f"{self.path}: {self._describe()} has no parameter '{key}', which is passed to every "
               f"{_SINGULAR[self.group]} built here.")
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        if close:
            msg += f" Is its parameter {close[0]!r} meant to be '{key}'?"
        return msg + (f" Add a '{key}' parameter (or **kwargs) to it. It accepts: "
                      f"{', '.join(names) or '(no arguments)'}.")

    def __repr__(self):
        return f"Spec({self.group}:{self.name} at {self.path})"


class Component(_ChildMarker):
    """Parameter annotation: a nested component built from its config before the factory is called.

    ``dataset: Component["datasets"]`` receives the built dataset when the config holds
    ``dataset=dict(type=...)``; the whole nested config is validated before anything is built. A
    bare ``Component`` takes the group from the parameter's name (:data:`CHILD_GROUPS`). Use
    :class:`Spec` instead when the parent passes values to the child.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Component is a parameter annotation, not something to build; see Spec")


def _child_parameters(factory, signature, describe: str) -> dict[str, tuple[str, bool]]:
    """The parameters of ``factory`` annotated as nested components: ``name -> (group, unbuilt)``."""
    if signature is None:
        return {}
    children = {}
    for name, annotation in _resolved_annotations(factory, signature, describe).items():
        marker = _marker_of(annotation, f"{describe}, parameter '{name}'")
        if marker is None:
            continue
        group = marker._child_group or CHILD_GROUPS.get(name)
        if group is None:
            raise RegistryError(
                f"{describe}: parameter '{name}' is annotated {marker.__name__} without a group, and "
                f"its name is none of {', '.join(CHILD_GROUPS)}; write {marker.__name__}['<group>'] "
                f"(groups: {', '.join(GROUPS)})"
            )
        children[name] = (group, issubclass(marker, Spec))
    return children


def _resolved_annotations(factory, signature, describe: str) -> dict[str, Any]:
    """Parameter annotations as objects, also under ``from __future__ import annotations``.

    ``inspect.signature(eval_str=True)`` evaluates them all in the factory's module. When one cannot
    be evaluated (a name imported only under ``TYPE_CHECKING``, say), each is evaluated on its own,
    with ``Spec``/``Component`` known even if the module imported them under another name only; one
    that still fails counts as no marker, unless its text names a marker (then it is an error:
    silently passing a config dict to a factory that expects a component is worse)."""
    try:
        resolved = inspect.signature(factory, eval_str=True)
        return {n: p.annotation for n, p in resolved.parameters.items()}
    except Exception:  # noqa: BLE001 - any failure of a plugin's annotations: evaluate one by one
        pass
    target = factory.__init__ if inspect.isclass(factory) else getattr(factory, "func", factory)
    namespace = getattr(inspect.unwrap(target), "__globals__", None)
    if namespace is None:
        module = sys.modules.get(getattr(factory, "__module__", ""), None)
        namespace = vars(module) if module is not None else {}
    markers = {"Spec": Spec, "Component": Component, "registry": sys.modules["detkit.registry"]}
    local = {k: v for k, v in markers.items() if k not in namespace}
    annotations = {}
    for name, param in signature.parameters.items():
        annotation = param.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace, local)  # noqa: S307 - the factory's own annotation
            except Exception as exc:  # noqa: BLE001
                if re.search(r"\b(Spec|Component)\b", annotation):
                    raise RegistryError(
                        f"{describe}: the annotation {annotation!r} of parameter '{name}' cannot be "
                        f"evaluated ({type(exc).__name__}: {exc}), so detkit cannot tell whether it "
                        f"is a nested component; import what it names at module level"
                    ) from exc
                annotation = inspect.Parameter.empty
        annotations[name] = annotation
    return annotations


def _marker_of(annotation, where: str):
    """The :class:`Spec`/:class:`Component` class in an annotation (also inside ``Optional``,
    ``X | None``, other unions and ``Annotated``), or ``None``."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = {m for m in map(lambda a: _marker_of(a, where), typing.get_args(annotation)) if m is not None}
        if len(found) > 1:
            raise RegistryError(f"{where}: the annotation names two component markers: "
                                f"{', '.join(sorted(m.__name__ for m in found))}")
        return found.pop() if found else None
    if inspect.isclass(annotation) and issubclass(annotation, _ChildMarker) and annotation is not _ChildMarker:
        return annotation
    return None


def _signature(factory) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: accept anything
        return None


def build(group: str, cfg, *, path: str | None = None, **defaults):
    """Build a component of ``group`` ("backbones", "heads", ...) from ``dict(type=NAME, **kwargs)``.

    ``path`` is the dotted config path used in error messages (``"model.backbone"``). ``defaults``
    fill arguments the config leaves out; the factory must take them (or ``**kwargs``). A value that
    is already built (not a dict) is returned unchanged, so Python users can pass modules directly.
    """
    if isinstance(cfg, Spec):
        return cfg.build(**defaults)
    if not isinstance(cfg, Mapping):
        return cfg
    return Spec(group, cfg, path).build(**defaults)
