"""Albumentations pipelines for detection samples, with an exact record of the final resize.

``build_transforms(cfg)`` turns a config dict into a callable ``transform(sample) -> sample`` on the
sample dict of :mod:`detkit.data.base`::

    transforms = dict(
        size=448,              # int or (h, w): the model input size; None = keep the image size
        letterbox=False,       # True: keep the aspect ratio, pad with pad_value (centred)
        pad_value=114,         # fill of the letterbox border and of pixels an affine moves in
        preset=None,           # None or "yolov1" (see below)
        augment=[dict(type="HorizontalFlip", p=0.5)],   # any albumentations transforms, by name
        min_visibility=0.1,    # augmentation drops a box when less than this fraction stays inside
        min_area=0.0,          # ... or when its clipped area is below this many pixels
    )

The pipeline runs in two stages:

1. **augmentation** (only when ``preset`` or ``augment`` is given): the preset's transforms, then the
   ``augment`` list, in one ``A.Compose`` with ``BboxParams(format="pascal_voc", clip=True,
   min_visibility, min_area)``. Boxes carry their own index as the label field, so labels,
   ``difficult`` and ``iscrowd`` stay aligned with whatever boxes survive. Augmenting before the
   final resize lets ``augment`` hold size-changing transforms (crops) and still end at ``size``.
2. **final resize** (when ``size`` is given): ``A.Resize`` or ``A.LongestMaxSize`` +
   ``A.PadIfNeeded(position="center")``. It never drops a box (no filters), so evaluation ground
   truth is never lost, and it updates ``meta`` with the scale and padding it applied, read from the
   transforms' applied parameters rather than recomputed, so ``structures.boxes_to_original`` maps
   predictions back exactly.

When stage 1 ran, the geometry between the original image and the model input is no longer a pure
scale + pad; ``meta`` then still describes the final resize (relative to the augmented image) and
carries ``augmented=True`` so nobody maps such boxes back and trusts the result.

The ``yolov1`` preset is the augmentation of the YOLOv1 paper (Redmon et al. 2016, section 2.2):
"random scaling and translations of up to 20% of the original image size" (``A.Affine`` with a
uniform scale in [0.8, 1.2] and a shift of up to ±20% per axis) and "randomly adjust the exposure
and saturation of the image by up to a factor of 1.5 in the HSV color space" (:class:`RandomHSVGain`,
darknet's multiplicative ``rand_scale``), plus a horizontal flip with p=0.5 as darknet does.

Augmentations detkit adds to albumentations' (usable by name in ``augment``, like any of theirs):

* :class:`RandomHSVGain` (the YOLOv1 preset's colour jitter, above);
* :class:`MinIoURandomCrop`: SSD's random crop (Liu et al. 2016; mmdetection's ``MinIoURandomCrop``):
  a random window of 30-100% of each side whose IoU with every object reaches a randomly chosen
  minimum (0.1 ... 0.9, or the whole image); box-aware filtering keeps only the objects whose centre
  lies in the window (clipped to it), so a kept box still frames most of its object and a box whose
  object was mostly cut away is dropped rather than left on a sliver;
* ``Mosaic`` (albumentations' ``A.Mosaic``, as ultralytics and YOLOX train): a 2x2 grid of this image
  and three others of the same data set, cropped at a random centre. The data set binds itself to
  its transforms (:meth:`DetectionTransforms.bind_dataset`), so the other images, their boxes and
  labels come from it; each box keeps its own label, ``difficult`` and ``iscrowd``. Mosaic runs
  before every other step (the preset's included), since the images it adds are raw.

Randomness comes from albumentations' own generators (not numpy's global state);
:meth:`DetectionTransforms.set_random_seed` reseeds them. The data loader's ``worker_init_fn`` calls
it in each worker so workers do not repeat each other's augmentations.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops import functional as fcrops
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BaseTransformInitSchema

from detkit.errors import ConfigError, DetkitError

__all__ = ["build_transforms", "DetectionTransforms", "RandomHSVGain", "MinIoURandomCrop", "build_albumentation",
           "PRESETS"]

PRESETS = ("yolov1",)
CONFIG_KEYS = ("size", "letterbox", "pad_value", "preset", "augment", "min_visibility", "min_area")

logger = logging.getLogger(__name__)

# Albumentations carries extra per-box data in label fields; one field holding the box's own index is
# enough to re-align every per-box array (labels, difficult, iscrowd) after boxes were dropped.
_INDEX_FIELD = "box_index"


# ----------------------------------------------------------------------------------------------
# A transform albumentations does not have: multiplicative HSV gains (darknet / YOLOv1)
# ----------------------------------------------------------------------------------------------
class RandomHSVGain(A.ImageOnlyTransform):
    """Multiply saturation and value (exposure) by random factors in ``[1/g, g]``, hue by a shift.

    ``A.HueSaturationValue`` shifts S and V additively; the YOLOv1 paper scales them ("by up to a
    factor of 1.5"). Each factor is darknet's ``rand_scale(g)``: uniform in ``[1, g]``, inverted
    with probability 1/2. ``hue`` is a fraction of the hue circle, shifted by ``U(-hue, hue)``.
    Implemented with lookup tables on OpenCV's uint8 HSV, so it costs two colour conversions.
    """

    class InitSchema(BaseTransformInitSchema):
        saturation: float
        exposure: float
        hue: float

    def __init__(self, saturation: float = 1.5, exposure: float = 1.5, hue: float = 0.0, p: float = 1.0):
        super().__init__(p=p)
        if saturation < 1 or exposure < 1:
            raise ValueError(f"saturation and exposure gains must be >= 1, got {saturation}, {exposure}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5] (fraction of the hue circle), got {hue}")
        self.saturation = saturation
        self.exposure = exposure
        self.hue = hue

    def _rand_scale(self, gain: float) -> float:
        scale = self.py_random.uniform(1.0, gain)
        return scale if self.py_random.random() < 0.5 else 1.0 / scale

    def get_params(self) -> dict[str, float]:
        return {
            "sat_gain": self._rand_scale(self.saturation),
            "val_gain": self._rand_scale(self.exposure),
            "hue_shift": self.py_random.uniform(-self.hue, self.hue),
        }

    def apply(self, img: np.ndarray, sat_gain: float = 1.0, val_gain: float = 1.0, hue_shift: float = 0.0,
              **params: Any) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise TypeError("RandomHSVGain expects uint8 RGB images")
        x = np.arange(256, dtype=np.float32)
        # One 3-channel lookup table over the HSV image (no split / merge). OpenCV's uint8 hue runs
        # 0..179 (degrees / 2), so the hue shift wraps at 180.
        lut = np.stack([(x + hue_shift * 180.0) % 180, x * sat_gain, x * val_gain], axis=-1)
        lut = np.clip(lut, 0, 255).round().astype(np.uint8)[None]  # [1, 256, 3]
        hsv = cv2.LUT(cv2.cvtColor(img, cv2.COLOR_RGB2HSV), lut)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("saturation", "exposure", "hue")


# ----------------------------------------------------------------------------------------------
# SSD's random crop with box-aware filtering
# ----------------------------------------------------------------------------------------------
class MinIoURandomCrop(BaseCrop):
    """Random crop whose IoU with every object reaches a random minimum; keeps objects centred in it.

    SSD's sampling (mmdetection's ``MinIoURandomCrop``): pick a mode from ``(1.0,) + min_ious``; mode
    1.0 keeps the whole image. Otherwise try up to ``max_trials`` windows with sides drawn from
    ``[min_crop_size, 1]`` of the image's and height / width ratio in ``aspect_range``; accept the
    first whose IoU with every box is at least the mode and that holds at least one box centre, else
    draw another mode. Boxes whose centre falls outside the accepted window are dropped, the others
    clipped to it. An image without boxes gets a random window.
    """

    class InitSchema(BaseTransformInitSchema):
        min_ious: tuple[float, ...]
        min_crop_size: float
        aspect_range: tuple[float, float]
        max_trials: int

    def __init__(self, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size: float = 0.3,
                 aspect_range: Sequence[float] = (0.5, 2.0), max_trials: int = 50, p: float = 1.0):
        super().__init__(p=p)
        if not all(0.0 <= v <= 1.0 for v in min_ious):
            raise ValueError(f"min_ious must lie in [0, 1], got {tuple(min_ious)}")
        if not 0.0 < min_crop_size <= 1.0:
            raise ValueError(f"min_crop_size must lie in (0, 1], got {min_crop_size}")
        if not 0.0 < aspect_range[0] <= aspect_range[1]:
            raise ValueError(f"aspect_range must be (low, high) with 0 < low <= high, got {tuple(aspect_range)}")
        self.min_ious = tuple(float(v) for v in min_ious)
        self.min_crop_size = float(min_crop_size)
        self.aspect_range = (float(aspect_range[0]), float(aspect_range[1]))
        self.max_trials = int(max_trials)

    def _window(self, height: int, width: int, boxes: np.ndarray):
        """A window ``(x1, y1, x2, y2)`` satisfying ``mode``'s IoU, or None after ``max_trials``."""
        mode = self.py_random.choice((1.0,) + self.min_ious)
        if mode == 1.0:
            return (0, 0, width, height)
        for _ in range(self.max_trials):
            new_w = self.py_random.uniform(self.min_crop_size * width, width)
            new_h = self.py_random.uniform(self.min_crop_size * height, height)
            if not self.aspect_range[0] <= new_h / new_w <= self.aspect_range[1]:
                continue
            left = self.py_random.uniform(0, width - new_w)
            top = self.py_random.uniform(0, height - new_h)
            window = (int(left), int(top), int(left + new_w), int(top + new_h))
            if len(boxes) == 0:
                return window
            if _window_iou(window, boxes).min() < mode or not _centres_inside(boxes, window).any():
                continue
            return window
        return None

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        given = data.get("bboxes")
        boxes = np.zeros((0, 4)) if given is None or len(given) == 0 else np.asarray(given, np.float64)[:, :4]
        boxes = boxes * np.array([width, height, width, height])  # albumentations hands them normalised
        while True:  # as SSD and mmdetection: draw modes until one yields a window (1.0 always does)
            window = self._window(height, width, boxes)
            if window is not None:
                return {"crop_coords": window}

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int],
                        **params: Any) -> np.ndarray:
        height, width = params["shape"][:2]
        pixels = bboxes[:, :4] * np.array([width, height, width, height])
        keep = _centres_inside(pixels, crop_coords)
        return fcrops.crop_bboxes_by_coords(bboxes[keep], crop_coords, (height, width))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_ious", "min_crop_size", "aspect_range", "max_trials")


def _window_iou(window, boxes: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = window
    iw = (np.minimum(boxes[:, 2], x2) - np.maximum(boxes[:, 0], x1)).clip(min=0)
    ih = (np.minimum(boxes[:, 3], y2) - np.maximum(boxes[:, 1], y1)).clip(min=0)
    inter = iw * ih
    union = (x2 - x1) * (y2 - y1) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def _centres_inside(boxes: np.ndarray, window) -> np.ndarray:
    x1, y1, x2, y2 = window
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)


_DETKIT_TRANSFORMS = {"RandomHSVGain": RandomHSVGain, "MinIoURandomCrop": MinIoURandomCrop}


# ----------------------------------------------------------------------------------------------
# Resolving albumentations transforms by name
# ----------------------------------------------------------------------------------------------
def _albumentations_names() -> list[str]:
    names = []
    for name in dir(A):
        obj = getattr(A, name, None)
        if inspect.isclass(obj) and issubclass(obj, A.BasicTransform) and not name.startswith("_"):
            names.append(name)
    return sorted(set(names))


def _resolve_transform_class(name: str, path: str):
    if name in _DETKIT_TRANSFORMS:
        return _DETKIT_TRANSFORMS[name]
    obj = getattr(A, name, None)
    if inspect.isclass(obj) and (issubclass(obj, A.BasicTransform) or issubclass(obj, BaseCompose)):
        return obj
    names = _albumentations_names() + list(_DETKIT_TRANSFORMS)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    # Case-insensitive near-misses ("horizontalflip") are likelier than edit-distance ones.
    folded = [n for n in names if n.lower() == name.lower()]
    suggestions = list(dict.fromkeys(folded + close))
    hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    raise ConfigError(f"{path}: '{name}' is not an albumentations transform{hint} "
                      f"(see https://albumentations.ai/docs/ for the list)")


def build_albumentation(cfg: Mapping, path: str = "augment"):
    """Build one albumentations transform from ``dict(type=NAME, **kwargs)``.

    ``OneOf`` / ``SomeOf`` / ``Sequential`` take ``transforms=[dict(type=...), ...]``. Keyword
    arguments are checked against the transform's signature first, because albumentations itself
    only warns about unknown ones (the typo would silently do nothing).
    """
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ConfigError(f"{path}: an augmentation must be a dict with a 'type' key, got {cfg!r}")
    kwargs = dict(cfg)
    name = kwargs.pop("type")
    if not isinstance(name, str):
        raise ConfigError(f"{path}.type: expected a transform name, got {name!r}")
    cls = _resolve_transform_class(name, f"{path}.type")
    where = f"{path} ({name})"
    if issubclass(cls, BaseCompose):
        children = kwargs.get("transforms")
        if not isinstance(children, Sequence) or isinstance(children, (str, bytes)):
            raise ConfigError(f"{where}: needs transforms=[dict(type=...), ...]")
        kwargs["transforms"] = [build_albumentation(c, f"{path}.transforms[{i}]") for i, c in enumerate(children)]
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not accepts_any:
        allowed = [n for n in params if n != "self"]
        for key in kwargs:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{where}: unknown argument '{key}'{hint} "
                                  f"(it takes: {', '.join(allowed)})")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"{where}: invalid arguments: {exc}") from None


def _preset_transforms(preset: str, pad_value) -> list:
    if preset == "yolov1":
        return [
            A.Affine(scale=(0.8, 1.2), translate_percent=(-0.2, 0.2), keep_ratio=True,
                     border_mode=cv2.BORDER_CONSTANT, fill=pad_value, p=1.0),
            RandomHSVGain(saturation=1.5, exposure=1.5, p=1.0),
            A.HorizontalFlip(p=0.5),
        ]
    raise ConfigError(f"transforms.preset: unknown preset '{preset}'; choose from: {', '.join(PRESETS)} or None")


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------
def _parse_size(size, path: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    if (not isinstance(size, Sequence) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)):
        raise ConfigError(f"{path}: size must be an int or (height, width), got {size!r}")
    if min(size) <= 0:
        raise ConfigError(f"{path}: size must be positive, got {tuple(size)}")
    return int(size[0]), int(size[1])


class DetectionTransforms:
    """Augmentation (optional) followed by the final resize / letterbox; see the module docstring."""

    def __init__(self, size=None, letterbox: bool = False, pad_value=114, preset: str | None = None,
                 augment: Sequence[Mapping] | None = None, min_visibility: float = 0.1,
                 min_area: float = 0.0, path: str = "transforms"):
        self.size = _parse_size(size, f"{path}.size")
        self.letterbox = bool(letterbox)
        if self.letterbox and self.size is None:
            raise ConfigError(f"{path}.letterbox: needs a size to letterbox to")
        if not 0.0 <= float(min_visibility) <= 1.0:
            raise ConfigError(f"{path}.min_visibility: must lie in [0, 1], got {min_visibility}")
        if float(min_area) < 0:
            raise ConfigError(f"{path}.min_area: must be >= 0, got {min_area}")
        self.pad_value = pad_value
        self.preset = preset
        steps = [] if preset is None else _preset_transforms(preset, pad_value)
        if augment is not None:
            if not isinstance(augment, Sequence) or isinstance(augment, (str, bytes, Mapping)):
                raise ConfigError(f"{path}.augment: expected a list of dict(type=...), got {augment!r}")
            steps += [build_albumentation(c, f"{path}.augment[{i}]") for i, c in enumerate(augment)]
        # Mosaic runs first, wherever it is listed: the other images it draws come raw from the data
        # set, so after the preset's scale/shift/colour/flip it would put one augmented image among
        # three untouched ones; first, the preset transforms the whole mosaic (as ultralytics does).
        steps = [m for m in steps if isinstance(m, A.Mosaic)] + [m for m in steps if not isinstance(m, A.Mosaic)]
        # Mosaic draws other images of the data set: how many, and from where (bind_dataset)
        self.mosaic_extra = max((m.grid_yx[0] * m.grid_yx[1] - 1 for m in steps if isinstance(m, A.Mosaic)),
                                default=0)
        self._source = None
        self._rng = np.random.default_rng(0)
        self.augmentation = None
        if steps:
            self.augmentation = A.Compose(
                steps,
                bbox_params=A.BboxParams(format="pascal_voc", label_fields=[_INDEX_FIELD], clip=True,
                                         min_visibility=float(min_visibility), min_area=float(min_area)),
            )
        self.resize = None
        if self.size is not None:
            h, w = self.size
            if self.letterbox:
                ops = [A.LongestMaxSize(max_size_hw=(h, w), p=1.0),
                       A.PadIfNeeded(min_height=h, min_width=w, position="center",
                                     border_mode=cv2.BORDER_CONSTANT, fill=pad_value, p=1.0)]
            else:
                ops = [A.Resize(height=h, width=w, p=1.0)]
            # No box filters here: a resize never cuts a box, and evaluation ground truth must survive.
            self.resize = A.Compose(
                ops,
                bbox_params=A.BboxParams(format="pascal_voc", label_fields=[_INDEX_FIELD], clip=True),
                save_applied_params=True,
            )

    def set_random_seed(self, seed: int | None) -> None:
        """Reseed the augmentation's random generators (the resize is deterministic)."""
        if self.augmentation is not None:
            self.augmentation.set_random_seed(seed)
        self._rng = np.random.default_rng(seed)

    def bind_dataset(self, dataset) -> None:
        """Where Mosaic takes its other images from (``dataset.raw_sample(i)``, ``len(dataset)``)."""
        self._source = dataset

    def _mosaic_items(self, sample: dict, per_box: dict) -> list[dict]:
        """Raw samples of other images for Mosaic; their boxes are numbered after this image's, and
        their per-box arrays appended to ``per_box``, so one index re-aligns every box."""
        if not self.mosaic_extra or self._source is None or len(self._source) < 2:
            return []
        items = []
        for j in self._rng.integers(0, len(self._source), size=self.mosaic_extra).tolist():
            try:
                other = self._source.raw_sample(j)
            except DetkitError as exc:  # an unreadable neighbour: Mosaic repeats this image instead
                logger.debug("mosaic: skipped sample %d: %s", j, exc)
                continue
            boxes = np.asarray(other["boxes"], dtype=np.float32).reshape(-1, 4)
            start = len(per_box["labels"])
            for key in per_box:
                per_box[key] = np.concatenate([per_box[key], np.asarray(other[key])])
            items.append({"image": other["image"], "bboxes": boxes, _INDEX_FIELD: np.arange(start, start + len(boxes))})
        return items

    def __call__(self, sample: dict) -> dict:
        sample = dict(sample)
        image = sample["image"]
        boxes = np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)
        index = np.arange(len(boxes))
        meta = dict(sample.get("meta") or {})
        if self.augmentation is not None:
            per_box = {key: np.asarray(sample[key]) for key in ("labels", "difficult", "iscrowd") if key in sample}
            extra = {"mosaic_metadata": self._mosaic_items(sample, per_box)} if self.mosaic_extra else {}
            sample.update(per_box)
            out = self.augmentation(image=image, bboxes=boxes, **{_INDEX_FIELD: index}, **extra)
            image, boxes = out["image"], out["bboxes"]
            index = np.asarray(out[_INDEX_FIELD], dtype=np.int64).reshape(-1)
            meta["augmented"] = True
        if self.resize is not None:
            in_h, in_w = image.shape[:2]
            out = self.resize(image=image, bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                              **{_INDEX_FIELD: np.arange(len(boxes))})
            kept = np.asarray(out[_INDEX_FIELD], dtype=np.int64)
            if len(kept) != len(boxes):  # would be a bug: this stage has no filters
                raise RuntimeError(f"final resize dropped {len(boxes) - len(kept)} boxes")
            image, boxes = out["image"], out["bboxes"]
            meta = _compose_meta(meta, in_h, in_w, image.shape[:2], dict(out["applied_transforms"]))
        n = len(index)
        sample["image"] = np.ascontiguousarray(image)
        sample["boxes"] = np.asarray(boxes, dtype=np.float32).reshape(n, 4)
        for key in ("labels", "difficult", "iscrowd"):
            if key in sample:
                sample[key] = np.asarray(sample[key])[index]
        meta["input_size"] = tuple(int(s) for s in image.shape[:2])
        sample["meta"] = meta
        return sample

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, letterbox={self.letterbox}, preset={self.preset!r}, "
                f"augmentation={self.augmentation!r})")


def _compose_meta(meta: dict, in_h: int, in_w: int, out_hw, applied: dict) -> dict:
    """Fold the final resize into ``meta`` so that ``x_input = x_orig * sx + left`` still holds."""
    out_h, out_w = out_hw
    if "PadIfNeeded" in applied:
        pad = applied["PadIfNeeded"]
        left, top = float(pad["pad_left"]), float(pad["pad_top"])
        # The resized (unpadded) size is what PadIfNeeded received; boxes were scaled by exactly
        # new_size / old_size (albumentations normalises, then denormalises with the new shape).
        new_h, new_w = pad["shape"][:2]
    else:
        left = top = 0.0
        new_h, new_w = out_h, out_w
    sx, sy = new_w / in_w, new_h / in_h
    sx0, sy0 = meta.get("scale", (1.0, 1.0))
    left0, top0 = meta.get("pad", (0.0, 0.0))
    meta = dict(meta)
    meta.setdefault("orig_size", (int(in_h), int(in_w)))
    meta["scale"] = (float(sx0 * sx), float(sy0 * sy))
    meta["pad"] = (float(left0 * sx + left), float(top0 * sy + top))
    meta["input_size"] = (int(out_h), int(out_w))
    return meta


def build_transforms(cfg: Mapping | None, path: str = "transforms"):
    """Build the sample transform of a dataset config (``None`` or ``{}`` -> ``None``)."""
    if cfg is None:
        return None
    if callable(cfg) and not isinstance(cfg, Mapping):
        return cfg
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{path}: expected a dict of transform options, got {type(cfg).__name__}")
    if not cfg:
        return None
    for key in cfg:
        if key not in CONFIG_KEYS:
            close = difflib.get_close_matches(str(key), CONFIG_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{path}.{key}: unknown transform option{hint} (options: {', '.join(CONFIG_KEYS)})")
    return DetectionTransforms(**cfg, path=path)
