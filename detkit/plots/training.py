"""Training curves drawn from ``metrics.jsonl``: ``loss.png``, ``map.png``, ``lr.png``.

The loss axis is logarithmic when every loss is positive: the first epochs' losses are often ten
times the later ones and would flatten them on a linear axis.

Usable on its own after (or during) a run::

    python -c "from detkit.plots.training import plot_metrics; plot_metrics('work_dirs/x/metrics.jsonl', 'plots')"
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from detkit.evaluation.names import HEADLINE_KEYS
from detkit.plots.figure import new_figure, save_figure

__all__ = ["read_metrics", "plot_metrics"]


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


def plot_metrics(metrics_file: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Draw the three plots into ``out_dir``; returns the files written (a plot without data is
    skipped, e.g. map.png before the first evaluation)."""
    records = read_metrics(metrics_file)
    train = [r for r in records if r.get("type") == "train" and _number(r.get("iter"))]
    epochs = [r for r in records if r.get("type") == "epoch" and _number(r.get("epoch"))]
    ipe = _iters_per_epoch(train, epochs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        written.append(save_figure(fig, out_dir / name))

    # Loss terms: per logging window (thin) and per-epoch means (markers), x in epochs.
    loss_keys = sorted({k for r in train + epochs for k in r if k.startswith("loss") and _number(r[k])},
                       key=lambda k: (k != "loss", k))
    if loss_keys:
        fig = new_figure((8, 5))
        ax = fig.add_subplot()
        values = [r[k] for r in train + epochs for k in loss_keys if _number(r.get(k))]
        log_scale = bool(values) and min(values) > 0
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
        if log_scale:
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.6, not 6 x 10^-1
            ax.yaxis.set_major_formatter(plain)
            if max(values) < 10 * min(values):  # within a decade the minor ticks need labels too
                ax.yaxis.set_minor_formatter(plain)
        ax.set_ylabel("loss (log scale)" if log_scale else "loss")
        ax.set_title("training loss (thin: logging windows, dots: epoch means)")
        ax.grid(True, which="both" if log_scale else "major", alpha=0.3)
        ax.legend()
        save(fig, "loss.png")

    evaluated = [r for r in epochs if any(_number(r.get(k)) for k in HEADLINE_KEYS)]
    if evaluated:
        fig = new_figure((8, 5))
        ax = fig.add_subplot()
        for key in HEADLINE_KEYS:
            pts = [(r["epoch"], r[key]) for r in evaluated if _number(r.get(key))]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("AP")
        ax.set_title("validation mAP")
        ax.grid(True, alpha=0.3)
        ax.legend()
        save(fig, "map.png")

    # A record's lr is the one used by its last iteration, index iter - 1.
    lr_pts = [((r["iter"] - 1) / ipe, r["lr"]) for r in train if _number(r.get("lr"))]
    if lr_pts:
        fig = new_figure((8, 4))
        ax = fig.add_subplot()
        ax.plot(*zip(*lr_pts), marker="." if len(lr_pts) < 50 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.set_title("learning rate (group 0)")
        ax.grid(True, alpha=0.3)
        save(fig, "lr.png")
    return written
