"""Training data pipeline speed: images/s per worker on the raccoon photos.

    python tools/bench.py data [--root ../shared/datasets/raccoon] [--size 448] [--rounds 3]
                               [--workers 2] [--batch-size 8]

Pipeline measured = the raccoon training config: ``VOCDataset`` read (``read_image`` + annotation)
-> ``yolov1`` preset (affine scale/translate, HSV gains, flip) -> resize to ``size`` -> tensors.

* single process, with the time split into read (decode + annotation), augment + resize, and
  to-tensor; images/s of the whole pipeline;
* the same pipeline through ``build_dataloader`` (collate, transfer to the main process) with no
  worker and with ``--workers`` workers: images/s in total and per worker;
* reference, in the same run: the bare minimum any loader does, ``cv2.imread`` + ``cv2.resize`` to
  ``size`` (no augmentation, no checks); the ratio says what the rest costs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "raccoon"


def _single_process(dataset, passes: int) -> dict:
    from detkit.data.base import to_tensors

    read = augment = tensor = 0.0
    n = 0
    for _ in range(passes):
        for i in range(len(dataset)):
            t0 = time.perf_counter()
            sample = dataset.raw_sample(i)
            t1 = time.perf_counter()
            sample = dataset.transforms(sample)
            t2 = time.perf_counter()
            to_tensors(sample)
            t3 = time.perf_counter()
            read, augment, tensor = read + t1 - t0, augment + t2 - t1, tensor + t3 - t2
            n += 1
    return dict(n=n, read=read, augment=augment, tensor=tensor)


def _reference(paths, size: int, passes: int) -> float:
    import cv2

    start = time.perf_counter()
    for _ in range(passes):
        for p in paths:
            img = cv2.imread(str(p))
            cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    return time.perf_counter() - start


def _loader(dataset, workers: int, batch_size: int, passes: int) -> tuple[int, float]:
    from detkit.data.loader import build_dataloader

    loader = build_dataloader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    if workers:
        next(iter(loader))  # start the (persistent) workers outside the timing
    n = 0
    start = time.perf_counter()
    for _ in range(passes):
        for images, _targets in loader:
            n += images.shape[0]
    return n, time.perf_counter() - start


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.py data", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if not (args.root / "Annotations").is_dir():
        print(f"[data] raccoon data set not found at {args.root}; pass --root")
        return

    import os

    import cv2
    import torch

    from detkit.data.voc import VOCDataset

    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # per-worker figures: one core each, as in a DataLoader worker
    dataset = VOCDataset(args.root, split=args.split, classes=["raccoon"],
                         transforms=dict(size=args.size, preset="yolov1"))
    sides = [np.sqrt(a.width * a.height) for a in map(dataset.load_annotation, range(len(dataset)))]
    print(f"{len(dataset)} images of {args.root.name}/{args.split}, mean side {np.mean(sides):.0f} px; pipeline: "
          f"read -> yolov1 preset -> resize {args.size} -> tensor; best of {args.rounds} interleaved rounds")

    _single_process(dataset, 1)  # warm-up: file cache, lazy imports
    paths = [dataset.image_path(i) for i in range(len(dataset))]
    n = len(paths)
    ref_rate, single, loader_rates = 0.0, None, {}
    # This machine is shared: measurements are interleaved and the best round of each is kept, so a
    # busy moment does not land on one candidate only.
    for _ in range(args.rounds):
        ref_rate = max(ref_rate, n / _reference(paths, args.size, 1))
        t = _single_process(dataset, 1)
        if single is None or sum(t[k] for k in ("read", "augment", "tensor")) < sum(
                single[k] for k in ("read", "augment", "tensor")):
            single = t
        for workers in sorted({0, args.workers}):
            count, seconds = _loader(dataset, workers, args.batch_size, 1)
            loader_rates[workers] = max(loader_rates.get(workers, 0.0), count / seconds)
    total = single["read"] + single["augment"] + single["tensor"]
    rate = single["n"] / total
    print(f"reference cv2.imread + cv2.resize:      {ref_rate:7.1f} images/s")
    print(f"detkit pipeline, single process:        {rate:7.1f} images/s  ({rate / ref_rate:.2f}x the reference)")
    for key, label in (("read", "read (decode + annotation)"), ("augment", "augment + resize"),
                       ("tensor", "to tensor")):
        print(f"    {label:28s} {1000 * single[key] / single['n']:6.2f} ms/image  ({100 * single[key] / total:4.1f}%)")
    base = loader_rates[0]
    print(f"DataLoader, main process, batch {args.batch_size}:   {base:7.1f} images/s  (+ collate)")
    if args.workers > 0:
        total_rate = loader_rates[args.workers]
        print(f"DataLoader, {args.workers} workers, batch {args.batch_size}:     {total_rate:7.1f} images/s "
              f"= {total_rate / args.workers:.1f} per worker ({total_rate / base:.2f}x the main-process loader)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"    ({os.cpu_count()} CPU cores, load average {load:.1f} at the end: per-worker figures assume a free "
          "core per worker)")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
