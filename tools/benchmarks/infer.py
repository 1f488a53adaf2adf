"""End-to-end `detkit infer` throughput vs the model's forward alone, in one run.

End-to-end = read JPEGs, resize, forward, NMS, draw, write annotated JPEGs (detkit.inference.run.infer).
Forward alone = the same model on the same, already-resized tensors. The overhead outside the model
is end_to_end_time / forward_time - 1 (target: <= 15% on CPU), at batch 1 and batch 8.

    python tools/bench.py infer [--images 16] [--config configs/yolov1_voc.py] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> list[tuple[str, str]]:
    import cv2
    import numpy as np
    import torch

    from detkit import Predictor
    from detkit.config import load_config
    from detkit.inference.run import infer
    from detkit.models.builder import build_detector

    parser = argparse.ArgumentParser(prog="bench.py infer")
    parser.add_argument("--config", default=str(REPO / "configs" / "yolov1_voc.py"))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    classes = cfg["data"].get("classes") or ["circle", "square", "triangle", "star"]
    torch.manual_seed(0)
    model = build_detector(cfg["model"], classes)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "model.pth"
        torch.save({"format": "detkit-checkpoint", "version": 1, "model": model.state_dict(),
                    "class_names": list(classes)}, ckpt)
        folder = tmp / "images"
        folder.mkdir()
        for i in range(args.images):
            img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
            cv2.imwrite(str(folder / f"img_{i:04d}.jpg"), cv2.GaussianBlur(img, (9, 9), 3))

        predictor = Predictor(cfg, ckpt, device="cpu")
        arrays = [cv2.imread(str(p))[:, :, ::-1].copy() for p in sorted(folder.iterdir())]
        print(f"model: {cfg['model']['type']} + {cfg['model']['backbone']['type']}, "
              f"{args.images} images 640x480, torch threads {torch.get_num_threads()}")
        print(f"{'batch':>5} {'forward img/s':>14} {'end-to-end img/s':>17} {'overhead':>9}")
        overheads = {}
        for batch_size in (1, 8):
            batches = [predictor.preprocess(arrays[i:i + batch_size])[0]
                       for i in range(0, len(arrays), batch_size)]
            fwd_times, e2e_times = [], []
            for r in range(args.repeats + 1):  # the first round warms up and is not counted
                start = time.perf_counter()
                with torch.inference_mode():
                    for b in batches:
                        predictor.model(b)
                fwd = time.perf_counter() - start
                start = time.perf_counter()
                infer(cfg, ckpt, str(folder), batch_size=batch_size, out_dir=str(tmp / "out"), exist_ok=True,
                      predictor=predictor, progress=False)
                e2e = time.perf_counter() - start
                if r:
                    fwd_times.append(fwd)
                    e2e_times.append(e2e)
            fwd, e2e = min(fwd_times), min(e2e_times)
            print(f"{batch_size:>5} {args.images / fwd:>14.1f} {args.images / e2e:>17.1f} {e2e / fwd - 1:>8.1%}")
            overheads[batch_size] = e2e / fwd - 1
    size = cfg["data"]["val"].get("transforms", {}).get("size", "?")
    return [(f"end-to-end `detkit infer` (read JPEG, resize, forward, NMS, draw, write) vs forward alone, "
             f"{cfg['model']['type']} + {cfg['model']['backbone']['type']} at {size}",
             f"overhead {overheads[1]:.1%} at batch 1, {overheads[8]:.1%} at batch 8")]
