"""Classification metrics: top-k accuracy, per-class accuracy and precision, the confusion matrix.

:class:`ClassificationEvaluator` has the detection evaluators' interface (``update(outputs, targets)``,
``compute()``, ``reset()``, ``state()`` / ``merge()`` / ``load_states()`` for distributed evaluation),
so :func:`~detkit.evaluation.loop.run_evaluation`, the EvalHook and ``detkit classify eval`` use it
exactly as they use the VOC / COCO evaluators.

* ``outputs``: one dict per image with ``scores`` (``[C]`` class scores, e.g. the classifier's softmax);
* ``targets``: one dict per image with ``label`` (the true class) and ``image_id``.

As in :mod:`detkit.evaluation.base` (whose :class:`~detkit.evaluation.base.Evaluator` this derives
from), images are keyed by ``image_id`` (a repeated id, e.g. from a
``DistributedSampler``'s padding, is counted once) and the metrics are computed over the images in key
order, so they do not depend on the order of arrival or on the number of processes.

``compute()`` returns, with the predicted class of an image its highest score (ties: the lower class
index) and a top-k hit when the true class is among the ``k`` highest (same tie rule):

* ``top1``, ``top5`` (``k`` capped at the number of classes) and ``mean_class_accuracy`` (the mean of
  the per-class accuracies, i.e. balanced accuracy; classes without images are left out);
* ``per_class`` (accuracy = recall of each class), ``per_class_precision``, ``per_class_stats``
  (``num_gt`` images of the class, ``num_det`` images predicted as it, ``recall``), the
  ``confusion_matrix`` (``[C][C]`` counts, rows the true class, columns the predicted one, as
  scikit-learn's ``confusion_matrix``) and ``num_images``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from detkit.errors import DataError
from detkit.evaluation.base import Evaluator, _image_id
from detkit.evaluation.names import TOPK

__all__ = ["ClassificationEvaluator", "ScoreRecord", "ground_truth"]


def ground_truth(targets: Sequence[Mapping]) -> list[dict]:
    """What the evaluator compares with: each target's ``label`` and ``image_id``."""
    return [{"label": t["label"], "image_id": t.get("image_id")} for t in targets]


def _to_numpy(value) -> np.ndarray:
    return value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value, np.float64)


@dataclass
class ScoreRecord:
    """The true class and the class scores of one image."""

    image_id: int | str | None
    label: int
    scores: np.ndarray  # [C]


class ClassificationEvaluator(Evaluator):
    """Top-k accuracy and the confusion matrix over collected images (see the module docstring).

    Keys, repeats, ``sorted_records`` and ``load_states`` are the detection evaluators' (:class:`Evaluator`).
    """

    state_format = "detkit-classification-eval-state"
    state_version = 1

    def __init__(self, class_names: Sequence[str], topk: Sequence[int] = TOPK):
        self.topk = tuple(int(k) for k in topk)
        super().__init__(class_names)

    def update(self, outputs: Sequence[Mapping], targets: Sequence[Mapping]) -> None:
        """Add a batch: ``outputs[i]["scores"]`` are the class scores of the image of ``targets[i]``."""
        if len(outputs) != len(targets):
            raise ValueError(f"got {len(outputs)} outputs for {len(targets)} targets; pass one per image")
        for i, (out, tgt) in enumerate(zip(outputs, targets)):
            if not isinstance(out, Mapping) or "scores" not in out:
                raise ValueError(f"image {i} of the batch: output must be a dict with 'scores' [C]")
            if not isinstance(tgt, Mapping) or tgt.get("label") is None:
                raise ValueError(f"image {i} of the batch: target must be a dict with a 'label'")
            scores = _to_numpy(out["scores"]).reshape(-1)
            if scores.shape != (self.num_classes,):
                raise ValueError(f"image {i} of the batch: {scores.size} scores for {self.num_classes} classes")
            label = int(np.asarray(_to_numpy(tgt["label"])).reshape(()))
            if not 0 <= label < self.num_classes:
                raise DataError(f"image {i} of the batch (image_id={tgt.get('image_id')!r}): label {label} is "
                                f"not in 0..{self.num_classes - 1}")
            self._add(ScoreRecord(_image_id(tgt.get("image_id")), label, scores))

    def _arrays(self, log: bool) -> tuple[list, np.ndarray, np.ndarray]:
        records = self.sorted_records(log=log)
        labels = np.array([r.label for r in records], np.int64)
        scores = (np.stack([r.scores for r in records]).astype(np.float64) if records
                  else np.zeros((0, self.num_classes)))
        return [r.image_id for r in records], labels, scores

    # -- distributed ---------------------------------------------------------------------------
    def state(self) -> dict:
        """Plain picklable state: the images in key order."""
        image_ids, labels, scores = self._arrays(log=False)
        return {"format": self.state_format, "version": self.state_version, "class_names": list(self.class_names),
                "image_ids": image_ids, "labels": labels, "scores": scores,
                "num_duplicates": self.num_duplicates}

    def merge(self, state: Mapping) -> None:
        """Add the images of another :class:`ClassificationEvaluator`'s :meth:`state`."""
        self.check_state(state)
        for image_id, label, scores in zip(state["image_ids"], state["labels"], state["scores"]):
            self._add(ScoreRecord(image_id, int(label), np.asarray(scores)))
        self.num_duplicates += int(state.get("num_duplicates", 0))

    # -- metrics -------------------------------------------------------------------------------
    def compute(self) -> dict:
        _, labels, scores = self._arrays(log=True)
        c, n = self.num_classes, len(labels)
        # Stable sort of the negated scores: equal scores rank the lower class index first.
        order = np.argsort(-scores, axis=1, kind="stable")
        metrics: dict = {}
        for k in self.topk:
            hits = (order[:, :min(k, c)] == labels[:, None]).any(axis=1)
            metrics[f"top{k}"] = float(hits.mean()) if n else float("nan")
        predicted = order[:, 0] if n else np.zeros(0, np.int64)
        confusion = np.bincount(labels * c + predicted, minlength=c * c).reshape(c, c)
        num_gt, num_pred, correct = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(num_gt > 0, correct / num_gt, np.nan)
            precision = np.where(num_pred > 0, correct / num_pred, np.nan)
        present = num_gt > 0
        metrics["mean_class_accuracy"] = float(recall[present].mean()) if present.any() else float("nan")
        metrics["per_class"] = {name: float(r) for name, r in zip(self.class_names, recall)}
        metrics["per_class_precision"] = {name: float(p) for name, p in zip(self.class_names, precision)}
        metrics["per_class_stats"] = {
            name: {"num_gt": int(g), "num_det": int(d), "recall": float(r)}
            for name, g, d, r in zip(self.class_names, num_gt, num_pred, recall)
        }
        metrics["confusion_matrix"] = confusion.tolist()
        metrics["num_images"] = n
        return metrics
