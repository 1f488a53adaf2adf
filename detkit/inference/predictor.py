"""``detkit.Predictor``: a trained detector for notebooks and services.

    from detkit import Predictor
    predictor = Predictor("configs/yolov1_shapes.py", "work_dirs/yolov1_shapes/best_voc07_ap50.pth")
    detections = predictor.predict(["a.jpg", rgb_array])   # list[dict(boxes, scores, labels)]

Boxes are ``xyxy`` in pixels of the original images. Images may be paths or ``uint8`` RGB arrays
(HxWx3); a single image gives a one-element list.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from detkit.device import select_device
from detkit.errors import ConfigError

__all__ = ["Predictor"]


def _postprocessor_overrides(cfg: dict, conf, iou, max_det) -> dict:
    """Put --conf / --iou / --max-det into the model config, so they reach the postprocessor by name."""
    cfg = copy.deepcopy(cfg)
    post = cfg.get("model", {}).get("postprocessor")
    if not isinstance(post, dict):
        # --conf still applies: Predictor filters the final detections by score itself.
        if any(v is not None for v in (iou, max_det)):
            raise ConfigError("model.postprocessor: the config has none, so --iou/--max-det cannot apply")
        return cfg
    for key, value in (("score_threshold", conf), ("iou_threshold", iou), ("max_per_image", max_det)):
        if value is not None:
            post[key] = value
    return cfg


class Predictor:
    """Load a config and a checkpoint once; predict on batches of images.

    ``config`` is a config path or an already-loaded config dict; ``checkpoint`` a path (loaded with
    ``weights_only=True``; ``unsafe_load=True`` allows pickled checkpoints you trust). ``conf``, ``iou``
    and ``max_det`` override the postprocessor's score threshold, NMS IoU and detections per image;
    ``conf`` is also applied to the final detections, so it holds for detectors without a postprocessor.
    (Filtering before or after greedy NMS keeps the same boxes: a lower-scored box never suppresses
    a higher one.)
    The class names come from the checkpoint, falling back to the config's ``data.classes``.
    """

    def __init__(self, config, checkpoint, device=None, *, conf: float | None = None,
                 iou: float | None = None, max_det: int | None = None, unsafe_load: bool = False,
                 overrides: Sequence[str] = ()):
        from detkit.config import load_config
        from detkit.data.transforms import build_transforms
        from detkit.checkpoint import load_checkpoint, load_model_weights
        from detkit.models.builder import build_detector

        cfg = config if isinstance(config, Mapping) else load_config(config, overrides)
        cfg = _postprocessor_overrides(dict(cfg), conf, iou, max_det)
        self.cfg = cfg
        self.conf = conf
        self.device = select_device(device)
        ckpt = load_checkpoint(checkpoint, map_location="cpu", unsafe=unsafe_load)
        class_names = ckpt.get("class_names") or (cfg.get("data", {}).get("classes") or None)
        if not class_names:
            raise ConfigError(
                f"{checkpoint}: the checkpoint stores no class names and the config sets no data.classes; "
                "add data.classes to the config"
            )
        self.class_names = tuple(class_names)
        self.model = build_detector(cfg["model"], self.class_names, pretrained=False)  # the checkpoint's
        load_model_weights(self.model, ckpt, source=str(checkpoint))
        self.model.to(self.device).eval()
        self.transforms = build_transforms(self._test_transforms(cfg))

    @staticmethod
    def _test_transforms(cfg: Mapping) -> dict:
        """The evaluation pipeline (val split's resize/letterbox), without any augmentation."""
        data = cfg.get("data", {})
        for split in ("test", "val", "train"):
            spec = data.get(split)
            if isinstance(spec, Mapping) and isinstance(spec.get("transforms"), Mapping):
                tf = dict(spec["transforms"])
                tf.pop("preset", None)
                tf.pop("augment", None)
                return tf
        raise ConfigError("data: no split defines transforms, so the model's input size is unknown")

    def preprocess(self, images: Sequence[np.ndarray], paths: Sequence[str | None] | None = None):
        """Resize/letterbox RGB uint8 images into one batch; returns ``(batch, metas)``: one image
        meta per image (the detector maps its boxes back with it), naming the file when a path is
        given (for messages and proposal files keyed by file name)."""
        from detkit.data.base import to_tensors
        from detkit.structures import identity_meta

        tensors, metas = [], []
        for image, path in zip(images, paths or [None] * len(images)):
            h, w = image.shape[:2]
            meta = identity_meta(h, w)
            if path is not None:
                meta.update(file_name=Path(path).name, path=str(path))
            sample = {
                "image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                "difficult": np.zeros(0, bool), "iscrowd": np.zeros(0, bool), "image_id": 0, "meta": meta,
            }
            tensor, target = to_tensors(self.transforms(sample))
            tensors.append(tensor)
            metas.append(target["meta"])
        sizes = {tuple(t.shape) for t in tensors}
        if len(sizes) > 1:  # only when the pipeline does not fix the size; pad bottom/right
            hmax = max(t.shape[1] for t in tensors)
            wmax = max(t.shape[2] for t in tensors)
            tensors = [torch.nn.functional.pad(t, (0, wmax - t.shape[2], 0, hmax - t.shape[1])) for t in tensors]
        batch = torch.stack(tensors)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch, metas

    @torch.inference_mode()
    def predict(self, images) -> list[dict]:
        """Detections (on the CPU) for one image or a list; images are paths or RGB uint8 arrays."""
        from detkit.data.io import read_image

        single = isinstance(images, (str, Path, np.ndarray))
        items = [images] if single else list(images)
        arrays = [read_image(x) if isinstance(x, (str, Path)) else _check_array(x) for x in items]
        if not arrays:
            return []
        paths = [str(x) if isinstance(x, (str, Path)) else None for x in items]
        batch, metas = self.preprocess(arrays, paths)
        detections = [{k: v.detach().cpu() for k, v in d.items()} for d in self.model(batch, metas=metas)]
        if self.conf is not None:
            detections = [{k: v[d["scores"] >= self.conf] for k, v in d.items()} for d in detections]
        return detections

    __call__ = predict


def _check_array(image) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError("images must be paths or uint8 RGB arrays of shape HxWx3 "
                         f"(got {type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')})")
    return image
