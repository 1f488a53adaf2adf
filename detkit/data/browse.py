"""``detkit data show``: write images of a split with their ground-truth boxes drawn.

Without ``transformed`` the images are drawn as stored (after EXIF orientation, boxes as the dataset
cleaned them: what the model is meant to learn). With ``transformed`` each sample first goes through
the split's transforms (resize / letterbox / augmentation), so the picture shows exactly what the
model receives. Colours per class are the ones ``detkit infer`` uses.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from detkit.errors import DataError

__all__ = ["browse", "draw_ground_truth"]


def draw_ground_truth(image: np.ndarray, boxes, labels, class_names, difficult=None, iscrowd=None) -> np.ndarray:
    """A copy of the RGB ``image`` with ``boxes`` (xyxy) and class names drawn.

    Difficult and crowd boxes are drawn thin and labelled ``name (difficult)`` / ``name (crowd)``.
    """
    import cv2

    from detkit.inference.draw import class_colour

    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thickness = max(1, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 900)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
    iscrowd = np.zeros(len(boxes), bool) if iscrowd is None else np.asarray(iscrowd, bool).reshape(-1)
    for box, label, is_difficult, is_crowd in zip(boxes, labels.tolist(), difficult, iscrowd):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        colour = class_colour(label)
        special = is_difficult or is_crowd
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 1 if special else thickness, lineType=cv2.LINE_AA)
        text = class_names[label] if 0 <= label < len(class_names) else str(label)
        if is_crowd:
            text += " (crowd)"
        elif is_difficult:
            text += " (difficult)"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y1 - th - baseline - 2 if y1 - th - baseline - 2 >= 0 else y1
        top = max(0, min(top, h - th - baseline - 2))
        left = max(0, min(x1, w - tw - 2))
        cv2.rectangle(out, (left, top), (left + tw + 2, top + th + baseline + 2), colour, -1)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        cv2.putText(out, text, (left + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0) if luminance > 150 else (255, 255, 255), 1, lineType=cv2.LINE_AA)
    return out


def _displayable(image) -> np.ndarray:
    """uint8 HWC RGB from whatever the transforms returned (ndarray HWC, or tensor CHW; uint8 or float)."""
    if hasattr(image, "detach"):  # torch tensor, CHW
        image = image.detach().cpu().numpy()
        if image.ndim == 3:
            image = image.transpose(1, 2, 0)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
        lo, hi = float(image.min(initial=0.0)), float(image.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:
            image = image * 255.0
        elif lo < 0.0 or hi > 255.0:  # normalised (mean/std): stretch to the visible range
            image = (image - lo) / max(hi - lo, 1e-6) * 255.0
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, :3])


def _safe_stem(name: str) -> str:
    stem = Path(str(name)).stem
    return re.sub(r"[\\/:*?\"<>|\x00-\x1f]", "_", stem)[:80] or "image"


def browse(cfg: dict, split: str = "train", out_dir: str = "runs/browse", num: int = 20,
           transformed: bool = False) -> str:
    """Write the first ``num`` readable samples of ``split`` with boxes drawn; returns a summary.

    Unreadable samples are skipped (and listed in the summary) and the next ones are used instead.
    """
    import cv2

    from detkit.data.builder import build_dataset

    # No verification pass: only the first `num` samples are read, and unreadable ones are listed below.
    dataset = build_dataset(cfg, split, verify=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    use_transforms = transformed and dataset.transforms is not None
    written, skipped, boxes_drawn = 0, [], 0
    for index in range(len(dataset)):
        if written >= num:
            break
        try:
            sample = dataset.raw_sample(index)
            if use_transforms:
                sample = dataset.transforms(sample)
        except DataError as exc:
            skipped.append(str(exc))
            continue
        image = _displayable(sample["image"])
        canvas = draw_ground_truth(image, sample["boxes"], sample["labels"], dataset.classes,
                                   sample.get("difficult"), sample.get("iscrowd"))
        name = f"{index:05d}_{_safe_stem(sample['meta'].get('file_name') or index)}.jpg"
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise DataError(f"{out / name}: OpenCV could not encode the image")
        (out / name).write_bytes(encoded.tobytes())
        written += 1
        boxes_drawn += len(sample["boxes"])

    how = "after the split's transforms" if use_transforms else "as stored"
    lines = [f"wrote {written} image(s) of split '{split}' ({how}, {boxes_drawn} boxes) to {out}"]
    if transformed and not use_transforms:
        lines.append(f"  note: split '{split}' has no transforms; drew the images as stored")
    if written < num and not skipped:
        lines.append(f"  the split has only {len(dataset)} image(s)")
    if skipped:
        lines.append(f"  skipped {len(skipped)} unreadable sample(s):")
        lines += [f"    {msg}" for msg in skipped[:10]]
        if len(skipped) > 10:
            lines.append(f"    ... and {len(skipped) - 10} more (run `detkit check-data`)")
    return "\n".join(lines)
