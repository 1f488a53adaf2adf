"""Selective search (Uijlings et al., 2013) region proposals through OpenCV's contrib module.

The generator honours detkit's proposal contract: ``generator(image)`` with ``image`` a ``uint8 [H, W, 3]``
RGB array returns ``float32 [P, 4]`` xyxy boxes in that image's pixels, best-ranked first.

Selective search costs seconds per image, so results are cached on disk (see
:mod:`detkit_selective_search.cache`): the key hashes the image's pixels and every parameter that
changes the result, so a second call on the same image reads a small ``.npy`` file instead.

Ranking: OpenCV ranks each region by ``level * rand()`` (the paper's pseudo-random ranking) with the C
library's global ``rand()``, so the *order*, and therefore which boxes survive ``max_proposals``,
changes from call to call although the set of boxes does not. We seed ``rand()`` with ``seed`` right
before each run so the same image and parameters always give the same proposals (and cache entries
stay meaningful). Where the C library cannot be reached (not glibc/macOS), the order is left to OpenCV.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os

import numpy as np

from detkit.errors import ConfigError, DataError, DetkitError

from detkit_selective_search.cache import ProposalCache, default_cache_dir

__all__ = ["SelectiveSearch", "OpenCVContribMissing", "require_ximgproc", "MODES"]

MODES = ("fast", "quality", "single")
# Bumped whenever a change here alters the boxes computed for the same parameters (invalidates caches).
ALGORITHM_VERSION = 1


class OpenCVContribMissing(DetkitError, ImportError):
    """cv2 lacks ``ximgproc.segmentation``: the plain (non-contrib) OpenCV build is what is installed."""


def require_ximgproc():
    """Return ``cv2.ximgproc.segmentation``, or raise an error that says how to install it."""
    try:
        import cv2
    except ImportError as exc:
        raise OpenCVContribMissing(
            "selective_search needs OpenCV with its contrib modules: "
            "pip install opencv-contrib-python-headless"
        ) from exc
    segmentation = getattr(getattr(cv2, "ximgproc", None), "segmentation", None)
    if segmentation is None:
        raise OpenCVContribMissing(
            f"selective_search needs cv2.ximgproc (OpenCV's contrib modules), which the installed cv2 "
            f"{cv2.__version__} lacks. Install the contrib build of the same version over it: "
            f"pip install --force-reinstall --no-deps opencv-contrib-python-headless=="
            f"{_installed_opencv_version() or cv2.__version__}"
        )
    return segmentation


def _installed_opencv_version() -> str | None:
    """The pip version (e.g. 5.0.0.93) of the OpenCV distribution that provides cv2, if any."""
    import importlib.metadata as md

    for dist in ("opencv-python-headless", "opencv-contrib-python-headless", "opencv-python",
                 "opencv-contrib-python"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def _c_library():
    """The process's C library (glibc, macOS libSystem), or None where ctypes cannot reach it."""
    try:
        libc = ctypes.CDLL(None)
        libc.srand  # noqa: B018 - raises AttributeError where there is none
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def _seed_c_rand(seed: int) -> bool:
    """Seed the C library's rand(), which OpenCV's selective search ranking uses (see module doc)."""
    libc = _c_library()
    if libc is None:
        return False
    libc.srand(ctypes.c_uint(seed))
    return True


class SelectiveSearch:
    """Selective search proposals for one RGB image at a time, cached on disk.

    Args:
        mode: ``"fast"`` (what R-CNN used), ``"quality"`` (more colour spaces, strategies and k
            values: more boxes, slower) or ``"single"`` (one segmentation, quickest).
        max_proposals: keep at most this many boxes, best-ranked first (R-CNN used ~2000).
        min_size: drop boxes narrower or lower than this many pixels (of the original image).
        max_side: run on a copy resized so that its longer side is at most this many pixels (the cost
            grows with the pixel count; R-CNN ran it at about 500 pixels). ``None`` runs at full size.
            Boxes are returned in the original image's pixels either way.
        base_k, inc_k, sigma: graph segmentation parameters (OpenCV's defaults: 150, 150, 0.8).
        seed: seeds the pseudo-random ranking, so results are reproducible.
        cache: read and write the disk cache.
        cache_dir: where (default ``$DETKIT_CACHE_DIR/proposals`` or ``~/.cache/detkit/proposals``).
        num_threads: OpenCV threads while computing (1: parallelise over images with
            :func:`~detkit_selective_search.precompute` instead).

    ``num_computed`` and ``num_cached`` count how many calls ran selective search and how many
    were answered from the cache.
    """

    def __init__(
        self,
        mode: str = "fast",
        max_proposals: int = 2000,
        min_size: int = 20,
        max_side: int | None = 500,
        base_k: int = 150,
        inc_k: int = 150,
        sigma: float = 0.8,
        seed: int = 0,
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        num_threads: int = 1,
    ):
        if mode not in MODES:
            raise ConfigError(f"selective_search: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if int(max_proposals) < 1:
            raise ConfigError(f"selective_search: max_proposals must be >= 1, got {max_proposals}")
        if min_size < 0:
            raise ConfigError(f"selective_search: min_size must be >= 0, got {min_size}")
        if max_side is not None and int(max_side) < 16:
            raise ConfigError(f"selective_search: max_side must be >= 16 or None, got {max_side}")
        self._segmentation = require_ximgproc()  # fail at build time, with the fix in the message
        self.mode = mode
        self.max_proposals = int(max_proposals)
        self.min_size = float(min_size)
        self.max_side = None if max_side is None else int(max_side)
        self.base_k, self.inc_k, self.sigma = int(base_k), int(inc_k), float(sigma)
        self.seed = int(seed)
        self.num_threads = int(num_threads)
        self.cache = ProposalCache(cache_dir if cache_dir is not None else default_cache_dir()) if cache else None
        self.num_computed = 0
        self.num_cached = 0

    # -- identity of a result --------------------------------------------------------------------
    def params(self) -> dict:
        """Everything besides the pixels that decides the output (part of the cache key)."""
        import cv2

        return dict(
            algorithm=ALGORITHM_VERSION, opencv=cv2.__version__, mode=self.mode,
            max_proposals=self.max_proposals, min_size=self.min_size, max_side=self.max_side,
            base_k=self.base_k, inc_k=self.inc_k, sigma=self.sigma, seed=self.seed,
        )

    def cache_key(self, image: np.ndarray) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps(self.params(), sort_keys=True).encode())
        digest.update(repr((image.shape, str(image.dtype))).encode())
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()

    # -- the contract --------------------------------------------------------------------------
    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = _check_image(image)
        key = None
        if self.cache is not None:
            key = self.cache_key(image)
            boxes = self.cache.get(key)
            if boxes is not None:
                self.num_cached += 1
                return boxes
        boxes = self.compute(image)
        self.num_computed += 1
        if self.cache is not None:
            self.cache.put(key, boxes)
        return boxes

    def compute(self, image: np.ndarray) -> np.ndarray:
        """Run selective search (no cache)."""
        import cv2

        image = _check_image(image)
        height, width = image.shape[:2]
        scale = 1.0
        if self.max_side is not None and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # OpenCV's colour strategies expect its usual BGR order.
        bgr = np.ascontiguousarray(image[..., ::-1])

        search = self._segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(bgr)
        switch = {"fast": search.switchToSelectiveSearchFast,
                  "quality": search.switchToSelectiveSearchQuality,
                  "single": search.switchToSingleStrategy}[self.mode]
        if self.mode == "single":
            switch(k=self.base_k, sigma=self.sigma)
        else:
            switch(base_k=self.base_k, inc_k=self.inc_k, sigma=self.sigma)

        threads = cv2.getNumThreads()
        cv2.setNumThreads(self.num_threads)
        try:
            _seed_c_rand(self.seed)
            rects = search.process()  # int32 [P, 4] x, y, w, h, in rank order
        finally:
            cv2.setNumThreads(threads)
        return _to_boxes(rects, scale, width, height, self.min_size, self.max_proposals)

    # Sent to precompute's worker processes: the cv2 module handle is looked up again there.
    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_segmentation", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._segmentation = require_ximgproc()

    def __repr__(self):
        where = self.cache.root if self.cache is not None else "off"
        return (f"SelectiveSearch(mode={self.mode!r}, max_proposals={self.max_proposals}, "
                f"min_size={self.min_size:g}, max_side={self.max_side}, cache={str(where)!r})")


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                else type(image).__name__)
        raise DataError(f"selective_search expects a uint8 [H, W, 3] RGB array, got a {what}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise DataError(f"selective_search: image of shape {image.shape} is too small")
    return image


def _to_boxes(rects, scale: float, width: int, height: int, min_size: float, limit: int) -> np.ndarray:
    """OpenCV rects (x, y, w, h at the working scale) -> float32 xyxy in original pixels."""
    rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
    # A rect covers pixels x .. x+w-1, i.e. the continuous span [x, x+w).
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / scale
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes = boxes[keep]
    # Rescaling can make two working-scale rects identical; keep the first (best-ranked) of each.
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    return np.ascontiguousarray(boxes[:limit], dtype=np.float32)

