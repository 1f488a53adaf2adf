"""``detkit.Predictor``: a trained detector for notebooks and services.

    from detkit import Predictor
    predictor = Predictor("work_dirs/yolov1_shapes/best_voc07_ap50.pth")   # or "model.onnx"
    for result in predictor(["a.jpg", rgb_array, pil_image]):
        print(result.names, result.scores, result.boxes)                   # xyxy, original pixels
        annotated = result.plot()

The model file may be a checkpoint (its stored config and class names are enough), an exported ONNX
or TorchScript file (:mod:`detkit.deploy.backends` runs each); ``Predictor(config, checkpoint)`` uses
another config with a checkpoint. Images may be paths, RGB ``uint8`` arrays ``HxWx3``, PIL images or
``CHW`` tensors (``uint8``, or float in 0..1); a single image gives a one-element list of
:class:`~detkit.inference.results.Result`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from detkit.errors import ConfigError, DataError
from detkit.inference import DEFAULT_CONF
from detkit.inference.results import Result

__all__ = ["Predictor", "eval_transforms"]


def eval_transforms(cfg: Mapping) -> dict:
    """The evaluation pipeline of ``cfg`` (the test, else val, else train split's resize/letterbox),
    without any augmentation: what a deployed model's input goes through."""
    data = cfg.get("data", {})
    for split in ("test", "val", "train"):
        spec = data.get(split)
        if isinstance(spec, Mapping) and isinstance(spec.get("transforms"), Mapping):
            tf = dict(spec["transforms"])
            tf.pop("preset", None)
            tf.pop("augment", None)
            return tf
    raise ConfigError("data: no split defines transforms, so the model's input size is unknown")


class Predictor:
    """Load a model once; predict on batches of images.

    ``Predictor(model_file)`` or ``Predictor(config, checkpoint)`` (a config path or dict, e.g. to
    change the input size). ``conf`` (default 0.25, as ``detkit infer``) drops detections scoring
    below it -- ``None`` keeps what the model's postprocessor returns; it filters the detections the
    model computes with its own (lower, mAP's) score threshold and does not change them, so with box
    voting the boxes are those ``detkit eval`` scores; ``iou`` and ``max_det``
    override the postprocessor's NMS IoU and detections per image (see
    :func:`detkit.deploy.backends.load_model`). ``unsafe_load=True`` allows checkpoints that need
    pickle (only files you trust); ``overrides`` are ``--set`` items applied to the config;
    ``threads``: ONNX Runtime's intra-op threads.
    """

    def __init__(self, model, checkpoint=None, device=None, *, conf: float | None = DEFAULT_CONF,
                 iou: float | None = None, max_det: int | None = None, unsafe_load: bool = False,
                 overrides: Sequence[str] = (), threads: int | None = None):
        from detkit.data.builder import data_max_pixels
        from detkit.data.transforms import build_transforms
        from detkit.deploy.backends import load_model

        if checkpoint is None:
            if isinstance(model, Mapping) or Path(str(model)).suffix == ".py":
                raise ConfigError("Predictor(config, checkpoint): a config needs a checkpoint; or pass the "
                                  "checkpoint alone (it stores its config)")
            config, checkpoint = None, model
        else:
            config = model
        loaded = load_model(checkpoint, config, device=device, conf=conf, iou=iou, max_det=max_det,
                            unsafe_load=unsafe_load, overrides=overrides, threads=threads,
                            conf_is_filter=True)  # Result.filter(conf) below
        self.loaded = loaded
        self.model = loaded.model
        self.cfg = loaded.cfg
        self.class_names = loaded.class_names
        self.conf = conf
        self.max_image_pixels = data_max_pixels(self.cfg)  # data.max_image_pixels (None: the reader's default)
        self.device = next((p.device for p in self.model.parameters()), getattr(self.model, "device", None)) \
            or torch.device("cpu")
        self.transforms = build_transforms(eval_transforms(self.cfg))

    def preprocess(self, images: Sequence[np.ndarray], paths: Sequence[str | None] | None = None):
        """Resize/letterbox RGB uint8 images into one batch; returns ``(batch, metas)``: one image
        meta per image (the detector maps its boxes back with it), naming the file when a path is
        given (for messages and proposal files keyed by file name)."""
        prepared = [self.prepare(image, path) for image, path in zip(images, paths or [None] * len(images))]
        return self.collate([tensor for tensor, _ in prepared]), [meta for _, meta in prepared]

    def prepare(self, image: np.ndarray, path: str | None = None) -> tuple[torch.Tensor, dict]:
        """One RGB uint8 image through the evaluation pipeline: ``(tensor [3, H, W] in 0..1, meta)``.
        The half of :meth:`preprocess` that can run per image, on any thread (``detkit serve``
        prepares each request as it arrives and batches them later with :meth:`collate`)."""
        from detkit.data.base import to_tensors
        from detkit.structures import identity_meta

        h, w = image.shape[:2]
        meta = identity_meta(h, w)
        if path is not None:
            meta.update(file_name=Path(path).name, path=str(path))
        sample = {
            "image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
            "difficult": np.zeros(0, bool), "iscrowd": np.zeros(0, bool), "image_id": 0, "meta": meta,
        }
        tensor, target = to_tensors(self.transforms(sample))
        return tensor, target["meta"]

    def collate(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Prepared images as one batch on the model's device."""
        sizes = {tuple(t.shape) for t in tensors}
        if len(sizes) > 1:  # only when the pipeline does not fix the size; pad bottom/right
            hmax = max(t.shape[1] for t in tensors)
            wmax = max(t.shape[2] for t in tensors)
            tensors = [torch.nn.functional.pad(t, (0, wmax - t.shape[2], 0, hmax - t.shape[1])) for t in tensors]
        batch = torch.stack(list(tensors))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    @torch.inference_mode()
    def predict(self, images) -> list[Result]:
        """One :class:`~detkit.inference.results.Result` per image (one image, or a list or tuple of
        them)."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        arrays = [as_rgb_array(x, self.max_image_pixels) for x in items]
        if not arrays:
            return []
        paths = [str(x) if isinstance(x, (str, Path)) else None for x in items]
        batch, metas = self.preprocess(arrays, paths)
        results = []
        for det, image, path in zip(self.model(batch, metas=metas), arrays, paths):
            results.append(Result.from_detections(det, self.class_names, image, path).filter(self.conf))
        return results

    __call__ = predict


def _is_pil(image) -> bool:
    module = type(image).__module__
    return module.startswith("PIL.") and hasattr(image, "convert")


def as_rgb_array(image, max_pixels: int | None = None) -> np.ndarray:
    """A path, RGB uint8 array ``HxWx3``, PIL image or ``CHW`` tensor (uint8, or float in 0..1) as an
    RGB uint8 ``HxWx3`` array; anything else is a :class:`DataError` saying what is accepted. A path
    is read with :func:`detkit.data.io.read_image` (``max_pixels``: its pixel limit)."""
    from detkit.data.io import read_image

    if isinstance(image, (str, Path)):
        return read_image(image, max_pixels)
    if _is_pil(image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[0] == 3:
        if image.dtype == torch.uint8:
            return image.permute(1, 2, 0).contiguous().cpu().numpy()
        if image.is_floating_point():
            low, high = (float(image.min()), float(image.max())) if image.numel() else (0.0, 0.0)
            if low < 0 or high > 1:
                raise DataError(f"a float CHW tensor must hold values in 0..1, found {low:.2f}..{high:.2f} "
                                "(pass uint8 tensors for 0..255 images)")
            return (image.detach().float() * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    what = f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))} {getattr(image, 'dtype', '')}".strip()
    raise DataError("images must be paths, uint8 RGB arrays of shape HxWx3, PIL images or CHW tensors "
                    f"(3xHxW, uint8 or float 0..1); got {what}")
