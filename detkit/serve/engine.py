"""The model side of ``detkit serve``: one loaded detector, what a request may ask of it, and how a
batch of requests runs through it. No HTTP here (that is :mod:`detkit.serve.app`), so the rules are
plain Python and the web layer only maps :class:`RequestError` to status codes.

A batch runs once, with the **loosest** settings any request may ask for, and each request's
detections are then filtered to its own ``conf`` / ``max_det`` / ``classes``
(:meth:`detkit.inference.results.Result.filter`, which says why that equals a run with the request's
own settings). The NMS IoU cannot be filtered afterwards, so it is the batch key: requests with
different ``iou`` values are never in the same forward pass, and the postprocessor the batch runs
with is built for its IoU (a few are cached). An exported graph with NMS inside has its IoU and
detections per image fixed at export: a request for another IoU, or for more detections, is refused
(422) with a message saying so; fewer detections are the first ``max_det`` of the graph's.

Every model file ``Predictor`` runs works here (checkpoint, ONNX, TorchScript; YOLOv1 or R-CNN):
the engine holds a :class:`~detkit.inference.predictor.Predictor` and uses its per-image
``prepare`` (resize / letterbox, on the request's thread) and ``collate`` (on the batch thread).
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from detkit.deploy.backends import score_floor
from detkit.errors import ConfigError, DataError
from detkit.inference import DEFAULT_CONF

__all__ = ["Engine", "RequestError", "RequestSettings", "Prepared", "decode_upload"]


class RequestError(Exception):
    """A request the server refuses: ``status`` (413, 415, 422, 503...) and a one-line ``message``
    naming the problem (the JSON body's ``detail``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class RequestSettings:
    """What one request asks for, checked: ``conf``, ``iou`` (the batch key), ``max_det`` and
    ``classes`` (label indices, or ``None`` for all)."""

    conf: float
    iou: float | None
    max_det: int | None
    classes: frozenset[int] | None = None

    def to_json(self, class_names: Sequence[str]) -> dict:
        classes = None if self.classes is None else [class_names[i] for i in sorted(self.classes)]
        return {"conf": self.conf, "iou": self.iou, "max_det": self.max_det, "classes": classes}


@dataclass
class Prepared:
    """One decoded, resized image waiting for its batch: the model input, its meta (maps the boxes
    back to the original pixels) and what it took."""

    tensor: torch.Tensor
    meta: dict
    width: int
    height: int
    timings: dict = field(default_factory=dict)


def decode_upload(data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
    """An uploaded file as an RGB ``uint8`` image, through detkit's one image reader
    (:func:`detkit.data.io.decode_image`, which refuses an image whose header declares more than
    ``max_pixels`` pixels before decoding it; ``None``: the reader's default, 0: no limit). Unknown
    formats are 415; files that claim an image format but do not decode (corrupt) or are over the
    pixel limit are 422; each message names ``name`` and the problem."""
    from detkit.data.io import ImageTooLargeError, decode_image, max_image_pixels, sniff_format

    if not data:
        raise RequestError(422, f"{name}: empty upload (0 bytes)")
    if sniff_format(data) is None:
        raise RequestError(415, f"{name}: not an image: the first bytes match no format detkit reads "
                                f"(JPEG, PNG, GIF, BMP, TIFF, WebP)")
    try:
        return decode_image(data, name=name, max_pixels=max_pixels)
    except ImageTooLargeError as exc:  # the reader's hint names the config key; a server has its option
        pixels = exc.width * exc.height
        raise RequestError(422, f"{name}: {exc.width}x{exc.height} = {pixels:,} pixels is over the limit of "
                                f"{max_image_pixels(max_pixels):,} (detkit serve --max-pixels)") from None
    except DataError as exc:
        raise RequestError(422, str(exc)) from None


class Engine:
    """A detector loaded for serving (see the module docstring).

    ``model``: a checkpoint, ``.onnx`` or TorchScript file. ``conf`` / ``iou`` / ``max_det``: the
    settings of requests that do not give their own (defaults: 0.25 as ``detkit infer``, then the
    model's postprocessor values). ``threads``: intra-op threads of torch and ONNX Runtime.
    """

    def __init__(self, model: str | Path, *, device=None, conf: float = DEFAULT_CONF, iou: float | None = None,
                 max_det: int | None = None, threads: int | None = None, unsafe_load: bool = False,
                 max_pixels: int | None = None):
        from detkit.inference.predictor import Predictor
        from detkit.tasks import task_of_config

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(model)
        self.predictor = Predictor(self.path, device=device, conf=None, iou=iou, max_det=max_det,
                                   unsafe_load=unsafe_load, threads=threads)
        if task_of_config(self.predictor.cfg).name != "detection":
            raise ConfigError(f"{self.path.name} is a classifier (model.type "
                              f"{self.predictor.cfg['model'].get('type')!r}); detkit serve runs detectors")
        self.model = self.predictor.model
        self.class_names = self.predictor.class_names
        self.kind = self.predictor.loaded.kind
        # --max-pixels, else the model config's data.max_image_pixels, else the reader's default
        # ($DETKIT_MAX_IMAGE_PIXELS or Pillow's 89,478,485), as Predictor reads images
        self.max_pixels = self.predictor.max_image_pixels if max_pixels is None else int(max_pixels)
        self._lock = threading.Lock()  # the model runs one batch at a time (the postprocessor is swapped)
        post = self.model.postprocessor
        self.fixed_nms = post is None  # NMS inside an exported graph
        if self.fixed_nms:
            info = self.model.info
            self.floor, self.default_iou = info.score_threshold, info.iou_threshold
            self.max_det_limit = info.max_detections
            self.default_max_det = max_det if max_det is not None else info.max_detections
        else:
            self.default_iou = getattr(post, "iou_threshold", None)
            self.default_max_det = getattr(post, "max_per_image", None)
            self.floor = score_floor(getattr(post, "score_threshold", 0.0), conf)
            # The settings a request may change, by the names postprocessor_overrides writes too.
            self._post_cfg = dict(self.predictor.cfg["model"]["postprocessor"])
            self._post_keys = {key for key in ("score_threshold", "iou_threshold") if hasattr(post, key)}
            unlimited = getattr(self._loose(self.default_iou), "max_per_image", None) is None
            self.max_det_limit = None if unlimited else self.default_max_det
        if conf < self.floor:
            raise ConfigError(f"--conf {conf}: below the score threshold {self.floor} fixed in {self.path.name} "
                              f"at export (re-export with --conf {conf})")
        self.default_conf = float(conf)
        self.sha256 = _sha256(self.path)
        self.input_size = self.warm_up()

    # -- requests ----------------------------------------------------------------------------------
    def settings(self, conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                 classes: str | None = None) -> RequestSettings:
        """One request's settings, defaults filled in, or a 422 :class:`RequestError` saying why the
        model cannot give what it asks (ranges are checked by the web layer)."""
        from detkit.inference.run import parse_class_filter

        conf = self.default_conf if conf is None else float(conf)
        if conf < self.floor:
            raise RequestError(422, f"conf {conf}: below the model's score threshold {self.floor} "
                                    f"(model.postprocessor.score_threshold); detections under it are never computed")
        if iou is not None and self.default_iou is None:
            raise RequestError(422, "iou: this model's postprocessor has no IoU threshold to set")
        if self.fixed_nms and iou is not None and not math.isclose(iou, self.default_iou, abs_tol=1e-9):
            raise RequestError(422, f"iou {iou}: {self.path.name} has NMS inside the graph with IoU "
                                    f"{self.default_iou}, fixed at export (re-export with --iou {iou}, or with --no-nms)")
        if max_det is not None and self.max_det_limit is not None and max_det > self.max_det_limit:
            where = "fixed at export (re-export with --max-det" if self.fixed_nms else \
                "the model's postprocessor limit (start the server with --max-det"
            raise RequestError(422, f"max_det {max_det}: at most {self.max_det_limit}, {where} {max_det})")
        try:
            keep = parse_class_filter(classes, self.class_names, option="classes")
        except ConfigError as exc:
            raise RequestError(422, str(exc)) from None
        return RequestSettings(conf, self.default_iou if iou is None else float(iou),
                               self.default_max_det if max_det is None else int(max_det),
                               None if keep is None else frozenset(keep))

    def prepare(self, data: bytes, name: str = "upload") -> Prepared:
        """Decode an upload and run it through the evaluation pipeline (any thread)."""
        start = time.perf_counter()
        image = decode_upload(data, name, self.max_pixels)
        decoded = time.perf_counter()
        tensor, meta = self.predictor.prepare(image)
        done = time.perf_counter()
        return Prepared(tensor, meta, image.shape[1], image.shape[0],
                        {"decode": decoded - start, "preprocess": done - decoded})

    def run_batch(self, iou: float | None, items: Sequence[Prepared]) -> list[dict[str, torch.Tensor]]:
        """One forward pass for ``items`` (all asking for ``iou``): detections per item in original
        pixels, with the loosest score threshold and no limit per image (filter with :meth:`result`)."""
        with self._lock, torch.inference_mode():
            if not self.fixed_nms:
                self.model.postprocessor = self._loose(iou)
            batch = self.predictor.collate([item.tensor for item in items])
            return self.model(batch, metas=[item.meta for item in items])

    def result(self, detections: dict, settings: RequestSettings) -> list[dict]:
        """One request's detections as JSON-ready dicts (``box`` xyxy original pixels, ``score``,
        ``label``, ``name``), filtered to its settings."""
        from detkit.inference.results import Result

        result = Result.from_detections(detections, self.class_names)
        return result.filter(settings.conf, settings.max_det, settings.classes).to_list()

    @functools.lru_cache(maxsize=16)  # noqa: B019 - the engine lives as long as the process
    def _loose(self, iou: float | None):
        """The model's postprocessor with ``iou``, the engine's score floor and no limit per image
        (or, for a postprocessor that needs one, the default ``max_det`` as the limit)."""
        from detkit import registry

        base = dict(self._post_cfg)
        if "score_threshold" in self._post_keys:
            base["score_threshold"] = self.floor
        if iou is not None and "iou_threshold" in self._post_keys:
            base["iou_threshold"] = iou
        try:
            return registry.build("postprocessors", {**base, "max_per_image": None}, path="model.postprocessor")
        except (ConfigError, TypeError, ValueError):
            return registry.build("postprocessors", base, path="model.postprocessor")

    # -- the model ---------------------------------------------------------------------------------
    def warm_up(self) -> list[int]:
        """One forward pass on a grey image (the first one is slow: allocations, kernel selection);
        returns the model's input size ``[H, W]`` for that image."""
        grey = np.full((64, 64, 3), 114, np.uint8)  # no upload: the pixel limit does not apply to it
        prepared = Prepared(*self.predictor.prepare(grey), 64, 64)
        self.run_batch(self.default_iou, [prepared])
        return list(prepared.tensor.shape[-2:])

    def info(self) -> dict:
        """What ``GET /v1/model`` returns."""
        from detkit import __version__
        from detkit.data.io import max_image_pixels
        from detkit.draw import class_colour
        from detkit.inference.predictor import eval_transforms

        transforms = eval_transforms(self.predictor.cfg)
        return {
            "source": self.path.name, "kind": self.kind, "sha256": self.sha256,
            "detector": self.predictor.cfg.get("model", {}).get("type"),
            "classes": list(self.class_names),
            "colors": ["#%02x%02x%02x" % class_colour(i) for i in range(len(self.class_names))],
            "input_size": self.input_size,
            "resize": "letterbox" if transforms.get("letterbox") else "stretch",
            "defaults": {"conf": self.default_conf, "iou": self.default_iou, "max_det": self.default_max_det},
            "limits": {"min_conf": self.floor, "max_det": self.max_det_limit, "iou_fixed": self.fixed_nms,
                       "max_pixels": max_image_pixels(self.max_pixels) or None},
            "device": str(self.predictor.device), "torch_threads": torch.get_num_threads(),
            "detkit_version": __version__,
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
