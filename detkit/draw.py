"""Drawing boxes with labels on RGB images: the one implementation behind ``detkit infer``
(detections) and ``detkit data show`` (ground truth), with a stable colour per class."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

__all__ = ["class_colour", "draw_boxes", "draw_detections", "draw_ground_truth"]


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


def _class_name(label: int, class_names: Sequence[str]) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def default_thickness(image: np.ndarray) -> int:
    """Box line width that stays visible on large images: one pixel per 300 of the short side."""
    return max(1, round(min(image.shape[:2]) / 300))


def draw_boxes(image: np.ndarray, boxes, labels, texts: Sequence[str], thicknesses: Sequence[int]) -> np.ndarray:
    """A copy of the RGB ``image`` with each ``xyxy`` box in its class colour and its text on a
    label of that colour, drawn in the given order (later ones on top)."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    font_scale = max(0.4, min(h, w) / 900)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    for box, label, text, thickness in zip(boxes, labels.tolist(), texts, thicknesses):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        colour = class_colour(label)
        # Crisp (not anti-aliased) edges: boxes stay exactly where the detection is.
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        # Above the box when there is room, else inside its top edge.
        top = y1 - th - baseline - 2 if y1 - th - baseline - 2 >= 0 else y1
        top = max(0, min(top, h - th - baseline - 2))
        left = max(0, min(x1, w - tw - 2))
        cv2.rectangle(out, (left, top), (left + tw + 2, top + th + baseline + 2), colour, -1)
        cv2.putText(out, text, (left + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    _text_colour(colour), 1, lineType=cv2.LINE_AA)
    return out


def draw_detections(image: np.ndarray, detections: Mapping, class_names: Sequence[str],
                    thickness: int | None = None) -> np.ndarray:
    """Return a copy of the RGB ``image`` with ``detections`` (boxes xyxy, scores, labels) drawn,
    labelled ``name score``."""
    boxes = np.asarray(detections["boxes"], dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(detections["scores"], dtype=np.float32).reshape(-1)
    labels = np.asarray(detections["labels"], dtype=np.int64).reshape(-1)
    # Lowest score first, so the most confident boxes and labels end up on top.
    order = np.argsort(scores, kind="stable")
    texts = [f"{_class_name(int(labels[i]), class_names)} {scores[i]:.2f}" for i in order]
    width = thickness or max(2, default_thickness(image))
    return draw_boxes(image, boxes[order], labels[order], texts, [width] * len(order))


def draw_ground_truth(image: np.ndarray, boxes, labels, class_names, difficult=None, iscrowd=None) -> np.ndarray:
    """A copy of the RGB ``image`` with ``boxes`` (xyxy) and class names drawn.

    Difficult and crowd boxes are drawn thin and labelled ``name (difficult)`` / ``name (crowd)``.
    """
    labels = np.asarray(labels, np.int64).reshape(-1)
    n = len(labels)
    difficult = np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
    iscrowd = np.zeros(n, bool) if iscrowd is None else np.asarray(iscrowd, bool).reshape(-1)
    texts = [_class_name(label, class_names) + (" (crowd)" if crowd else " (difficult)" if hard else "")
             for label, hard, crowd in zip(labels.tolist(), difficult, iscrowd)]
    width = default_thickness(image)
    return draw_boxes(image, boxes, labels, texts, [1 if hard or crowd else width
                                                    for hard, crowd in zip(difficult, iscrowd)])
