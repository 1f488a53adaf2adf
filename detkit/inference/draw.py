"""Drawing detections: boxes, class names and scores, a stable colour per class."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

__all__ = ["class_colour", "draw_detections"]


@lru_cache(maxsize=None)
def class_colour(label: int) -> tuple[int, int, int]:
    """An RGB colour that depends only on the class index (golden-ratio hue steps stay distinct)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_colour(rgb) -> tuple[int, int, int]:
    # Black on light labels, white on dark ones (perceived luminance), so labels stay readable.
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def draw_detections(image: np.ndarray, detections: Mapping, class_names: Sequence[str],
                    thickness: int | None = None) -> np.ndarray:
    """Return a copy of the RGB ``image`` with ``detections`` (boxes xyxy, scores, labels) drawn."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thickness = thickness or max(2, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 900)
    boxes = np.asarray(detections["boxes"], dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(detections["scores"], dtype=np.float32).reshape(-1)
    labels = np.asarray(detections["labels"], dtype=np.int64).reshape(-1)
    # Lowest score first, so the most confident boxes and labels end up on top.
    for i in np.argsort(scores, kind="stable"):
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        label = int(labels[i])
        colour = class_colour(label)
        # Crisp (not anti-aliased) edges: boxes stay exactly where the detection is.
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = f"{name} {scores[i]:.2f}"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        # Above the box when there is room, else inside its top edge.
        top = y1 - th - baseline - 2 if y1 - th - baseline - 2 >= 0 else y1
        top = max(0, min(top, h - th - baseline - 2))
        left = max(0, min(x1, w - tw - 2))
        cv2.rectangle(out, (left, top), (left + tw + 2, top + th + baseline + 2), colour, -1)
        cv2.putText(out, text, (left + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    _text_colour(colour), 1, lineType=cv2.LINE_AA)
    return out
