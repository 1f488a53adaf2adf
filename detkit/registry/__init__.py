"""Component registries over Python package entry points, and building components from configs.

* :mod:`detkit.registry.groups`: finding components (entry points, lazy import, conflicts, broken or
  disabled plugins, in-process :func:`register`).
* :mod:`detkit.registry.spec`: :func:`build` from ``dict(type=NAME, **kwargs)`` with validation,
  explicitly annotated nested components (:class:`Spec`, :class:`Component`) and the values a parent
  passes to a child.
"""

from __future__ import annotations

from detkit.registry.groups import (
    GROUPS,
    ComponentInfo,
    available,
    components,
    get,
    refresh,
    register,
    unregister,
)
from detkit.registry.spec import CHILD_GROUPS, Component, Spec, build

__all__ = [
    "GROUPS",
    "CHILD_GROUPS",
    "Spec",
    "Component",
    "ComponentInfo",
    "available",
    "build",
    "get",
    "register",
    "unregister",
    "components",
    "refresh",
]
