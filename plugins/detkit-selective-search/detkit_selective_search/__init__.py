"""detkit-selective-search: selective search region proposals for detkit, cached on disk.

Registered as ``selective_search`` in the ``detkit.proposals`` entry point group (see setup.cfg):

    proposals = dict(type="selective_search", mode="fast", max_proposals=2000)

:func:`precompute` fills the cache for a whole data set in parallel before training.
Needs OpenCV's contrib modules (``opencv-contrib-python-headless``, the same version as the
``opencv-python-headless`` detkit installs; see the README).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "SelectiveSearch", "precompute", "PrecomputeReport", "ProposalCache",
           "OpenCVContribMissing", "default_cache_dir"]


def __getattr__(name):
    # Lazy: importing the package costs nothing until a component is used.
    if name in ("SelectiveSearch", "OpenCVContribMissing"):
        from detkit_selective_search import selective_search

        return getattr(selective_search, name)
    if name in ("precompute", "PrecomputeReport"):
        from detkit_selective_search import parallel

        return getattr(parallel, name)
    if name in ("ProposalCache", "default_cache_dir"):
        from detkit_selective_search import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
