"""The evaluation figures and files ``detkit eval --plots`` and the end of training write.

:func:`write_evaluation_plots` takes an evaluator's records and writes into one folder:

    pr_curve.png                     per-class precision-recall curves (IoU > 0.5), AP50 in the legend
    f1_curve.png                     F1 vs score threshold per class, the mean over classes, its best threshold
    confusion_matrix.png             counts, with a background row (false detections) and column (missed)
    confusion_matrix_normalized.png  each row divided by its sum
    per_class.csv                    the per-class table (:func:`detkit.evaluation.analysis.per_class_rows`)
    report.txt                       worst classes, most confused pairs, best threshold
    val_mosaic.png                   the first validation images: ground truth | predictions
    val_mosaic_worst.png             the images with the most errors at the thresholds

The numbers come from :mod:`detkit.evaluation.analysis`; this module only draws them. Mosaics need a
data set with ``load_annotation`` / ``load_image`` (every :class:`~detkit.data.base.DetectionDataset`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from detkit.evaluation.analysis import PR_IOU, Analysis, analyse, format_report, write_per_class_csv
from detkit.plots.figure import new_figure, save_figure, write_png

__all__ = ["write_evaluation_plots", "write_evaluator_plots", "plot_pr_curves", "plot_f1_curves", "plot_confusion_matrix",
           "draw_mosaic", "CURVE_FIGSIZE", "confusion_figsize", "MOSAIC_CELL"]

logger = logging.getLogger(__name__)

CURVE_FIGSIZE = (9, 6)
MOSAIC_CELL = 256  # pixels: each image of a mosaic pair is fitted into a square of this side
_LEGEND_MAX = 20  # more classes than this: thin unlabelled curves, only the mean in the legend


def confusion_figsize(num_classes: int) -> tuple[float, float]:
    side = max(6.0, 0.42 * (num_classes + 1) + 3.0)
    return side, side * 0.85


def _curve_axes(title: str, xlabel: str, ylabel: str):
    fig = new_figure(CURVE_FIGSIZE)
    ax = fig.add_subplot()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _finish(fig, ax, path, many: bool) -> Path:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8 if many else 9, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pr_curves(analysis: Analysis, path: str | os.PathLike) -> Path:
    """Each class's PR curve (the devkit's arrays, drawn as steps) and the mean precision over classes
    on a recall grid, labelled with AP50 (VOC area) and the mean."""
    fig, ax = _curve_axes(f"precision-recall, IoU > {PR_IOU:g} (VOC)", "recall", "precision")
    many = len(analysis.curves) > _LEGEND_MAX
    grid = np.linspace(0, 1, 101)
    envelopes = []
    for c, curve in enumerate(analysis.curves):
        if not analysis.num_gt[c]:
            continue
        if curve.recall.size:
            rec = np.concatenate(([0.0], curve.recall))
            prec = np.concatenate(([curve.precision[0]], curve.precision))
            ax.step(rec, prec, where="post", linewidth=0.8 if many else 1.2, color=f"C{c % 10}",
                    alpha=0.5 if many else 0.9, label=None if many else f"{curve.name} {curve.ap:.3f}")
            # the precision envelope the AP integrates, for the mean curve
            env = np.maximum.accumulate(curve.precision[::-1])[::-1]
            at = np.searchsorted(curve.recall, grid, side="left")
            envelopes.append(np.where(at < len(env), env[np.minimum(at, len(env) - 1)], 0.0))
        elif not many:
            ax.plot([], [], color=f"C{c % 10}", label=f"{curve.name} 0.000 (no detections)")
    if envelopes:
        # the evaluator's mAP: the mean over every class (AP 0 for a class without ground truth)
        mean_ap = float(np.mean([curve.ap for curve in analysis.curves]))
        ax.plot(grid, np.sum(envelopes, axis=0) / len(analysis.curves), color="black", linewidth=2.5,
                label=f"all classes mAP50 {mean_ap:.3f}")
    return _finish(fig, ax, path, many)


def plot_f1_curves(analysis: Analysis, path: str | os.PathLike) -> Path:
    """F1 of the detections scoring >= t, per class and averaged, with the best mean marked."""
    fig, ax = _curve_axes(f"F1 vs score threshold (IoU > {PR_IOU:g})", "score threshold", "F1")
    ax.set_xlim(0, float(analysis.thresholds[-1]))
    many = len(analysis.curves) > _LEGEND_MAX
    for c, curve in enumerate(analysis.curves):
        if analysis.num_gt[c]:
            ax.plot(analysis.thresholds, analysis.f1_at[c], linewidth=0.8 if many else 1.2, color=f"C{c % 10}",
                    alpha=0.5 if many else 0.9, label=None if many else curve.name)
    thr, best = analysis.best_threshold
    ax.plot(analysis.thresholds, analysis.mean_f1, color="black", linewidth=2.5,
            label=f"all classes {best:.3f} at {thr:.2f}")
    ax.axvline(thr, color="black", linestyle="--", linewidth=1)
    ax.plot([thr], [best], "o", color="red", markersize=8, zorder=5)
    ax.annotate(f"best {best:.3f} @ {thr:.2f}", (thr, best), textcoords="offset points", xytext=(8, 8))
    return _finish(fig, ax, path, many)


def plot_confusion_matrix(analysis: Analysis, path: str | os.PathLike, normalize: bool = False) -> Path:
    """The confusion matrix (rows: true class, columns: predicted, last: background); ``normalize``
    divides each row by its sum (objects of a class: where they went; background row: which
    classes the false detections claim)."""
    cm = analysis.confusion.astype(np.float64)
    if normalize:
        sums = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)
    names = [*analysis.class_names, "background"]
    fig = new_figure(confusion_figsize(len(analysis.class_names)))
    ax = fig.add_subplot()
    shown = np.ma.masked_where(cm == 0, cm)  # empty cells stay white, small counts stay visible
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1.0, cm.max()))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row" if normalize else "count")
    ticks = np.arange(len(names))
    small = len(names) > 21
    ax.set_xticks(ticks, names, rotation=90, fontsize=6 if small else 9)
    ax.set_yticks(ticks, names, fontsize=6 if small else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    what = "normalised by row" if normalize else "counts"
    ax.set_title(f"confusion matrix ({what}), IoU > {analysis.iou_threshold:g}, score >= {analysis.score_threshold:g}")
    if len(names) <= 30:
        top = cm.max() if cm.size else 1.0
        for (i, j), value in np.ndenumerate(cm):
            if value:
                text = f"{value:.2f}" if normalize else str(int(value))
                ax.text(j, i, text, ha="center", va="center", fontsize=7 if len(names) > 12 else 9,
                        color="white" if value > 0.6 * top else "black")
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Mosaics
# ----------------------------------------------------------------------------------------------


def _fit(image: np.ndarray, side: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """``image`` scaled to fit a ``side`` x ``side`` square, centred on grey; returns the square, the
    scale and the offset (x, y) that map original pixels into it."""
    import cv2

    h, w = image.shape[:2]
    s = side / max(h, w)
    resized = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    canvas = np.full((side, side, 3), 114, np.uint8)
    y, x = (side - resized.shape[0]) // 2, (side - resized.shape[1]) // 2
    canvas[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    return canvas, s, (x, y)


def _caption(width: int, text: str, height: int = 18) -> np.ndarray:
    import cv2

    strip = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, height - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def draw_mosaic(samples: Sequence[tuple[np.ndarray, object, str]], class_names: Sequence[str],
                score_threshold: float, columns: int = 4, cell: int = MOSAIC_CELL) -> np.ndarray:
    """A grid of image pairs, ground truth left and predictions scoring >= ``score_threshold``
    right. ``samples``: ``(RGB image in original pixels, ImageRecord, caption)``."""
    from detkit.draw import draw_detections, draw_ground_truth

    pairs = []
    for image, record, caption in samples:
        # boxes are drawn on the fitted image, so labels have the same size on every cell
        fitted, scale, (x, y) = _fit(image, cell)
        shift = np.array([x, y, x, y], np.float64)
        gt = draw_ground_truth(fitted, record.gt_boxes * scale + shift, record.gt_labels, class_names,
                               record.difficult, record.iscrowd)
        keep = record.det_scores >= score_threshold
        pred = draw_detections(fitted, {"boxes": record.det_boxes[keep] * scale + shift,
                                        "scores": record.det_scores[keep], "labels": record.det_labels[keep]},
                               class_names)
        gap = np.full((cell, 4, 3), 255, np.uint8)
        pair = np.concatenate([gt, gap, pred], 1)
        pairs.append(np.concatenate([_caption(pair.shape[1], caption), pair], 0))
    columns = max(1, min(columns, len(pairs)))
    h, w = pairs[0].shape[:2]
    rows = -(-len(pairs) // columns)
    border = 6
    out = np.full((rows * (h + border) + border, columns * (w + border) + border, 3), 255, np.uint8)
    for k, pair in enumerate(pairs):
        r, c = divmod(k, columns)
        y, x = border + r * (h + border), border + c * (w + border)
        out[y:y + h, x:x + w] = pair
    return out


def _dataset_indices(dataset, image_ids: Sequence) -> dict:
    """image_id -> data set index of ``image_ids``. Most data sets use the index as the id (VOC,
    shapes): checked with one annotation each; otherwise every annotation is read once."""
    n = len(dataset)
    direct = {}
    for image_id in image_ids:
        if not (isinstance(image_id, (int, np.integer)) and 0 <= image_id < n
                and dataset.load_annotation(int(image_id)).image_id == image_id):
            break
        direct[image_id] = int(image_id)
    else:
        return direct
    return {dataset.load_annotation(i).image_id: i for i in range(n)}


def _write_mosaic(records, chosen: Sequence[int], dataset, class_names, score_threshold, path, what: str) -> Path:
    index = _dataset_indices(dataset, [records[k].image_id for k in chosen])
    samples = []
    for k in chosen:
        record = records[k]
        i = index.get(record.image_id)
        if i is None:
            continue
        name = Path(str(dataset.load_annotation(i).file_name)).name
        samples.append((dataset.load_image(i), record, f"{name}: truth | score >= {score_threshold:g}{what}"))
    if not samples:
        raise ValueError("none of the records' image ids is in the data set")
    return write_png(draw_mosaic(samples, class_names, score_threshold), path)


# ----------------------------------------------------------------------------------------------
# Everything at once
# ----------------------------------------------------------------------------------------------


def write_evaluation_plots(records: Sequence, class_names: Sequence[str], out_dir: str | os.PathLike, *,
                           dataset=None, metrics: Mapping | None = None, iou_threshold: float = 0.5,
                           score_threshold: float = 0.25, pixel_offset: float = 0.0, mosaic_images: int = 16,
                           extra_sections: Sequence[tuple[str, Sequence[str]]] = ()) -> dict[str, Path]:
    """Write the files of the module docstring into ``out_dir``; returns ``{name: path}`` and the
    report text under ``"report_text"``. ``records``: an evaluator's ``sorted_records()``;
    ``dataset``: the evaluated split, for the mosaics (skipped without it); ``metrics``: the
    evaluator's metrics (COCO per-class AP joins the table); ``extra_sections``: more report text."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    analysis = analyse(records, class_names, iou_threshold=iou_threshold, score_threshold=score_threshold,
                       pixel_offset=pixel_offset)
    written: dict = {
        "pr_curve": plot_pr_curves(analysis, out_dir / "pr_curve.png"),
        "f1_curve": plot_f1_curves(analysis, out_dir / "f1_curve.png"),
        "confusion_matrix": plot_confusion_matrix(analysis, out_dir / "confusion_matrix.png"),
        "confusion_matrix_normalized": plot_confusion_matrix(analysis, out_dir / "confusion_matrix_normalized.png",
                                                             normalize=True),
        "per_class": write_per_class_csv(out_dir / "per_class.csv", analysis, metrics),
    }
    report = format_report(analysis, metrics, extra_sections=extra_sections)
    (out_dir / "report.txt").write_text(report, encoding="utf-8")
    written["report"] = out_dir / "report.txt"
    written["report_text"] = report
    if mosaic_images > 0 and records:
        if dataset is None or not all(hasattr(dataset, a) for a in ("load_annotation", "load_image")):
            logger.info("no validation mosaics: the data set has no load_annotation / load_image")
        else:
            first = list(range(min(mosaic_images, len(records))))
            written["val_mosaic"] = _write_mosaic(records, first, dataset, class_names, score_threshold,
                                                  out_dir / "val_mosaic.png", "")
            order = np.argsort(-analysis.image_errors, kind="stable")
            worst = [int(k) for k in order[:mosaic_images] if analysis.image_errors[k] > 0]
            if worst:
                written["val_mosaic_worst"] = _write_mosaic(records, worst, dataset, class_names, score_threshold,
                                                            out_dir / "val_mosaic_worst.png", " (most errors)")
    return written


def write_evaluator_plots(evaluator, out_dir: str | os.PathLike, **kwargs) -> dict[str, Path]:
    """:func:`write_evaluation_plots` of the images an evaluator (or a group) collected, with its
    class names and the VOC evaluator's box convention."""
    members = getattr(evaluator, "evaluators", [evaluator])
    offset = next((ev.pixel_offset for ev in members if hasattr(ev, "pixel_offset")), 0.0)
    return write_evaluation_plots(evaluator.sorted_records(log=False), members[0].class_names, out_dir,
                                  pixel_offset=offset, **kwargs)
