#!/usr/bin/env python
"""The embedded default job behind `make demo`.

Runs the same commands a user would type, printing each one:
  1. generate the synthetic shapes data set (VOC + COCO layout) into data/shapes
  2. train YOLOv1 on it                          (detkit train configs/yolov1_shapes.py)
  3. evaluate the best checkpoint, VOC and COCO, with its diagnostics (detkit eval ... --metric all --plots)
  4. run inference on held-out images and on a video made from them (detkit infer ...)
and says where the run directory, plots and annotated outputs are.

Options: --quick (a 2-epoch smoke run), --epochs N, --work-dir DIR, --data DIR.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/yolov1_shapes.py"


def run(cmd: list[str]) -> None:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (shorter commands to copy), else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def make_video(images: list[Path], out: Path, fps: float = 5.0) -> Path:
    """A short video from held-out images (letterboxed to one size), to show video inference."""
    import cv2
    import numpy as np

    size = (320, 240)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        out = out.with_suffix(".avi")
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for path in images:
        img = cv2.imread(str(path))
        h, w = img.shape[:2]
        s = min(size[0] / w, size[1] / h)
        resized = cv2.resize(img, (int(w * s), int(h * s)))
        canvas = np.full((size[1], size[0], 3), 114, np.uint8)
        y, x = (size[1] - resized.shape[0]) // 2, (size[0] - resized.shape[1]) // 2
        canvas[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
        writer.write(canvas)
    writer.release()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 epochs, for a smoke test")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--work-dir", default="work_dirs/yolov1_shapes")
    parser.add_argument("--num", type=int, default=600, help="images to generate")
    args = parser.parse_args()

    detkit = [sys.executable, "-m", "detkit"]
    data = REPO / args.data
    if not (data / "ImageSets" / "Main" / "val.txt").is_file():
        run(detkit + ["data", "make-shapes", args.data, "--num", str(args.num), "--seed", "0"])
    else:
        print(f"using existing synthetic data in {args.data}")

    sets = [f"data.train.root={args.data}"]
    epochs = 2 if args.quick else args.epochs
    train_cmd = detkit + ["train", CONFIG, "--work-dir", args.work_dir, "--set", *sets]
    if epochs:
        train_cmd += ["--epochs", str(epochs)]
    run(train_cmd)

    work = REPO / args.work_dir
    best = sorted(work.glob("best_*.pth")) or [work / "last.pth"]
    metrics_file = work / "eval_metrics.json"
    eval_plots = work / "eval_val"  # tools/collect_results.py copies the README's figures from here
    run(detkit + ["eval", CONFIG, shown(best[0]), "--metric", "all", "--metrics-out",
                  shown(metrics_file), "--plots", shown(eval_plots), "--set", *sets])

    val_ids = (data / "ImageSets" / "Main" / "val.txt").read_text().split()
    images = [next((data / "JPEGImages").glob(f"{i}.*")) for i in val_ids[:24]]
    held_out = REPO / "runs" / "demo_inputs"
    held_out.mkdir(parents=True, exist_ok=True)
    for p in images[:8]:
        (held_out / p.name).write_bytes(p.read_bytes())
    # The video goes into its own folder: in the image folder, infer would (rightly) report it as skipped.
    video_dir = REPO / "runs" / "demo_video"
    video_dir.mkdir(parents=True, exist_ok=True)
    video = make_video(images, video_dir / "shapes_demo.mp4")
    run(detkit + ["infer", CONFIG, shown(best[0]), shown(held_out),
                  "--out", "runs/demo_infer/images", "--save-json", "--set", *sets])
    run(detkit + ["infer", CONFIG, shown(best[0]), shown(video),
                  "--out", "runs/demo_infer/video", "--save-json", "--set", *sets])

    metrics = json.loads(metrics_file.read_text())
    print("\n==== demo finished ====")
    from detkit.evaluation.names import HEADLINE_KEYS

    for key in HEADLINE_KEYS:
        if key in metrics:
            print(f"  {key:12s} {metrics[key]:.4f}")
    print(f"  run directory : {args.work_dir}/ (config.json, train.log, metrics.jsonl, checkpoints)")
    print(f"  plots         : {args.work_dir}/plots/ (training curves, data statistics, final model)")
    print(f"  diagnostics   : {shown(eval_plots)}/ (PR / F1 curves, confusion matrix, per_class.csv, "
          "report.txt, mosaics, box statistics of the best checkpoint)")
    print(f"  metrics       : {shown(metrics_file)}")
    print("  annotated     : runs/demo_infer/images*/ and runs/demo_infer/video*/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
