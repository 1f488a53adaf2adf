"""detkit-soft-nms: Soft-NMS (Bodla et al., 2017) as a detkit postprocessor.

Registered as ``soft_nms`` in the ``detkit.postprocessors`` entry point group (see setup.cfg)::

    postprocessor = dict(type="soft_nms", method="gaussian", sigma=0.5, score_threshold=0.001,
                         max_per_image=100)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "SoftNMS", "soft_nms"]


def __getattr__(name):
    # Lazy, so importing the package imports no torch.
    if name in ("SoftNMS", "soft_nms"):
        from detkit_soft_nms import postprocessor as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
