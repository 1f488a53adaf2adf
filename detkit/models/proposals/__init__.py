"""Region proposal generators: where a two-stage detector (``rcnn``) looks for objects.

Built through the ``detkit.proposals`` entry points; importing this package imports no generator.

The contract (docs/architecture.md): ``generator(image) -> float32 ndarray [P, 4]`` xyxy boxes in the
pixels of ``image`` (``uint8 [H, W, 3]`` RGB), best-ranked first where the method ranks (the detector
keeps a prefix when it caps the number). Two optional extensions let the detector skip work:

* ``depends_only_on_size = True`` and ``for_size(height, width)``: the boxes depend on the image size
  only (``sliding_window``); the detector then never converts the image back to ``uint8``.
* ``uses_meta = True``: ``generator(image, meta=...)`` also receives the image meta of the target
  (file name, path, image id, the resize record), e.g. to look precomputed boxes up (``precomputed``).

Built in: :class:`~detkit.models.proposals.sliding_window.SlidingWindow` (``sliding_window``) and
:class:`~detkit.models.proposals.precomputed.PrecomputedProposals` (``precomputed``). Selective
search is the ``detkit-selective-search`` plugin (``selective_search``).
"""

from detkit.errors import ConfigError


def check_limits(generator: str, max_proposals, min_size) -> tuple[int | None, float]:
    """Validate the ``max_proposals`` / ``min_size`` options every generator takes; returns them as
    ``(int or None, float)`` or raises a ConfigError naming ``generator``."""
    if max_proposals is not None and (isinstance(max_proposals, bool) or int(max_proposals) < 1):
        raise ConfigError(f"{generator}: max_proposals must be a positive integer or None, got {max_proposals!r}")
    if float(min_size) < 0:
        raise ConfigError(f"{generator}: min_size must be >= 0, got {min_size!r}")
    return (None if max_proposals is None else int(max_proposals)), float(min_size)
