#!/usr/bin/env python
"""The classic R-CNN results table of the README, from committed result files.

    python tools/rcnn_classic_results.py collect work_dirs/rcnn_classic_raccoon_shared \\
        --command "detkit train configs/rcnn_classic_raccoon_shared.py" --data "raccoon, 160 train / 40 val" \\
        --note "2 cores shared with ~7 other jobs"        # -> docs/results/rcnn_classic/<run>.json
    python tools/rcnn_classic_results.py table            # print the table
    python tools/rcnn_classic_results.py table --readme   # write it into README.md between the markers

``collect`` copies what a finished ``detkit train`` of an ``rcnn_classic`` config wrote into its run
directory: every variant's metrics (``classic_metrics.json``: softmax head, SVMs, SVMs + box
regression, scored on the validation split after the stages) and each stage's time
(``stages.json``; fine-tuning from the training loop), wall clock and CPU seconds of the training
process (on a shared machine the wall clock mostly measures the other jobs). Nothing is typed in by
hand; the test suite
checks that the README's table is what ``table`` renders from the committed files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "rcnn_classic"
START, END = "<!-- rcnn-classic-results:start -->", "<!-- rcnn-classic-results:end -->"

# Variant -> (row label, the stages its training needs).
VARIANT_ROWS = {
    "softmax_head_boxes": ("softmax + the head's box deltas (rcnn)", ("finetune",)),
    "softmax": ("softmax (fine-tuned head)", ("finetune",)),
    "svm": ("SVMs", ("finetune", "features", "svm")),
    "svm_bbox_reg": ("SVMs + box regression", ("finetune", "features", "svm", "bbox_reg")),
}
METRICS = (("voc07_ap50", "VOC07 AP50 (11-pt)"), ("voc_ap50", "VOC AP50 (area)"), ("coco_ap", "COCO AP"),
           ("coco_ap50", "COCO AP50"))
STAGES = (("finetune", "fine-tune"), ("features", "features"), ("svm", "SVMs"), ("bbox_reg", "box reg."))


def collect(work_dir: Path, *, command: str, data: str, note: str = "", name: str | None = None,
            out_dir: Path = RESULTS) -> Path:
    """Write ``<out_dir>/<name>.json`` from a finished run directory."""
    report = json.loads((work_dir / "classic_metrics.json").read_text())
    stages = json.loads((work_dir / "stages.json").read_text())
    seconds = {"finetune": stages.get("finetune_seconds")}
    seconds.update({k: v["seconds"] for k, v in stages["stages"].items() if k != "evaluate"})
    cpu = {"finetune": stages.get("finetune_cpu_seconds")}
    cpu.update({k: v.get("cpu_seconds") for k, v in stages["stages"].items() if k != "evaluate"})
    keys = [k for k, _ in METRICS]
    result = {
        "run": name or work_dir.name,
        "command": command,
        "data": data,
        "note": note,
        "stage_seconds": seconds,
        "stage_cpu_seconds": cpu,
        "variants": {v: {k: entry["metrics"].get(k) for k in keys} for v, entry in report["variants"].items()},
        "svm_rounds": len(stages["stages"].get("svm", {}).get("summary", {}).get("rounds", [])),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['run']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _minutes(seconds) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 60:.1f} min"


def render(results_dir: Path = RESULTS) -> str:
    """The markdown table of every result file, one row per variant."""
    head = ["run", "scoring"] + [t for _, t in METRICS] + [t for _, t in STAGES] + ["total", "CPU (main process)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        seconds = result["stage_seconds"]
        for variant, (label, needs) in VARIANT_ROWS.items():
            metrics = result["variants"].get(variant)
            if metrics is None:
                continue
            cells = [f"`{result['run']}`", label]
            cells += [("?" if metrics.get(k) is None else f"{metrics[k]:.3f}") for k, _ in METRICS]
            cells += [(_minutes(seconds.get(s)) if s in needs else "") for s, _ in STAGES]
            total = sum(seconds.get(s) or 0.0 for s in needs)
            cells.append(_minutes(total))
            cpu = [result.get("stage_cpu_seconds", {}).get(s) for s in needs]
            cells.append("?" if None in cpu else _minutes(sum(cpu)))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    readme.write_text(text[:start] + "\n" + table + text[end:])


def readme_table(readme: Path) -> str:
    text = readme.read_text()
    return text[text.index(START) + len(START): text.index(END)].lstrip("\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command_name", required=True)
    c = sub.add_parser("collect", help="copy a finished run's results into docs/results/rcnn_classic/")
    c.add_argument("work_dir", type=Path)
    c.add_argument("--command", required=True, help="the command that produced the run")
    c.add_argument("--data", required=True, help="what it was trained and evaluated on")
    c.add_argument("--note", default="", help="conditions (machine load, subsets)")
    c.add_argument("--name", default=None, help="result name (default: the run directory's name)")
    t = sub.add_parser("table", help="print the table (or write it into README.md)")
    t.add_argument("--readme", action="store_true", help="write the table between the README markers")
    args = parser.parse_args(argv)
    if args.command_name == "collect":
        print(collect(args.work_dir, command=args.command, data=args.data, note=args.note, name=args.name))
        return 0
    table = render()
    if args.readme:
        write_readme(REPO / "README.md", table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
