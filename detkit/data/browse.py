"""``detkit data show``: write images of a split with their ground-truth boxes drawn.

Without ``transformed`` the images are drawn as stored (after EXIF orientation, boxes as the dataset
cleaned them: what the model is meant to learn). With ``transformed`` each sample first goes through
the split's transforms (resize / letterbox / augmentation), so the picture shows exactly what the
model receives. Drawing (and the colour per class) is :mod:`detkit.draw`, shared with ``detkit infer``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from detkit.errors import DataError

__all__ = ["browse"]


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
    from detkit.draw import draw_ground_truth
    from detkit.tasks import DETECTION, check_dataset_task

    # No verification pass: only the first `num` samples are read, and unreadable ones are listed below.
    dataset = build_dataset(cfg, split, verify=False)
    check_dataset_task(dataset, DETECTION, f"data.{split}", "data show draws boxes of detection data")
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
