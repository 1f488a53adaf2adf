"""``detkit export``: a checkpoint as an ONNX file, a TorchScript file or a stripped checkpoint.

* ``onnx``: ``torch.onnx.export`` (the ``torch.export``-based exporter, which needs ``onnxscript``)
  of the detector's graph (:mod:`detkit.deploy.graphs`), with the contract of
  :mod:`detkit.deploy.metadata` in the model's ``metadata_props``. ``int8=True`` also quantises the
  weights of its convolutions and matrix products (ONNX Runtime's static QDQ quantisation,
  calibrated on the images given, or on the validation split of the config).
* ``torchscript``: ``torch.jit.trace`` of the same graph; the contract is the extra file
  ``detkit.json``.
* ``pth``: :func:`detkit.deploy.loading.deployment_checkpoint` (weights in float16 by default, config,
  class names), loadable wherever a checkpoint is.

The graph takes images at the config's evaluation input size (``data.val.transforms.size``). The
batch size is 1 unless ``dynamic_batch``; R-CNN graphs always take any number of proposals.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from detkit.deploy.metadata import INFO_FILE, DeployInfo
from detkit.errors import ConfigError

__all__ = ["FORMATS", "export", "default_output"]

FORMATS = ("onnx", "torchscript", "pth")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript", "pth": "_deploy.pth"}
# ONNX opset of the export: NonMaxSuppression, RoiAlign and TopK as the graph uses them.
DEFAULT_OPSET = 18


def default_output(checkpoint, fmt: str, int8: bool = False) -> Path:
    """``<checkpoint stem>.onnx`` (``_int8.onnx``), ``.torchscript`` or ``_deploy.pth`` beside it."""
    path = Path(checkpoint)
    suffix = ("_int8" if int8 else "") + _SUFFIX[fmt]
    return path.with_name(path.stem + suffix)


def export(checkpoint, fmt: str = "onnx", out=None, *, config=None, dynamic_batch: bool = False,
           nms: bool = True, conf: float | None = None, iou: float | None = None, max_det: int | None = None,
           half: bool = True, int8: bool = False, calibration: Sequence | None = None,
           opset: int = DEFAULT_OPSET, unsafe_load: bool = False, overrides: Sequence[str] = ()) -> Path:
    """Export ``checkpoint`` (see the module docstring); returns the written file.

    ``conf`` / ``iou`` / ``max_det`` set the in-graph postprocessor's score threshold (default: the
    config's, a low one that mAP needs), IoU and detections per image. ``half``: float16 weights in a
    ``pth`` export. ``calibration``: images (anything ``Predictor`` takes) for ``int8``.
    """
    from detkit.checkpoint import load_checkpoint, save_checkpoint
    from detkit.deploy.backends import postprocessor_overrides
    from detkit.deploy.loading import deployment_checkpoint, load_detector

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if int8 and fmt != "onnx":
        raise ConfigError("--int8 applies to --format onnx (ONNX Runtime quantisation)")
    out = Path(out) if out else default_output(checkpoint, fmt, int8)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pth":
        if config is not None or any(v is not None for v in (conf, iou, max_det)):
            raise ConfigError("--format pth keeps the checkpoint's own config; --config/--conf/--iou/--max-det "
                              "apply to graph exports")
        ckpt = load_checkpoint(checkpoint, unsafe=unsafe_load)
        if not ckpt.get("config"):
            raise ConfigError(f"{checkpoint}: stores no config, so a stripped copy could not be used alone")
        return save_checkpoint(out, deployment_checkpoint(ckpt, half=half))

    loaded = load_detector(checkpoint, config, overrides=overrides, unsafe_load=unsafe_load,
                           model_overrides=lambda cfg: postprocessor_overrides(cfg, conf, iou, max_det))
    from detkit.deploy.graphs import build_graph

    model = loaded.model.cpu().eval()
    graph = build_graph(model, nms=nms).eval()
    height, width = _input_size(loaded.cfg)
    example = _example_inputs(model, 2 if dynamic_batch else 1, height, width)
    info = _deploy_info(model, graph, loaded.cfg, (height, width), dynamic_batch)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt == "onnx":
            _export_onnx(graph, example, tmp, info, dynamic_batch, opset)
            if int8:
                _quantise_int8(tmp, info, loaded.cfg, calibration)
        else:
            _export_torchscript(graph, example, tmp, info)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _input_size(cfg) -> tuple[int, int]:
    from detkit.inference.predictor import eval_transforms

    size = eval_transforms(cfg).get("size")
    if size is None:
        raise ConfigError("data.val.transforms.size: an exported graph takes one input size; the config keeps "
                          "each image's own size (set a size, e.g. --set data.val.transforms.size=448)")
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _example_inputs(model, batch: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    # Values do not matter for the graph; a fixed generator keeps exports reproducible.
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    if not hasattr(model, "generate_proposals"):
        return (images,)
    proposals = model.generate_proposals(images, None, model.max_proposals_test)
    rois = torch.cat([torch.cat((torch.full((len(p), 1), float(i)), p), dim=1) for i, p in enumerate(proposals)])
    if rois.shape[0] < 2:  # a size of 0 or 1 would be specialised into the graph
        rois = torch.tensor([[0.0, 0.0, 0.0, width / 2, height / 2], [0.0, width / 4, height / 4, width, height]])
    return images, rois


def _deploy_info(model, graph, cfg, size, dynamic_batch: bool) -> DeployInfo:
    from detkit import __version__
    from detkit.inference.predictor import eval_transforms

    tf = eval_transforms(cfg)
    post = getattr(model, "postprocessor", None)
    proposals = None
    inputs = ["images"]
    if hasattr(model, "region_proposals"):
        inputs.append("rois")
        proposals = {"config": cfg["model"]["proposals"], "min_size": model.min_proposal_size,
                     "max_proposals": model.max_proposals_test}
    return DeployInfo(
        detector=str(cfg["model"]["type"]), names=list(model.class_names), input_size=list(size),
        resize="letterbox" if tf.get("letterbox") else "stretch", pad_value=tf.get("pad_value", 114),
        mean=model.pixel_mean.flatten().tolist(), std=model.pixel_std.flatten().tolist(),
        nms=graph.nms is not None, score_threshold=float(getattr(post, "score_threshold", 0.0)),
        iou_threshold=float(getattr(post, "iou_threshold", 0.0)),
        max_detections=getattr(post, "max_per_image", None), class_agnostic=bool(getattr(post, "class_agnostic", False)),
        merge_iou=None if getattr(post, "merge_iou", None) is None else float(post.merge_iou),
        dynamic_batch=dynamic_batch, inputs=inputs, outputs=list(graph.output_names), config=json.loads(json.dumps(cfg)),
        proposals=proposals, detkit_version=str(__version__), torch_version=str(torch.__version__))


def _export_onnx(graph, example, path: Path, info: DeployInfo, dynamic_batch: bool, opset: int) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx.export's exporter needs it
    except ImportError as exc:
        raise ConfigError(f"--format onnx needs onnx and onnxscript ({exc.name} is missing): "
                          "pip install 'detkit[deploy]'") from None
    shapes = {"images": {0: torch.export.Dim("batch", min=1, max=1024)} if dynamic_batch else {}}
    if "rois" in info.inputs:
        shapes["rois"] = {0: torch.export.Dim("rois", min=1)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations inside torch/torchvision's exporter, not ours
        torch.onnx.export(graph, example, str(path), input_names=list(info.inputs), output_names=list(info.outputs),
                          dynamic_shapes=shapes, opset_version=opset, dynamo=True, external_data=False,
                          verbose=False)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in info.to_strings().items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "detkit"
    onnx.save(proto, str(path))


def _export_torchscript(graph, example, path: Path, info: DeployInfo) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # Sizes are traced on purpose (graphs.py); torch.jit's deprecation notices are not the user's to act on.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={INFO_FILE: json.dumps(dataclasses.asdict(info))})


def _quantise_int8(path: Path, info: DeployInfo, cfg, calibration) -> None:
    """Replace the ONNX file at ``path`` by its int8 version: ONNX Runtime's static quantisation in QDQ
    format (int8 weights per channel, int8 activations calibrated by min/max on ``calibration``), of
    the Conv / MatMul / Gemm nodes only -- decoding and NMS stay float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    if info.detector != "yolov1":
        raise ConfigError("--int8: calibration feeds images only, so it exports yolov1 graphs (R-CNN graphs "
                          "also take proposals)")
    batches = [t.unsqueeze(0) if t.dim() == 3 else t for t in (calibration or _calibration_images(cfg))]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"images": b.float().numpy()} for b in batches])

        def get_next(self):
            return next(self.items, None)

    quantised = path.with_name(path.name + ".int8")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs its generic advice on the root logger
    try:
        quantize_static(str(path), str(quantised), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"])
        proto = onnx.load(str(quantised))
        del proto.metadata_props[:]
        info = dataclasses.replace(info, precision="int8")
        for key, value in info.to_strings().items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(path))
    finally:
        root.setLevel(level)
        quantised.unlink(missing_ok=True)
        path.with_name(path.stem + "-inferred.onnx").unlink(missing_ok=True)


def _calibration_images(cfg, count: int = 32) -> list[torch.Tensor]:
    """The first ``count`` images of the config's validation split, as the model sees them."""
    from detkit.data.builder import build_dataset

    dataset = build_dataset(cfg, "val")
    return [dataset[i][0] for i in range(min(count, len(dataset)))]
