"""Run a detkit ONNX export with nothing but numpy, OpenCV and onnxruntime (no torch, no detkit):

    python examples/onnx_infer.py model.onnx photo.jpg [CONF]   # one JSON line per detection scoring >= CONF (0.25)

For models exported with `detkit export CKPT --format onnx` from a config whose evaluation transform
stretches the image to the input size (the default; `resize` in the metadata says "stretch").
"""
import json
import sys

import cv2
import numpy as np
import onnxruntime as ort

conf = float(sys.argv[3]) if len(sys.argv) > 3 else 0.25
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
(height, width), image = meta["input_size"], cv2.cvtColor(cv2.imread(sys.argv[2]), cv2.COLOR_BGR2RGB)
x = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)[None].astype(np.float32) / 255
boxes, scores, labels, counts = session.run(None, {"images": x})  # NMS ran inside the graph
scale = np.array([width / image.shape[1], height / image.shape[0]] * 2, np.float32)
for box, score, label in zip(boxes[0, :counts[0]] / scale, scores[0, :counts[0]], labels[0, :counts[0]]):
    if score >= conf:
        print(json.dumps({"name": meta["names"][label], "score": float(score), "box": box.tolist()}))
