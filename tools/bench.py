#!/usr/bin/env python
"""detkit benchmarks. Each suite measures detkit against a reference *in the same run* and prints ratios.

    python tools/bench.py nms        # batched NMS vs torchvision
    python tools/bench.py backbones  # params, GFLOPs at 448, images/s
    python tools/bench.py data       # training pipeline images/s per worker (raccoon)
    python tools/bench.py data-scale # COCO-sized annotation file + 20k VOC XML: build time, peak RSS
    python tools/bench.py train      # detkit train vs a hand-written loop
    python tools/bench.py eval       # VOC evaluator vs slow reference; COCO with/without faster-coco-eval
    python tools/bench.py infer      # end-to-end infer vs model forward alone
    python tools/bench.py rcnn       # R-CNN roi vs warp mode, proposal generators
    python tools/bench.py export     # eager PyTorch vs TorchScript vs ONNX Runtime (+ bf16, int8), file sizes
    python tools/bench.py all

    python tools/bench.py SUITE --record [options]   # also keep the headline figures in docs/benchmarks/SUITE.json
    python tools/bench.py SUITE --record=NAME ...    # ... in docs/benchmarks/NAME.json (another variant)
    python tools/bench.py readme [--check]           # README benchmark table from docs/benchmarks/*.json

The README's benchmark table is rendered from the committed records only (``tests/test_readme_tables.py``
checks it), so every figure in it names the command that measured it. A suite may also return a
detailed table for a README section of its own (``section`` and ``table`` in its record: the
``export-bench`` table of the README's "Deploy" section).
"""

from __future__ import annotations

import datetime
import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_sections import REPO, load_records, update_section, write_record  # noqa: E402

SUITES = ("nms", "backbones", "data", "data-scale", "train", "eval", "infer", "rcnn", "export")
RECORDS = REPO / "docs" / "benchmarks"


def render_table(records: dict[str, dict]) -> str:
    """The README benchmark table: the rows of every record, suites in :data:`SUITES` order."""
    def order(item):
        name, record = item
        suite = record["suite"]
        return (SUITES.index(suite) if suite in SUITES else len(SUITES), name)

    lines = ["| suite | what | measured | recorded with |", "|---|---|---|---|"]
    for _, record in sorted(records.items(), key=order):
        source = f"`{record['command']}`, {record['date']}"
        if record.get("load_average") is not None:
            source += f", load average {record['load_average']:.1f} on {record['cpus']} CPUs"
        if record.get("note"):
            source += f" ({record['note']})"
        for what, measured in record["rows"]:
            lines.append(f"| {record['suite']} | {what} | {measured} | {source} |")
    return "\n".join(lines)


def render_sections(records: dict[str, dict]) -> dict[str, str]:
    """The README sections that records bring their own table for (``section``, ``table``), each
    followed by the command and date that measured it."""
    sections = {}
    for record in records.values():
        if record.get("section"):
            source = f"`{record['command']}`, {record['date']}"
            if record.get("load_average") is not None:
                source += f", load average {record['load_average']:.1f} on {record['cpus']} CPUs"
            sections[record["section"]] = f"{record['table']}\n\nMeasured by {source}."
    return sections


def _environment() -> dict:
    """What the figures depend on besides the code: versions, threads, and how busy the machine was."""
    import torch
    import torchvision

    return {"environment": f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                           f"{torch.get_num_threads()} torch threads",
            "cpus": os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None}


def _pop_record(args: list[str]) -> tuple[str | None, list[str]]:
    """``--record`` / ``--record=NAME`` out of the suite's arguments."""
    name, rest = None, []
    for arg in args:
        if arg == "--record" or arg.startswith("--record="):
            name = arg.partition("=")[2] or ""
        else:
            rest.append(arg)
    return name, rest


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    suite, rest = argv[0], argv[1:]
    if suite == "readme":
        check = rest == ["--check"]
        records = load_records(RECORDS)
        same = update_section("benchmarks", render_table(records), check=check)
        for section, body in render_sections(records).items():
            same = update_section(section, body, check=check) and same
        if check and not same:
            print("README benchmark table differs from docs/benchmarks/: run python tools/bench.py readme")
            return 1
        print("README benchmark table " + ("is up to date" if same else "written from docs/benchmarks/"))
        return 0
    record_as, rest = _pop_record(rest)
    names = SUITES if suite == "all" else (suite,)
    for name in names:
        if name not in SUITES:
            print(f"unknown suite '{name}'; choose from: {', '.join(SUITES)}, all, readme", file=sys.stderr)
            return 2
        try:
            module = importlib.import_module(f"benchmarks.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name == f"benchmarks.{name.replace('-', '_')}":
                print(f"[{name}] no benchmark yet")
                continue
            raise
        print(f"==== {name} ====", flush=True)
        rows = module.main(rest)
        environment = _environment() if record_as is not None else {}  # after main: its --threads apply
        extra = {}
        if isinstance(rows, dict):  # rows plus a README section of the suite's own
            extra = {"section": rows["section"], "table": rows["table"]}
            rows = rows["rows"]
        if record_as is not None and rows:
            path = RECORDS / f"{record_as or name}.json"
            command = " ".join(["python tools/bench.py", name, *argv[1:]])
            write_record(path, {"suite": name, "command": command, "date": datetime.date.today().isoformat(),
                                **environment, "rows": [list(r) for r in rows], **extra})
            print(f"recorded {len(rows)} figure(s) in {path.relative_to(REPO)}; "
                  f"`python tools/bench.py readme` puts them in the README")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
