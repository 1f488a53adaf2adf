"""What :class:`~detkit.inference.predictor.Predictor` returns for one image: a :class:`Result`.

    result = Predictor("best.pth")("photo.jpg")[0]
    result.boxes, result.scores, result.labels, result.names   # xyxy original pixels, by score
    rgb = result.plot()                                          # annotated copy (detkit.draw)
    text = result.to_json()

``boxes`` ``FloatTensor[M, 4]`` (xyxy, pixels of the original image), ``scores`` ``FloatTensor[M]``,
``labels`` ``LongTensor[M]`` (0..C-1), all on the CPU: the detections contract of
docs/architecture.md, which :meth:`Result.to_dict` returns as the plain dict.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Result"]


@dataclass
class Result:
    """The detections of one image (see the module docstring). ``image`` is the RGB uint8 image the
    detections belong to (what :meth:`plot` draws on), ``path`` its file when it was read from one."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    image: np.ndarray | None = field(default=None, repr=False)
    path: str | None = None

    @classmethod
    def from_detections(cls, detections: dict, class_names: Sequence[str], image=None, path=None) -> Result:
        """From a detections dict (``boxes``, ``scores``, ``labels`` tensors), moved to the CPU."""
        return cls(detections["boxes"].detach().float().cpu(), detections["scores"].detach().float().cpu(),
                   detections["labels"].detach().long().cpu(), tuple(class_names), image, path)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> list[str]:
        """The class name of every detection."""
        return [self.class_names[i] for i in self.labels.tolist()]

    def select(self, keep: torch.Tensor) -> Result:
        """The detections where the boolean mask (or index tensor) ``keep`` says so."""
        return Result(self.boxes[keep], self.scores[keep], self.labels[keep], self.class_names, self.image,
                      self.path)

    def filter(self, conf: float | None = None, max_det: int | None = None,
               classes: Collection[int] | None = None) -> Result:
        """The detections scoring at least ``conf``, the ``max_det`` best of those, then only those
        whose label is in ``classes`` -- the order ``detkit infer`` applies ``--conf``, ``--max-det``
        (the postprocessor's) and ``--classes``. Taking the best ``max_det`` of a longer list by score
        equals a postprocessor run with ``max_per_image=max_det``, and a score threshold equals one
        applied before NMS (a lower-scoring box never suppresses a higher one), so ``detkit serve``
        runs a batch once with its loosest settings and filters per request with this. (With box
        voting, ``merge_iou``, a threshold before NMS would also move the kept boxes; detkit never
        applies ``conf`` there, so filtering is what every runtime does.)"""
        keep = torch.argsort(self.scores, descending=True, stable=True)
        if conf is not None:
            keep = keep[self.scores[keep] >= conf]
        if max_det is not None:
            keep = keep[:max_det]
        if classes is not None:
            keep = keep[torch.isin(self.labels[keep], torch.tensor(sorted(classes), dtype=self.labels.dtype))]
        return self.select(keep)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """``dict(boxes, scores, labels)``: the detections contract."""
        return {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}

    def to_list(self) -> list[dict]:
        """One plain dict per detection: ``box`` ``[x1, y1, x2, y2]``, ``score``, ``label``, ``name``."""
        return [{"box": [round(v, 2) for v in box], "score": round(score, 5), "label": label,
                 "name": self.class_names[label]}
                for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())]

    def to_json(self, **kwargs) -> str:
        """:meth:`to_list` as a JSON string (``kwargs`` go to ``json.dumps``, e.g. ``indent=2``)."""
        return json.dumps(self.to_list(), **kwargs)

    def plot(self, thickness: int | None = None) -> np.ndarray:
        """An annotated copy of the image (RGB uint8): boxes in class colours labelled ``name score``."""
        from detkit.draw import draw_detections

        if self.image is None:
            raise ValueError("this Result holds no image to draw on")
        return draw_detections(self.image, self.to_dict(), self.class_names, thickness)
