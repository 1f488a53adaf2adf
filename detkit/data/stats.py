"""Box statistics of a data split: instances per class, box sizes, aspect ratios, centre positions.

Read from the annotations alone (``dataset.load_annotation``, no image decoding), in original-image
pixels, before any transform: what the data set holds, not what an augmented batch looks like. An
image whose annotation states no size gets it from the file header (:func:`detkit.data.io.image_size`).
Drawn by :func:`detkit.plots.data.plot_box_statistics` (``detkit check-data --plots`` and the end of
training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BoxStatistics", "box_statistics"]


@dataclass
class BoxStatistics:
    class_names: tuple[str, ...]
    labels: np.ndarray  # [K] every box of the split, difficult / crowd included
    widths: np.ndarray  # [K] pixels
    heights: np.ndarray  # [K]
    centres: np.ndarray  # [K, 2] box centre x / image width, y / image height (0..1)
    num_images: int
    empty_images: int  # images without boxes

    @property
    def instances(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))

    @property
    def aspect_ratios(self) -> np.ndarray:
        """Width / height of every box."""
        return self.widths / np.maximum(self.heights, 1e-9)


def box_statistics(dataset) -> BoxStatistics:
    """The statistics of every annotation of ``dataset`` (a :class:`~detkit.data.base.DetectionDataset`)."""
    from detkit.data.io import image_size

    labels, boxes, centres = [], [], []
    empty = 0
    for i in range(len(dataset)):
        ann = dataset.load_annotation(i)
        if not len(ann.boxes):
            empty += 1
            continue
        width, height = ann.width, ann.height
        if not width or not height:
            height, width = image_size(dataset.image_path(i))
        b = ann.boxes.astype(np.float64)
        labels.append(ann.labels)
        boxes.append(b)
        centres.append(np.stack([(b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height], 1))
    b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    return BoxStatistics(
        class_names=tuple(dataset.classes),
        labels=np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
        widths=b[:, 2] - b[:, 0], heights=b[:, 3] - b[:, 1],
        centres=np.concatenate(centres) if centres else np.zeros((0, 2)),
        num_images=len(dataset), empty_images=empty,
    )
