"""Training curves drawn from ``metrics.jsonl`` (``loss.png``, ``map.png`` or, for a classifier,
``accuracy.png``, ``lr.png``) and a classifier's confusion matrix (``confusion.png``).

Uses matplotlib's object API with the Agg canvas directly (no ``pyplot``: no global figure state,
no GUI backend, safe in worker threads and on headless machines). Each PNG is written to a
temporary file and renamed, so an image viewer never sees half a file.

Usable on its own after (or during) a run::

    python -c "from detkit.engine.plots import plot_metrics; plot_metrics('work_dirs/x/metrics.jsonl', 'plots')"
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from detkit.evaluation.names import CLASSIFICATION_HEADLINE_KEYS, HEADLINE_KEYS
from detkit.fileio import temp_path

__all__ = ["read_metrics", "plot_metrics", "plot_confusion_matrix"]

# The validation-metric plots: file, title, y label, keys. A run draws those whose keys it logged.
_EVAL_PLOTS = (
    ("map.png", "validation mAP", "AP", HEADLINE_KEYS),
    ("accuracy.png", "validation accuracy", "accuracy", CLASSIFICATION_HEADLINE_KEYS),
)
# Above this many classes the confusion matrix cells are not annotated with their counts.
_ANNOTATE_MAX_CLASSES = 20


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (lines that do not parse, e.g. cut by a crash, are skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _iters_per_epoch(train_records: list[dict], epoch_records: list[dict]) -> float:
    for rec in epoch_records:
        if rec.get("epoch") and rec.get("iter"):
            return rec["iter"] / rec["epoch"]
    if train_records:
        last = train_records[-1]
        return max(1.0, last["iter"] / max(1, last.get("epoch", 1)))
    return 1.0


def _save_figure(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` through a temporary file (a viewer never sees half a PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, extension=".png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    return path


def plot_metrics(metrics_file: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Draw the plots into ``out_dir``; returns the files written (a plot without data is
    skipped, e.g. map.png before the first evaluation, or in a classifier's run)."""
    from matplotlib.figure import Figure

    records = read_metrics(metrics_file)
    train = [r for r in records if r.get("type") == "train" and _number(r.get("iter"))]
    epochs = [r for r in records if r.get("type") == "epoch" and _number(r.get("epoch"))]
    ipe = _iters_per_epoch(train, epochs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Figure, name: str) -> None:
        written.append(_save_figure(fig, out_dir / name))

    # Loss terms: per logging window (thin) and per-epoch means (markers), x in epochs.
    loss_keys = sorted({k for r in train + epochs for k in r if k.startswith("loss") and _number(r[k])},
                       key=lambda k: (k != "loss", k))
    if loss_keys:
        fig = Figure(figsize=(8, 5))
        ax = fig.add_subplot()
        for i, key in enumerate(loss_keys):
            colour = f"C{i % 10}"
            pts = [(r["iter"] / ipe, r[key]) for r in train if _number(r.get(key))]
            if pts:
                ax.plot(*zip(*pts), color=colour, alpha=0.35, linewidth=1)
            pts = [(r["epoch"], r[key]) for r in epochs if _number(r.get(key))]
            if pts:
                ax.plot(*zip(*pts), color=colour, marker="o", linewidth=2, label=key)
            elif train:
                ax.plot([], [], color=colour, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title("training loss (thin: logging windows, dots: epoch means)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        save(fig, "loss.png")

    for name, title, ylabel, keys in _EVAL_PLOTS:
        evaluated = [r for r in epochs if any(_number(r.get(k)) for k in keys)]
        if not evaluated:
            continue
        fig = Figure(figsize=(8, 5))
        ax = fig.add_subplot()
        for key in keys:
            pts = [(r["epoch"], r[key]) for r in evaluated if _number(r.get(key))]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
        save(fig, name)

    # A record's lr is the one used by its last iteration, index iter - 1.
    lr_pts = [((r["iter"] - 1) / ipe, r["lr"]) for r in train if _number(r.get("lr"))]
    if lr_pts:
        fig = Figure(figsize=(8, 4))
        ax = fig.add_subplot()
        ax.plot(*zip(*lr_pts), marker="." if len(lr_pts) < 50 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.set_title("learning rate (group 0)")
        ax.grid(True, alpha=0.3)
        save(fig, "lr.png")
    return written


def plot_confusion_matrix(matrix, class_names, path: str | os.PathLike, *, title: str = "confusion matrix"
                          ) -> Path:
    """Draw a confusion matrix (``[C][C]`` counts, rows the true class, columns the predicted one, as
    :class:`~detkit.evaluation.classification.ClassificationEvaluator` computes it) to ``path``.

    Cells are coloured by the row-normalised rate (the share of a class's images predicted as each
    class, so classes of different sizes compare) and, up to 20 classes, labelled with their counts.
    """
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64)
    c = counts.shape[0]
    names = [str(n) for n in class_names] if class_names else [str(i) for i in range(c)]
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = min(4 + 0.45 * c, 24)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(c)
    labelled = c <= 60  # beyond that the names overlap whatever the font size
    ax.set_xticks(ticks, names if labelled else [""] * c, rotation=45 if labelled else 0, ha="right")
    ax.set_yticks(ticks, names if labelled else [""] * c)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(counts.sum())
    accuracy = np.trace(counts) / total if total else float("nan")
    ax.set_title(f"{title}\n{total} images, accuracy {accuracy:.4f}")
    if c <= _ANNOTATE_MAX_CLASSES:
        for i in range(c):
            for j in range(c):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _save_figure(fig, Path(path))
