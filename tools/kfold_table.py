#!/usr/bin/env python
"""The README's k-fold ablation tables, rendered from committed ``detkit kfold`` summaries.

    python tools/kfold_table.py add NAME RUN_DIR --label "what changed" [--git COMMIT]   # RUN_DIR/summary.json -> docs/results/kfold/NAME.json
    python tools/kfold_table.py                                          # render the README sections
    python tools/kfold_table.py --check                                  # exit 1 if the README differs

``docs/results/kfold/<name>.json`` is the summary ``detkit kfold`` wrote (every fold's metrics, mean,
sample std, the command line, fold times and load averages) plus a ``label``; run directories are
not committed. Each table lists its rows in the order of :data:`TABLES` and goes between
``<!-- kfold-<table>:start -->`` and ``<!-- kfold-<table>:end -->`` in README.md
(``tests/test_kfold_table.py`` checks the README matches). A listed row without a record shows as
not measured; an experiment with fewer folds than planned says so in its ``folds`` cell, with the
folds it covers; ``Δ COCO AP`` compares each row with the table's first on the folds both have, or
with the row its record names as ``baseline`` (``add --vs``: a lever tried on top of an earlier one).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_sections import load_records, read_section, update_section, write_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "docs" / "results" / "kfold"

# table -> record names, in row order (the first row is the reference the others change one thing of)
TABLES = {
    "yolov1": ["yolov1_lite0", "yolov1_lite0_ema", "yolov1_lite0_nms06", "yolov1_lite0_nms07",
               "yolov1_lite0_score0001", "yolov1_lite0_s10_b8_ema", "yolov1_lite0_merge06",
               "yolov1_lite0_merge05", "yolov1_lite0_merge07", "yolov1_lite0_softnms",
               "yolov1_lite0_224", "yolov1_lite0_224_60ep", "yolov1_lite0_224_60ep_ema",
               "yolov1_lite0_224_60ep_crop", "yolov1_lite0_224_60ep_mosaic", "yolov1_lite0_224_60ep_scale05",
               "yolov1_lite0_224_60ep_b3", "yolov1_lite0_224_60ep_noobj025",
               "yolov1_lite0_224_60ep_ms", "yolov1_lite0_224_60ep_coord10"],
    "rcnn": ["rcnn_lite0", "rcnn_lite0_nms05", "rcnn_lite0_nms06", "rcnn_lite0_nms07", "rcnn_lite0_merge06",
             "rcnn_lite0_prop300", "rcnn_lite0_boxw20", "rcnn_lite0_fg50"],
    # the classic pipeline: its three variants are scored on the same folds and weights (add --variant)
    "rcnn_classic": ["rcnn_classic_shared", "rcnn_classic_shared_svm", "rcnn_classic_shared_softmax",
                     "rcnn_classic_shared_nms05", "rcnn_classic_shared_nms06"],
}
COLUMNS = (("voc07_ap50", "VOC07 AP50"), ("coco_ap", "COCO AP"), ("coco_ap50", "AP50"), ("coco_ap75", "AP75"),
           ("coco_ar100", "AR100"))
DIAGNOSTICS = (("iou_median", "median IoU"), ("width_ratio_median", "w pred/true"))
PAIRED_KEY = "coco_ap"  # the metric of the paired difference column


def _cell(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None or (isinstance(stat["mean"], float) and math.isnan(stat["mean"])):
        return "-"
    std = stat.get("std")
    spread = "" if std is None or (isinstance(std, float) and math.isnan(std)) else f" ± {std:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{spread}"


def _folds_cell(record: dict) -> str:
    """``5/5``, or for an unfinished experiment ``2/5 partial (folds 0, 1)``: the mean of some folds
    is not a K-fold mean (another pair of folds gives another number), so the row says which."""
    done, total = record["folds_done"], record["folds"]
    if len(done) == total:
        return f"{total}/{total}"
    return f"{len(done)}/{total} partial (fold{'s' if len(done) > 1 else ''} {', '.join(map(str, done))})"


def _paired_delta(record: dict, reference: dict | None, key: str = PAIRED_KEY,
                  records: dict[str, dict] | None = None) -> str:
    """Mean per-fold difference from the reference row on the folds both have (a paired comparison:
    the spread between folds, larger than most levers' effect, cancels). A record naming a
    ``baseline`` is compared with that row instead, and the cell says so."""
    prefix = ""
    baseline = record.get("baseline")
    if baseline is not None:
        if records is None or baseline not in records:
            return f"baseline `{baseline}` not recorded"
        reference, prefix = records[baseline], f"vs `{baseline}`: "
    if reference is None or record is reference:
        return ""
    mine = dict(zip(record["folds_done"], record["metrics"][key]["values"]))
    theirs = dict(zip(reference["folds_done"], reference["metrics"][key]["values"]))
    common = sorted(k for k in mine if k in theirs and mine[k] is not None and theirs[k] is not None)
    if not common:
        return "no common fold"
    delta = sum(mine[k] - theirs[k] for k in common) / len(common)
    return f"{prefix}{delta:+.3f} (fold{'s' if len(common) > 1 else ''} {', '.join(map(str, common))})"


def render_table(table: str, records: dict[str, dict]) -> str:
    """One table: a row per record of ``TABLES[table]``, mean ± sample std over its folds, and the
    paired COCO AP difference from the first row on the folds both have."""
    titles = [t for _, t in COLUMNS] + [t for _, t in DIAGNOSTICS]
    lines = ["| run | change | folds | " + " | ".join(titles) + " | Δ COCO AP (paired; vs first row unless named) | min / fold |",
             "|---|---|---|" + "---|" * len(titles) + "---|---|"]
    names = TABLES[table]
    reference = records.get(names[0]) if names else None
    for name in names:
        record = records.get(name)
        if record is None:
            lines.append(f"| `{name}` | not measured |" + " |" * (len(titles) + 3))
            continue
        cells = [_cell(record["metrics"].get(key)) for key, _ in COLUMNS]
        cells += [_cell(record["diagnostics"].get(key), 2) for key, _ in DIAGNOSTICS]
        minutes = record["train_minutes"]["mean"]
        lines.append(f"| `{name}` | {record['label']} | {_folds_cell(record)} | " + " | ".join(cells)
                     + f" | {_paired_delta(record, reference, records=records)} | {minutes:.0f} |")
    return "\n".join(lines)


def add(name: str, run_dir: Path, label: str, git: str | None = None, baseline: str | None = None,
        variant: str | None = None) -> Path:
    """Copy ``run_dir/summary.json`` into ``docs/results/kfold/<name>.json`` with its label. ``git``:
    the commit whose code trained the run, for a summary written outside a git checkout (its ``git``
    is null then); a summary that knows its commit keeps it. ``baseline``: the record this run
    changes one thing of, when that is not the table's first row. ``variant``: one of the summary's
    ``variants`` (the classic R-CNN's softmax / SVMs / SVMs + box regression, scored on the same
    folds) as the row's metrics; the box-fit diagnostics are the final model's only, so the row has none."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if variant is not None:
        variants = summary.get("variants") or {}
        if variant not in variants:
            raise SystemExit(f"{run_dir}/summary.json has no variant {variant!r} "
                             f"(it has: {', '.join(variants) or 'none'})")
        summary = {**summary, "metrics": variants[variant], "diagnostics": {}, "variant": variant}
    summary.pop("variants", None)  # a row shows one set of metrics
    if git is not None:
        if summary.get("git") not in (None, git):
            raise SystemExit(f"{run_dir}/summary.json says it was written by commit {summary['git']}, not {git}")
        summary["git"] = git
    path = RECORDS / f"{name}.json"
    extra = {} if baseline is None else {"baseline": baseline}
    write_record(path, {"label": label, **extra, **summary})
    return path


def render_all(check: bool = False) -> bool:
    records = load_records(RECORDS) if RECORDS.is_dir() else {}
    same = True
    for table in TABLES:
        same &= update_section(f"kfold-{table}", render_table(table, records), check=check)
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    adder = sub.add_parser("add", help="keep a finished kfold run's summary as a table record")
    adder.add_argument("name")
    adder.add_argument("run_dir", type=Path)
    adder.add_argument("--label", required=True, help="what this run changes (shown in the table)")
    adder.add_argument("--git", default=None, help="the commit that trained the run, when its summary was "
                       "written by a copy of the code outside a git checkout (summary 'git' is null)")
    adder.add_argument("--vs", default=None, metavar="NAME", help="the record this run changes one thing "
                       "of, for the paired difference (default: the table's first row)")
    adder.add_argument("--variant", default=None, help="take this variant's metrics from the summary's "
                       "'variants' (classic R-CNN: softmax, svm, svm_bbox_reg)")
    parser.add_argument("--check", action="store_true", help="only compare (exit 1 if the README differs)")
    args = parser.parse_args(argv)
    if args.cmd == "add":
        print(f"wrote {add(args.name, args.run_dir, args.label, args.git, args.vs, args.variant)}")
        return 0
    if args.check:
        same = render_all(check=True)
        print("README k-fold tables are up to date" if same else
              "README k-fold tables differ from docs/results/kfold/: run python tools/kfold_table.py")
        return 0 if same else 1
    render_all()
    records = load_records(RECORDS) if RECORDS.is_dir() else {}
    for table in TABLES:
        print(render_table(table, records), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
