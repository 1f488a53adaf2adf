"""What an exported model carries besides its graph: the contract a runtime needs to feed it and read
its outputs. Stored as string key/value pairs -- ONNX ``metadata_props``, a TorchScript extra file
``detkit.json`` -- each value JSON, so any runtime reads them without detkit::

    import json, onnxruntime as ort
    meta = ort.InferenceSession("model.onnx").get_modelmeta().custom_metadata_map
    names, (height, width) = json.loads(meta["names"]), json.loads(meta["input_size"])

Keys (:class:`DeployInfo`): ``detkit_format`` (version of this contract), ``detector`` (``yolov1`` /
``rcnn``), ``names`` (class names, label ``i`` is ``names[i]``), ``input_size`` ``[H, W]``, ``resize``
(``"stretch"``: ``cv2.resize`` to ``W x H``, bilinear; ``"letterbox"``: keep the aspect ratio, scale
``min(H / h, W / w)``, pad centred with ``pad_value``), ``pad_value``, ``input`` (the graph takes float32
``[N, 3, H, W]`` RGB in 0..1 and normalises itself with ``mean`` / ``std``, recorded for reference),
``nms`` (whether NMS is in the graph), ``score_threshold`` / ``iou_threshold`` / ``max_detections`` /
``class_agnostic`` / ``merge_iou`` (the postprocessor's values; ``merge_iou`` is the box-voting IoU,
``null`` without voting; a graph with NMS inside votes already), ``dynamic_batch``, ``inputs`` /
``outputs`` (names, see :mod:`detkit.deploy.graphs`), ``proposals`` (R-CNN: the generator config,
``min_size`` and ``max_proposals`` the runtime applies before the graph), ``precision`` and ``config`` (the resolved
detkit config), ``detkit_version``, ``torch_version``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass

from detkit.errors import CheckpointError

__all__ = ["DeployInfo", "FORMAT_VERSION", "INFO_FILE"]

FORMAT_VERSION = 1
# The TorchScript extra file holding the same keys as one JSON object.
INFO_FILE = "detkit.json"
INPUT_CONTRACT = "float32 [N, 3, H, W] RGB in 0..1 (the graph normalises with mean/std)"


@dataclass
class DeployInfo:
    """The exported model's contract (see the module docstring for every key)."""

    detector: str
    names: list[str]
    input_size: list[int]
    resize: str
    pad_value: float
    mean: list[float]
    std: list[float]
    nms: bool
    score_threshold: float
    iou_threshold: float
    max_detections: int | None
    class_agnostic: bool
    dynamic_batch: bool
    inputs: list[str]
    outputs: list[str]
    config: dict
    proposals: dict | None = None
    # None for no box voting; optional so that files exported before it was recorded still load
    merge_iou: float | None = None
    precision: str = "float32"
    input: str = INPUT_CONTRACT
    detkit_version: str = ""
    torch_version: str = ""
    detkit_format: int = FORMAT_VERSION

    def to_strings(self) -> dict[str, str]:
        """Every key with its JSON value (what ONNX ``metadata_props`` hold)."""
        return {key: json.dumps(value) for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_strings(cls, props: Mapping[str, str], source: str) -> DeployInfo:
        """Read :meth:`to_strings` back; a file without them was not exported by detkit."""
        if "detkit_format" not in props:
            raise CheckpointError(f"{source}: not a detkit export (no detkit metadata; export models with "
                                  f"`detkit export`)")
        try:
            values = {key: json.loads(props[key]) for key in props if key in _FIELDS}
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: damaged detkit metadata ({exc})") from exc
        if not isinstance(values["detkit_format"], int) or values["detkit_format"] > FORMAT_VERSION:
            raise CheckpointError(f"{source}: exported by a newer detkit (metadata format "
                                  f"{values['detkit_format']}, this one reads {FORMAT_VERSION}); upgrade detkit")
        missing = [name for name, f in _FIELDS.items() if name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise CheckpointError(f"{source}: incomplete detkit metadata (no {', '.join(missing)})")
        return cls(**values)


_FIELDS = {f.name: f for f in dataclasses.fields(DeployInfo)}
