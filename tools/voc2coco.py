#!/usr/bin/env python
"""Convert a Pascal VOC split to a COCO annotation JSON (same as `detkit data voc2coco`).

    python tools/voc2coco.py ROOT OUT [--split train] [--classes cat,dog]

See detkit.data.convert for what is written (ids, difficult boxes, image sizes).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder with Annotations/, JPEGImages/, ImageSets/Main/")
    parser.add_argument("out", help="the COCO JSON file to write")
    parser.add_argument("--split", default="train", help="ImageSets/Main/<split>.txt (default: train)")
    parser.add_argument("--classes", default=None, help="comma-separated class names (default: VOC's 20)")
    args = parser.parse_args(argv)

    from detkit.data.convert import voc_to_coco
    from detkit.errors import DetkitError

    names = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        print(voc_to_coco(args.root, args.out, split=args.split, classes=names))
    except DetkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
