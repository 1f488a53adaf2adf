"""Training and evaluation engine: the trainer loop, hooks, optimisers, distributed helpers and the
``detkit train`` / ``detkit eval`` runners (checkpoint files: :mod:`detkit.checkpoint`).

    from detkit.engine import Trainer, Hook
    from detkit.engine.runner import train, evaluate

Names are imported on first use, so ``import detkit.engine`` stays cheap.
"""

from __future__ import annotations

import importlib

__all__ = [
    "Trainer",
    "Hook",
    "build_optimizer",
    "build_scheduler",
    "train",
    "evaluate",
]

_WHERE = {
    "Trainer": "detkit.engine.trainer",
    "Hook": "detkit.engine.hooks",
    "build_optimizer": "detkit.engine.optim",
    "build_scheduler": "detkit.engine.optim",
    "train": "detkit.engine.runner",
    "evaluate": "detkit.engine.runner",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'detkit.engine' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_WHERE))
