#!/usr/bin/env python
"""detkit benchmarks. Each suite measures detkit against a reference *in the same run* and prints ratios.

    python tools/bench.py nms        # batched NMS vs torchvision
    python tools/bench.py backbones  # params, GFLOPs at 448, images/s
    python tools/bench.py data       # training pipeline images/s per worker (raccoon)
    python tools/bench.py data-scale # COCO-sized annotation file + 20k VOC XML: build time, peak RSS
    python tools/bench.py train      # detkit train vs a hand-written loop
    python tools/bench.py eval       # VOC evaluator vs slow reference; COCO with/without faster-coco-eval
    python tools/bench.py infer      # end-to-end infer vs model forward alone
    python tools/bench.py all
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SUITES = ("nms", "backbones", "data", "data-scale", "train", "eval", "infer", "rcnn")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    suite, rest = argv[0], argv[1:]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    names = SUITES if suite == "all" else (suite,)
    for name in names:
        if name not in SUITES:
            print(f"unknown suite '{name}'; choose from: {', '.join(SUITES)}, all", file=sys.stderr)
            return 2
        try:
            module = importlib.import_module(f"benchmarks.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name == f"benchmarks.{name.replace('-', '_')}":
                print(f"[{name}] no benchmark yet")
                continue
            raise
        print(f"==== {name} ====", flush=True)
        module.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
