"""R-CNN: region classification in ``roi`` (Fast R-CNN) vs ``warp`` (R-CNN) mode, and proposal generators.

1. Per-image inference time of the detector *excluding proposals*: the same backbone, weights and
   proposals (the first ``--proposals`` sliding windows of a ``--size`` image) go through
   :meth:`RCNN.detect` (backbone + head + decoding + NMS) in ``roi`` and in ``warp`` mode. ``roi``
   runs the backbone once per image; ``warp`` runs it once per proposal on a ``--warp-size`` crop, so
   the ratio is roughly ``proposals * warp_size^2 / size^2`` -- the speed-up that made Fast R-CNN.
2. Proposals/s and images/s of each generator at ``--size``: ``sliding_window`` (computed, and the
   cached per-size lookup the detector uses), ``precomputed`` (lookup + mapping of 2000 stored boxes)
   and ``selective_search`` when the ``detkit-selective-search`` plugin imports (cache off).

    python tools/bench.py rcnn [--size 448] [--proposals 300] [--warp-size 224] [--images 2]
                               [--backbone resnet18] [--repeats 3] [--ss-images 2]
                               [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection), not counted
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _test_image(size: int, seed: int = 0):
    """A natural-looking image: a shapes-data-set rendering (regions for selective search to find)."""
    import cv2
    import numpy as np

    from detkit.data.shapes import make_shapes

    with tempfile.TemporaryDirectory() as tmp:
        make_shapes(tmp, num=1, seed=seed, size=256, val_fraction=0.0, workers=1)
        image = cv2.imread(str(next(Path(tmp, "JPEGImages").iterdir())))[:, :, ::-1]
    return np.ascontiguousarray(cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR))


def main(argv: list[str]) -> list[tuple[str, str]]:
    import numpy as np
    import torch

    from detkit import registry
    from detkit.models.detectors.rcnn import RCNN
    from detkit.models.heads.region_classifier import RegionClassifierHead
    from detkit.models.losses.region_loss import RegionLoss
    from detkit.models.proposals.precomputed import PrecomputedProposals, write_proposals
    from detkit.models.proposals.sliding_window import SlidingWindow

    parser = argparse.ArgumentParser(prog="bench.py rcnn")
    parser.add_argument("--size", type=int, default=448, help="input image side")
    parser.add_argument("--proposals", type=int, default=300, help="proposals per image")
    parser.add_argument("--warp-size", type=int, default=224, help="crop side in warp mode (R-CNN: 227)")
    parser.add_argument("--images", type=int, default=2, help="images per timed batch (one at a time)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ss-images", type=int, default=2, help="images for selective search (slow)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch threads {torch.get_num_threads()}, input {args.size}x{args.size}, "
          f"{args.proposals} proposals per image, backbone {args.backbone} (to layer3, stride 16)")

    # -- 1. roi vs warp ------------------------------------------------------------------------
    windows = SlidingWindow(max_proposals=args.proposals)
    proposals = torch.from_numpy(np.array(windows.for_size(args.size, args.size)))
    if len(proposals) < args.proposals:
        print(f"note: only {len(proposals)} sliding windows at {args.size} px")
    classes = [f"class_{i}" for i in range(20)]
    models = {}
    for mode in ("roi", "warp"):
        torch.manual_seed(0)
        models[mode] = RCNN(
            backbone=dict(type=args.backbone, out_indices=(2,)),
            head=RegionClassifierHead(in_channels=256, num_classes=len(classes), mode=mode, stride=16,
                                      warp_size=args.warp_size, context=16 * args.warp_size / 227,
                                      warp_chunk=64),
            loss=RegionLoss(num_classes=len(classes)), postprocessor=dict(type="batched_nms", iou_threshold=0.3),
            proposals=windows, num_classes=len(classes), class_names=classes,
        ).eval()
    # Same backbone weights (the heads' first FC layers differ in size: 256*7*7 vs 256 inputs).
    models["warp"].backbone.load_state_dict(models["roi"].backbone.state_dict())
    images = torch.rand(args.images, 1, 3, args.size, args.size)

    def run(mode: str, count: int):
        def go():
            with torch.inference_mode():
                for image in images:
                    models[mode].detect(image, [proposals[:count]])
        return go

    print(f"\n{'mode':<6} {'s / image':>10} {'ms / proposal':>14} {'vs roi':>8}")
    results = {}
    for mode in ("roi", "warp"):
        results[mode] = _best_time(run(mode, len(proposals)), args.repeats) / args.images
        print(f"{mode:<6} {results[mode]:>10.3f} {1000 * results[mode] / len(proposals):>14.2f} "
              f"{results[mode] / results['roi']:>7.1f}x", flush=True)

    # -- 2. proposal generators ----------------------------------------------------------------
    image = _test_image(args.size)
    rows = []
    fresh = SlidingWindow(max_proposals=2000)
    n = 20
    t = _best_time(lambda: [fresh.generate(args.size, args.size) for _ in range(n)], args.repeats) / n
    rows.append(("sliding_window (computed)", len(fresh.generate(args.size, args.size)), t))
    n = 2000
    t = _best_time(lambda: [fresh(image) for _ in range(n)], args.repeats) / n
    rows.append(("sliding_window (cached per size)", len(fresh(image)), t))

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        xy = rng.uniform(0, args.size * 0.7, (2000, 2))
        stored = np.concatenate((xy, xy + rng.uniform(8, args.size * 0.3, (2000, 2))), axis=1)
        path = write_proposals(Path(tmp) / "props.npz", {f"img_{i:05d}.jpg": stored for i in range(500)})
        start = time.perf_counter()
        precomputed = PrecomputedProposals(path)
        load = time.perf_counter() - start
        meta = {"file_name": "img_00042.jpg", "scale": (1.0, 1.0), "pad": (0.0, 0.0)}
        n = 500
        t = _best_time(lambda: [precomputed(image, meta=meta) for _ in range(n)], args.repeats) / n
        rows.append((f"precomputed (file of 500 images read in {load:.2f} s)",
                     len(precomputed(image, meta=meta)), t))

    if "selective_search" in registry.available("proposals"):
        try:
            search = registry.build("proposals", {"type": "selective_search", "cache": False})
        except Exception as exc:  # the plugin is optional; report why it is not measured
            print(f"selective_search not measured: {type(exc).__name__}: {exc}")
        else:
            images_ss = [_test_image(args.size, seed) for seed in range(args.ss_images)]
            counts = []
            start = time.perf_counter()
            for img in images_ss:
                counts.append(len(search(img)))
            t = (time.perf_counter() - start) / len(images_ss)
            rows.append((f"selective_search ({search.mode}, max_side {search.max_side})", int(np.mean(counts)), t))
    else:
        print("selective_search not measured: plugin detkit-selective-search not installed")

    reference = rows[0][2]
    print(f"\n{'generator':<52} {'boxes':>6} {'ms / image':>11} {'images/s':>10} {'proposals/s':>12} "
          f"{'time vs computed windows':>25}")
    for name, boxes, seconds in rows:
        print(f"{name:<52} {boxes:>6} {1000 * seconds:>11.4g} {1 / seconds:>10.4g} {boxes / seconds:>12.3g} "
              f"{seconds / reference:>24.3g}x")
    return [(f"roi vs warp mode, {len(proposals)} proposals at {args.size}",
             f"roi {results['roi']:.2f} s/image, warp {results['warp']:.1f} s/image "
             f"({results['warp'] / results['roi']:.0f}×)")]
