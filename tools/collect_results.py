#!/usr/bin/env python
"""Collect finished training runs into docs/results/, and the README results tables from there.

    python tools/collect_results.py             # runs in work_dirs/ -> docs/results/*.json -> README tables
    python tools/collect_results.py --no-copy   # the same, without copying plots to docs/images/
    python tools/collect_results.py --check     # exit 1 if a README table differs from docs/results/

``docs/results/<recipe>.json`` (committed) is the source of truth of the README tables: run
directories (``work_dirs/``) are not committed, so the summary of each finished run is kept there, and
the tables between ``<!-- results:start -->`` / ``<!-- results:end -->`` (detectors, :data:`RECIPES`)
and ``<!-- classification:start -->`` / ``<!-- classification:end -->`` (``detkit classify`` runs,
:data:`CLASSIFY_RECIPES`) in README.md are rendered from those files (``tests/test_readme_tables.py``
checks they are). A recipe whose run directory is absent keeps its committed summary.

For each run directory it reads what the run itself wrote - nothing is typed in by hand:
  * metrics: ``eval_metrics.json`` when present (written by ``detkit eval --metrics-out``, as
    ``make demo`` does for its best checkpoint), otherwise the last epoch record of ``metrics.jsonl``
    (the final model, not the best epoch);
  * training time: the ``training finished: N epoch(s) in HH:MM:SS`` line of ``train.log``;
  * img/s: the mean of the per-iteration-window ``img_per_s`` records of ``metrics.jsonl``;
and copies ``plots/map.png`` (and ``plots/loss.png``) to ``docs/images/<name>_map.png``, and the PR
curves and confusion matrix to ``docs/images/<name>_pr_curve.png`` / ``_confusion_matrix.png``:
those of ``eval_val/`` when present (written by ``detkit eval --plots`` for the evaluated checkpoint,
as ``make demo`` does: the same model as ``eval_metrics.json``), otherwise those the run drew for its
final model in ``plots/``; for a classifier ``plots/accuracy.png`` and the confusion matrix (``eval_confusion.png``, written by
``detkit classify eval --confusion-out``, else the run's last ``plots/confusion.png``); the summary
records each copy's source and SHA-256 (``images``), which ``tests/test_readme_tables.py`` checks
against the committed image.
Recipes with neither a finished run nor a summary are listed as not measured.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

from detkit.evaluation.names import CLASSIFICATION_HEADLINE_KEYS, HEADLINE_KEYS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_sections import load_records, update_section, write_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"

# name, run directory, command, data description
RECIPES = [
    ("yolov1_shapes", "work_dirs/yolov1_shapes", "`make demo`",
     "synthetic shapes, 480 train / 120 val, 112 px, S=14"),
    ("yolov1_raccoon_lite0", "work_dirs/yolov1_raccoon_lite0",
     "`detkit train configs/yolov1_raccoon_lite0.py`", "raccoon, 160 train / 40 val, 224 px"),
    ("yolov1_raccoon_resnet18", "work_dirs/yolov1_raccoon_resnet18",
     "`detkit train configs/yolov1_raccoon_resnet18.py`",
     "same, from scratch (run with the earlier config: 320 px, 30 epochs)"),
    ("rcnn_raccoon_lite0", "work_dirs/rcnn_raccoon_lite0",
     "`detkit train configs/rcnn_raccoon_lite0.py`", "same, 320 px, selective search"),
    # the pre-training comparison (`make pretrain-demo`): the same recipe, two initial backbones
    ("yolov1_shapes_resnet18_scratch", "work_dirs/yolov1_shapes_resnet18_scratch",
     "`detkit train configs/yolov1_shapes_resnet18.py`", "synthetic shapes as `yolov1_shapes`; ResNet-18 "
     "to layer2 from scratch"),
    ("yolov1_shapes_resnet18_pretrained", "work_dirs/yolov1_shapes_resnet18_pretrained",
     "same, `--set model.backbone.pretrained=work_dirs/classify_shapes_resnet18/best_top1.pth`",
     "same, backbone pre-trained by `classify_shapes_resnet18`"),
]
METRICS = HEADLINE_KEYS  # the detection table's metric columns, in order
# `detkit classify` runs: name, run directory, command, data description
CLASSIFY_RECIPES = [
    ("classify_shapes_resnet18", "work_dirs/classify_shapes_resnet18",
     "`detkit classify train configs/classify_shapes_resnet18.py`",
     "shapes crops (ImageFolder), 4800 train / 1200 val, 48 px"),
]
CLASSIFY_METRICS = (*CLASSIFICATION_HEADLINE_KEYS, "mean_class_accuracy")
FINISHED = re.compile(r"training finished: (\d+) epoch\(s\) in (\d+):(\d+):(\d+)")


def read_run(work_dir: Path, metrics_keys=METRICS) -> dict | None:
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
        "metrics": {k: metrics.get(k) for k in metrics_keys},
        "source": eval_file.name if eval_file.is_file() else f"epoch {epochs[-1]['epoch']}",
        "epochs": n,
        "time": f"{h * 60 + m} min {s} s" if h or m else f"{s} s",
        "img_per_s": sum(speeds) / len(speeds) if speeds else None,
    }


HEADER = ("| recipe | command | data | VOC07 AP50 (11-pt) | VOC AP50 (area) | COCO AP | COCO AP50 | COCO AP75 "
          "| training | train img/s | from |\n|---|---|---|---|---|---|---|---|---|---|---|")
CLASSIFY_HEADER = ("| recipe | command | data | top-1 | top-5 | mean class accuracy | training | train img/s | from |"
                   "\n|---|---|---|---|---|---|---|---|---|")


def render_table(summaries: dict[str, dict], recipes=None, metrics=METRICS, header=HEADER) -> str:
    """A README results table (default: the detectors', :data:`RECIPES`): one row per recipe, from its
    summary (``read_run`` output)."""
    lines = [header]
    for name, _, command, data in RECIPES if recipes is None else recipes:
        run = summaries.get(name)
        if run is None:
            lines.append(f"| `{name}` | {command} | {data} | not measured |" + " |" * (len(metrics) + 2))
            continue
        cells = [f"{run['metrics'][k]:.3f}" if run["metrics"].get(k) is not None else "-" for k in metrics]
        speed = f"{run['img_per_s']:.1f}" if run["img_per_s"] else "-"
        lines.append(f"| `{name}` | {command} | {data} | {' | '.join(cells)} | {run['epochs']} epochs in "
                     f"{run['time']} | {speed} | {run['source']} |")
    return "\n".join(lines)


def render_classify_table(summaries: dict[str, dict]) -> str:
    """The README table of ``detkit classify`` runs."""
    return render_table(summaries, recipes=CLASSIFY_RECIPES, metrics=CLASSIFY_METRICS, header=CLASSIFY_HEADER)


# README section -> its renderer
SECTIONS = {"results": render_table, "classification": render_classify_table}
# plots copied to docs/images/<name>_<plot>.png: (plot name, candidate files in the run directory)
DETECTION_PLOTS = (("map", ("plots/map.png",)), ("loss", ("plots/loss.png",)),
                   ("pr_curve", ("eval_val/pr_curve.png", "plots/pr_curve.png")),
                   ("confusion_matrix", ("eval_val/confusion_matrix.png", "plots/confusion_matrix.png")))
CLASSIFY_PLOTS = (("accuracy", ("plots/accuracy.png",)), ("loss", ("plots/loss.png",)),
                  ("confusion", ("eval_confusion.png", "plots/confusion.png")))


def copy_run_plots(work_dir: Path, name: str, plots, images: Path) -> dict[str, tuple[Path, Path]]:
    """Copy the first existing candidate of each of ``plots`` (see ``DETECTION_PLOTS``) into
    ``images`` as ``<name>_<plot>.png``; returns ``{plot: (source, copy)}``."""
    images.mkdir(parents=True, exist_ok=True)
    copied = {}
    for plot, candidates in plots:
        src = next((work_dir / c for c in candidates if (work_dir / c).is_file()), None)
        if src is not None:
            copied[plot] = (src, Path(shutil.copyfile(src, images / f"{name}_{plot}.png")))
    return copied


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_records(copied: dict[str, tuple[Path, Path]], work_dir: Path) -> dict[str, dict]:
    """What a summary records of its copied plots: the committed file, the run file it came from and
    its SHA-256, so a test can tell that the README's figures are this run's."""
    return {plot: {"file": dst.relative_to(REPO).as_posix(), "from": src.relative_to(work_dir).as_posix(),
                   "sha256": sha256(dst)} for plot, (src, dst) in copied.items()}


def collect(copy_plots: bool) -> list[str]:
    """Write ``docs/results/<recipe>.json`` for every finished run; returns the run directories
    that had none."""
    missing = []
    for recipes, keys, plots in ((RECIPES, METRICS, DETECTION_PLOTS),
                                 (CLASSIFY_RECIPES, CLASSIFY_METRICS, CLASSIFY_PLOTS)):
        for name, run_dir, _, _ in recipes:
            run = read_run(REPO / run_dir, keys)
            if run is None:
                missing.append(run_dir)
                continue
            run["collected"] = f"{datetime.date.today().isoformat()} from {run_dir} by tools/collect_results.py"
            if copy_plots:
                copied = copy_run_plots(REPO / run_dir, name, plots, REPO / "docs" / "images")
                run["images"] = image_records(copied, REPO / run_dir)
            write_record(RESULTS / f"{name}.json", run)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-copy", action="store_true", help="do not copy plots into docs/images")
    parser.add_argument("--check", action="store_true",
                        help="only compare the README table with docs/results/ (exit 1 if it differs)")
    args = parser.parse_args(argv)

    if args.check:
        records = load_records(RESULTS)
        same = all([update_section(section, render(records), check=True) for section, render in SECTIONS.items()])
        print("README results tables are up to date" if same else
              "README results tables differ from docs/results/: run python tools/collect_results.py")
        return 0 if same else 1
    for run_dir in collect(copy_plots=not args.no_copy):
        print(f"(no finished run in {run_dir}; its committed summary, if any, is kept)", file=sys.stderr)
    records = load_records(RESULTS)
    for section, render in SECTIONS.items():
        table = render(records)
        print(table)
        update_section(section, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
