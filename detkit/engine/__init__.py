"""Training engine: the trainer loop, hooks, optimisers, distributed helpers, run logging, the run
directory and the ``detkit train`` runner (checkpoint files: :mod:`detkit.checkpoint`; ``detkit eval``:
:mod:`detkit.evaluation.run`, ``evaluate`` stays importable from here).

    from detkit.engine import Trainer, Hook
    from detkit.engine.runner import train
    from detkit.evaluation.run import evaluate

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
    "evaluate": "detkit.evaluation.run",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'detkit.engine' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_WHERE))
