"""The box statistics of a data split as one figure (ultralytics' ``labels.jpg``, mmdetection's
``browse_dataset`` statistics): instances per class, box width / height and aspect-ratio
histograms, box-centre heat map, box size scatter.

Drawn as ``data_<split>.png`` by ``detkit check-data --plots`` (:func:`plot_split_statistics`), by
training before its first epoch (the training split) and by ``detkit eval --plots`` (the evaluated
split and the training split: :func:`plot_dataset_statistics`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from detkit.data.stats import BoxStatistics
from detkit.plots.figure import new_figure, save_figure

__all__ = ["plot_box_statistics", "plot_dataset_statistics", "plot_split_statistics", "FIGSIZE"]

FIGSIZE = (15, 9)


def plot_box_statistics(stats: BoxStatistics, path: str | os.PathLike, title: str = "") -> Path:
    """Draw ``stats`` into the PNG ``path`` (six panels)."""
    fig = new_figure(FIGSIZE)
    axes = fig.subplots(2, 3)
    n = len(stats.labels)
    fig.suptitle(f"{title + ': ' if title else ''}{n} boxes in {stats.num_images} images "
                 f"({stats.empty_images} without boxes)")

    ax = axes[0, 0]
    counts = stats.instances
    positions = np.arange(len(stats.class_names))
    ax.bar(positions, counts, color=[f"C{i % 10}" for i in positions])
    ax.set_xticks(positions, stats.class_names, rotation=90 if len(positions) > 8 else 0,
                  fontsize=8 if len(positions) > 20 else 10)
    ax.set_ylabel("instances")
    ax.set_title("instances per class")

    for ax, values, name in ((axes[0, 1], stats.widths, "width"), (axes[0, 2], stats.heights, "height")):
        if n:
            ax.hist(values, bins=min(50, max(5, n // 5)), color="C0")
        ax.set_xlabel(f"box {name} (pixels)")
        ax.set_ylabel("boxes")
        ax.set_title(f"box {name}")

    ax = axes[1, 0]
    if n:
        ratios = stats.aspect_ratios
        ratios = ratios[ratios > 0]
        # log-spaced bins: 1:4 and 4:1 are equally far from square
        lo, hi = (ratios.min(), ratios.max()) if len(ratios) else (0.5, 2.0)
        bins = np.geomspace(min(lo, 0.5), max(hi, 2.0), 40)
        ax.hist(ratios, bins=bins, color="C1")
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter

        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, not 5 x 10^-1
        ax.xaxis.set_major_formatter(plain)
        if bins[-1] < 10 * bins[0]:  # within a decade the minor ticks need labels too
            ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("aspect ratio width / height (log scale)")
    ax.set_ylabel("boxes")
    ax.set_title("aspect ratio")

    ax = axes[1, 1]
    heat, _, _ = np.histogram2d(stats.centres[:, 1], stats.centres[:, 0], bins=32, range=[[0, 1], [0, 1]])
    image = ax.imshow(heat, extent=(0, 1, 1, 0), cmap="viridis", aspect="equal")
    fig.colorbar(image, ax=ax, label="boxes")
    ax.set_xlabel("centre x / image width")
    ax.set_ylabel("centre y / image height")
    ax.set_title("box centres")

    ax = axes[1, 2]
    if n:
        ax.scatter(stats.widths, stats.heights, s=4, alpha=min(1.0, max(0.05, 200 / n)),
                   c=[f"C{int(label) % 10}" for label in stats.labels])
    ax.set_xlabel("width (pixels)")
    ax.set_ylabel("height (pixels)")
    ax.set_title("box sizes")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_dataset_statistics(dataset, out_dir: str | os.PathLike, split: str) -> Path | None:
    """``out_dir/data_<split>.png`` of ``dataset``; ``None`` (and nothing drawn) for a data set
    without ``load_annotation`` (the statistics are read from annotations, not from batches)."""
    from detkit.data.stats import box_statistics

    if not hasattr(dataset, "load_annotation"):
        return None
    return plot_box_statistics(box_statistics(dataset), Path(out_dir) / f"data_{split}.png", f"data.{split}")


def plot_split_statistics(cfg: dict, split: str, out_dir: str | os.PathLike) -> list[Path]:
    """``out_dir/data_<split>.png`` for ``split`` of the config's data (``"all"``: every split)."""
    from detkit.data.builder import build_dataset
    from detkit.data.check import data_splits

    splits = data_splits(cfg) if split == "all" else [split]
    # verify=False: check-data has just run the verification pass (and draws only when it excluded nothing)
    paths = (plot_dataset_statistics(build_dataset(cfg, name, verify=False), out_dir, name) for name in splits)
    return [path for path in paths if path is not None]
