#!/usr/bin/env python
"""Collect finished training runs into the README results table and docs/images/.

    python tools/collect_results.py                       # the recipes below, from work_dirs/
    python tools/collect_results.py --no-copy             # print the table only

For each run directory it reads what the run itself wrote - nothing is typed in by hand:
  * metrics: ``eval_metrics.json`` when present (written by ``detkit eval --metrics-out``, as
    ``make demo`` does for its best checkpoint), otherwise the last epoch record of ``metrics.jsonl``
    (the final model, not the best epoch);
  * training time: the ``training finished: N epoch(s) in HH:MM:SS`` line of ``train.log``;
  * img/s: the mean of the per-iteration-window ``img_per_s`` records of ``metrics.jsonl``;
and copies ``plots/map.png`` and ``plots/loss.png`` to ``docs/images/<name>_map.png`` / ``_loss.png``,
and the PR curves and confusion matrix to ``docs/images/<name>_pr_curve.png`` /
``_confusion_matrix.png``: those of ``eval_val/`` when present (written by ``detkit eval --plots``
for the evaluated checkpoint, as ``make demo`` does: the same model as ``eval_metrics.json``),
otherwise those the run drew for its final model in ``plots/``.
Runs that are missing are listed as such instead of failing, so a partial table can be refreshed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from detkit.evaluation.names import HEADLINE_KEYS

REPO = Path(__file__).resolve().parents[1]

# name, run directory, command, data description
RECIPES = [
    ("yolov1_shapes", "work_dirs/yolov1_shapes", "`make demo`",
     "synthetic shapes, 480 train / 120 val, 112 px, S=14"),
    ("yolov1_raccoon_lite0", "work_dirs/yolov1_raccoon_lite0",
     "`detkit train configs/yolov1_raccoon_lite0.py`", "raccoon, 160 train / 40 val, 320 px"),
    ("yolov1_raccoon_resnet18", "work_dirs/yolov1_raccoon_resnet18",
     "`detkit train configs/yolov1_raccoon_resnet18.py`", "same, from scratch"),
    ("rcnn_raccoon_lite0", "work_dirs/rcnn_raccoon_lite0",
     "`detkit train configs/rcnn_raccoon_lite0.py`", "same, selective search"),
]
METRICS = HEADLINE_KEYS  # the table's metric columns, in order
TRAINING_PLOTS = ("map", "loss")  # from plots/
EVAL_PLOTS = ("pr_curve", "confusion_matrix")  # from eval_val/ (the evaluated checkpoint) or plots/
FINISHED = re.compile(r"training finished: (\d+) epoch\(s\) in (\d+):(\d+):(\d+)")


def read_run(work_dir: Path) -> dict | None:
    log, records = work_dir / "train.log", work_dir / "metrics.jsonl"
    if not (log.is_file() and records.is_file()):
        return None
    lines = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    epochs = [r for r in lines if r.get("type") == "epoch"]
    speeds = [r["img_per_s"] for r in lines if r.get("type") == "train" and "img_per_s" in r]
    finished = FINISHED.findall(log.read_text())
    if not epochs or not finished:
        return None  # still running, or stopped before the end
    n, h, m, s = (int(v) for v in finished[-1])
    eval_file = work_dir / "eval_metrics.json"
    metrics = json.loads(eval_file.read_text()) if eval_file.is_file() else epochs[-1]
    return {
        "metrics": {k: metrics.get(k) for k in METRICS},
        "source": eval_file.name if eval_file.is_file() else f"epoch {epochs[-1]['epoch']}",
        "epochs": n,
        "time": f"{h * 60 + m} min {s} s" if h or m else f"{s} s",
        "img_per_s": sum(speeds) / len(speeds) if speeds else None,
    }


def copy_plots(work_dir: Path, name: str, images: Path) -> list[Path]:
    """Copy the run's README figures into ``images`` as ``<name>_<plot>.png``; returns the copies."""
    images.mkdir(parents=True, exist_ok=True)
    sources = [work_dir / "plots" / f"{plot}.png" for plot in TRAINING_PLOTS]
    for plot in EVAL_PLOTS:
        evaluated = work_dir / "eval_val" / f"{plot}.png"
        sources.append(evaluated if evaluated.is_file() else work_dir / "plots" / f"{plot}.png")
    copied = []
    for src in sources:
        if src.is_file():
            copied.append(Path(shutil.copyfile(src, images / f"{name}_{src.name}")))
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-copy", action="store_true", help="do not copy plots into docs/images")
    args = parser.parse_args(argv)

    print("| recipe | command | data | VOC07 AP50 (11-pt) | VOC AP50 (area) | COCO AP | COCO AP50 "
          "| COCO AP75 | training | train img/s | from |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    missing = []
    for name, run_dir, command, data in RECIPES:
        run = read_run(REPO / run_dir)
        if run is None:
            missing.append(run_dir)
            print(f"| `{name}` | {command} | {data} | not measured | | | | | | | |")
            continue
        cells = [f"{run['metrics'][k]:.3f}" if run["metrics"][k] is not None else "-" for k in METRICS]
        speed = f"{run['img_per_s']:.1f}" if run["img_per_s"] else "-"
        print(f"| `{name}` | {command} | {data} | {' | '.join(cells)} | {run['epochs']} epochs in "
              f"{run['time']} | {speed} | {run['source']} |")
        if not args.no_copy:
            copy_plots(REPO / run_dir, name, REPO / "docs" / "images")
    for run_dir in missing:
        print(f"(no finished run in {run_dir})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
