"""One loader for every model file detkit runs: a checkpoint (``.pth``), an ONNX file (ONNX Runtime)
or a TorchScript file. :func:`load_model` returns the model as a detector -- an ``nn.Module`` with the
detector contract's eval-mode ``forward(images, metas=None)`` (images float ``[N, 3, H, W]`` in 0..1,
detections in original pixels for the images whose meta is given) -- plus the config that describes
its preprocessing. ``Predictor``, ``detkit infer``, ``detkit eval`` and the benchmarks therefore run any
of them through the same code (and ``detkit serve`` can, too).

Which runtime, by file: ``.onnx`` is ONNX Runtime; a zip archive with TorchScript code is TorchScript
(whatever its suffix: ``.torchscript``, ``.pt``); anything else is a checkpoint
(:func:`detkit.deploy.loading.load_detector`). Exported files carry their contract as metadata
(:mod:`detkit.deploy.metadata`); a file without it is refused with a message saying so.

Exported graphs (:mod:`detkit.deploy.graphs`) end either with NMS (fixed-size outputs, unpadded here)
or with the raw candidates (``--no-nms``), which the detector's own postprocessor, built from the
stored config, turns into detections. R-CNN graphs take proposals as an input: the stored proposal
generator computes them here, exactly as the eager detector does.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from detkit.deploy.metadata import INFO_FILE, DeployInfo
from detkit.errors import CheckpointError, ConfigError, DetkitError

__all__ = ["LoadedModel", "load_model", "model_kind", "ExportedDetector", "onnxruntime_or_hint",
           "postprocessor_overrides"]

ONNX_SUFFIXES = (".onnx",)
DEPLOY_EXTRA = "pip install 'detkit[deploy]'"


@dataclass
class LoadedModel:
    """A model ready to detect: ``model`` (eval mode, on ``device``), ``cfg`` (the config it runs with),
    ``class_names``, ``kind`` (``"checkpoint"``, ``"onnx"`` or ``"torchscript"``), ``info`` (the
    metadata of an exported file) and ``checkpoint`` (the dict of a ``.pth`` file)."""

    model: nn.Module
    cfg: dict
    class_names: tuple[str, ...]
    kind: str
    path: Path
    info: DeployInfo | None = None
    checkpoint: dict | None = None


def model_kind(path: str | os.PathLike) -> str:
    """``"onnx"``, ``"torchscript"`` or ``"checkpoint"`` (see the module docstring)."""
    path = Path(path)
    if path.suffix.lower() in ONNX_SUFFIXES:
        return "onnx"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            if any("/code/" in name for name in names) and any(name.endswith("constants.pkl") for name in names):
                return "torchscript"
    except (OSError, zipfile.BadZipFile):
        pass  # load_checkpoint reports unreadable files with their path
    return "checkpoint"


def postprocessor_overrides(cfg: Mapping, conf=None, iou=None, max_det=None, *, conf_is_filter: bool = False) -> dict:
    """``cfg`` with ``--conf`` / ``--iou`` / ``--max-det`` written into ``model.postprocessor``, where they
    reach the postprocessor by name. A config without a postprocessor takes ``conf`` only (applied to
    the final detections by the caller).

    ``conf_is_filter``: the caller drops detections under ``conf`` afterwards (``Predictor``), so
    ``conf`` only lowers the config's score threshold, never raises it. Raising it would remove
    candidates before NMS, and with box voting (``merge_iou``) those candidates move the kept boxes:
    ``detkit infer --conf 0.25`` would then draw other boxes than ``detkit eval`` scores and than an
    exported graph (NMS inside, then ``conf``) returns. Without voting both ways give the same
    detections (a box under the threshold never suppresses one above it).
    """
    cfg = copy.deepcopy(dict(cfg))
    post = cfg.get("model", {}).get("postprocessor")
    if not isinstance(post, dict):
        if any(v is not None for v in (iou, max_det)):
            raise ConfigError("model.postprocessor: the config has none, so --iou/--max-det cannot apply")
        return cfg
    if conf_is_filter and conf is not None:
        conf = score_floor(_built_score_threshold(post), conf)
    for key, value in (("score_threshold", conf), ("iou_threshold", iou), ("max_per_image", max_det)):
        if value is not None:
            post[key] = value
    return cfg


def score_floor(threshold: float | None, conf: float) -> float | None:
    """The score threshold a postprocessor built with ``threshold`` runs with when its caller filters
    the detections by ``conf`` afterwards: ``conf`` lowers it and never raises it (see
    :func:`postprocessor_overrides`). ``None`` (no threshold known) stays ``None``: the caller's
    filter is then all of ``conf``. One rule for ``detkit infer`` / ``eval`` and ``detkit serve``."""
    return None if threshold is None else min(float(conf), float(threshold))


def _built_score_threshold(post: Mapping) -> float | None:
    """The score threshold the postprocessor of config ``post`` is built with: the config's value,
    else its class's default (``BatchedNMS``: 0.05), so a config that leaves it out is not raised to
    ``conf`` either. ``None`` when the postprocessor takes no ``score_threshold`` or its type is unknown
    (building the model reports that)."""
    def number(value) -> float | None:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    if (stated := number(post.get("score_threshold"))) is not None:
        return stated
    from detkit.registry import get

    try:
        factory = get("postprocessors", post.get("type"))
        param = inspect.signature(factory).parameters.get("score_threshold")
    except (DetkitError, TypeError, ValueError):  # an unknown type: building the model says so
        return None
    return None if param is None else number(param.default)


def load_model(path: str | os.PathLike, config=None, *, device=None, conf: float | None = None,
               iou: float | None = None, max_det: int | None = None, unsafe_load: bool = False,
               overrides: Sequence[str] = (), threads: int | None = None, conf_is_filter: bool = False) -> LoadedModel:
    """Load ``path`` (see the module docstring) on ``device`` (default: CUDA if available).

    ``config`` (a path or dict) replaces a checkpoint's stored config; exported files carry their own
    and take none. ``conf`` / ``iou`` / ``max_det`` set the postprocessor's score threshold, IoU and
    detections per image where it runs in Python; a graph with NMS inside has them fixed at export,
    so a different ``iou`` / ``max_det`` is an error there (``conf`` still filters its detections).
    ``conf_is_filter``: the caller filters by ``conf`` itself, so ``conf`` only lowers the score
    threshold (see :func:`postprocessor_overrides`).
    ``threads``: ONNX Runtime's intra-op threads (default: one per physical core).
    """
    from detkit.device import select_device

    path = Path(path)
    device = select_device(device)
    kind = model_kind(path)
    if kind == "checkpoint":
        from detkit.deploy.loading import load_detector

        loaded = load_detector(path, config, overrides=overrides, unsafe_load=unsafe_load,
                               model_overrides=lambda cfg: postprocessor_overrides(
                                   cfg, conf, iou, max_det, conf_is_filter=conf_is_filter))
        return LoadedModel(loaded.model.to(device), loaded.cfg, loaded.class_names, kind, path,
                           checkpoint=loaded.checkpoint)
    if config is not None:
        raise ConfigError(f"{path.name}: an exported model carries its own config; leave CONFIG out "
                          f"(for `detkit eval`, --data CONFIG names the data)")
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    runner = OnnxRunner(path, device, threads) if kind == "onnx" else TorchScriptRunner(path, device)
    info = runner.info
    model = ExportedDetector(info, runner, device, conf=conf, iou=iou, max_det=max_det, source=path.name,
                             conf_is_filter=conf_is_filter)
    return LoadedModel(model, copy.deepcopy(info.config), tuple(info.names), kind, path, info=info)


# ----------------------------------------------------------------------------------------------
# Runtimes
# ----------------------------------------------------------------------------------------------


def onnxruntime_or_hint():
    """``import onnxruntime``, or a one-line error naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"running .onnx models needs onnxruntime: {DEPLOY_EXTRA}") from None
    return onnxruntime


class OnnxRunner:
    """An ONNX Runtime session: tensors in, tensors out, in the graph's input order."""

    def __init__(self, path: Path, device: torch.device, threads: int | None = None):
        ort = onnxruntime_or_hint()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: not a loadable ONNX model ({message[:200]})") from exc
        self.info = DeployInfo.from_strings(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.device = device

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        feed = {name: t.detach().cpu().float().numpy() for name, t in zip(self.input_names, inputs)}
        return [torch.from_numpy(out).to(self.device) for out in self.session.run(None, feed)]


class TorchScriptRunner:
    """A TorchScript module loaded with its extra file of metadata."""

    def __init__(self, path: Path, device: torch.device):
        import torchvision  # noqa: F401 - registers torchvision::nms / roi_align the graph calls

        extra = {INFO_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / ValueError variants
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: not a loadable TorchScript model ({message[:200]})") from exc
        try:
            props = json.loads(extra[INFO_FILE] or "{}")
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: damaged detkit metadata ({exc})") from exc
        self.info = DeployInfo.from_strings({k: json.dumps(v) for k, v in props.items()}, str(path))
        self.device = device

    @torch.inference_mode()
    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        return list(self.module(*(t.to(self.device, torch.float32) for t in inputs)))


# ----------------------------------------------------------------------------------------------
# The exported graph as a detector
# ----------------------------------------------------------------------------------------------


class ExportedDetector(nn.Module):
    """An exported graph behind the detector contract (eval mode only; see the module docstring).

    Attributes as a detector's: ``class_names``, ``num_classes``; ``info`` is the file's metadata.
    """

    def __init__(self, info: DeployInfo, runner, device: torch.device, *, conf=None, iou=None, max_det=None,
                 source: str = "model", conf_is_filter: bool = False):
        super().__init__()
        from detkit import registry

        self.info, self.runner, self.device, self.source = info, runner, device, source
        self.class_names = tuple(info.names)
        self.num_classes = len(self.class_names)
        self.input_size = tuple(info.input_size)
        self.postprocessor = None
        self.region_proposals = None
        if info.nms:
            for name, value, fixed in (("--iou", iou, info.iou_threshold), ("--max-det", max_det, info.max_detections)):
                if value is not None and value != fixed:
                    raise ConfigError(f"{source}: NMS is inside the graph with {name} {fixed}; re-export with "
                                      f"{name} {value}, or export with --no-nms")
        else:
            model_cfg = postprocessor_overrides(info.config, conf, iou, max_det,
                                                conf_is_filter=conf_is_filter)["model"]
            self.postprocessor = registry.build("postprocessors", model_cfg["postprocessor"], path="model.postprocessor")
        if "rois" in info.inputs:  # the R-CNN family (rcnn, rcnn_classic): proposals are computed here
            from detkit.models.detectors.rcnn import RegionProposals

            spec = info.proposals or {}
            generator = registry.build("proposals", spec.get("config"), path="model.proposals")
            self.region_proposals = RegionProposals(generator, spec.get("min_size", 0.0))
            self.max_proposals = int(spec.get("max_proposals", 1000))
        self.eval()

    def forward(self, images: Tensor, targets=None, metas: Sequence[Mapping | None] | None = None) -> list[dict]:
        from detkit.models.detectors.base import DetectorBase

        if targets is not None or self.training:
            raise ValueError(f"{self.source}: an exported model only detects (eval mode, no targets)")
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a float tensor [N, 3, H, W] RGB in 0..1, got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        if tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(f"{self.source} takes {self.input_size[0]}x{self.input_size[1]} inputs (fixed at "
                             f"export), got {images.shape[-2]}x{images.shape[-1]}")
        images = images.float()
        step = images.shape[0] if self.info.dynamic_batch else 1
        detections: list[dict] = []
        for start in range(0, images.shape[0], step):
            chunk = images[start:start + step]
            chunk_metas = None if metas is None else metas[start:start + step]
            detections += self._detect(chunk, chunk_metas)
        return DetectorBase.map_to_original(detections, metas)

    def _detect(self, images: Tensor, metas) -> list[dict]:
        inputs = [images]
        rows_per_image = None
        if self.region_proposals is not None:
            proposals = self.region_proposals(images, metas, self.max_proposals)
            rows_per_image = [len(p) for p in proposals]
            inputs.append(torch.cat([torch.cat((torch.full((len(p), 1), float(i), device=p.device), p), dim=1)
                                     for i, p in enumerate(proposals)]))
        outputs = self.runner(*inputs)
        if self.postprocessor is None:
            boxes, scores, labels, counts = outputs
            return [{"boxes": b[:k], "scores": s[:k], "labels": lab[:k].long()}
                    for b, s, lab, k in zip(boxes, scores, labels, counts.tolist())]
        boxes, scores = outputs
        if rows_per_image is not None:  # R-CNN: one row per roi, image after image
            boxes, scores = list(boxes.split(rows_per_image)), list(scores.split(rows_per_image))
        return self.postprocessor(boxes, scores)
