"""What the `detkit serve` tests share: a tiny deterministic detector, test images whose detections
differ, and the comparison of the server's JSON with `Predictor`'s results.

The detector is YOLOv1 on a ResNet-18 stem at 64 px with a 4x4 grid, randomly initialised with a
fixed seed and its last layer drawn wide (std 2) so its scores spread over 0..1: a handful of
detections per image with distinct scores (a default initialisation scores every candidate alike,
and which near-equal score survives a threshold would then be a coin toss between two forward passes).
It loads in well under a second and runs in milliseconds. The images are smooth noise of different
sizes, so every image has its own detections, and boxes in original pixels differ by image size too:
a response handed to the wrong caller cannot pass for the right one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "triangle", "star", "cross"]
SIZES = [(60, 80), (120, 90), (200, 150), (97, 131), (150, 150), (75, 240)]  # (height, width)
BOX_TOL = 0.011  # the JSON rounds boxes to 2 decimals
SCORE_TOL = 1e-4


def make_tiny_detector(path: Path) -> Path:
    import torch

    from detkit.checkpoint import save_checkpoint
    from detkit.config import load_config
    from detkit.models.builder import build_detector

    cfg = load_config(REPO / "configs" / "yolov1_shapes.py", [
        "model.backbone={'type': 'resnet18', 'out_indices': [0]}", "model.head.grid_size=4", "model.head.mode=conv",
        "+model.head.conv_channels=32", "+model.head.num_convs=1", "data.train.transforms.size=64",
        "data.val.transforms.size=64"])
    torch.manual_seed(0)
    model = build_detector(cfg["model"], CLASSES)
    torch.nn.init.normal_(model.head.predictor.weight, std=2.0)
    return save_checkpoint(path, {"model": model.state_dict(), "class_names": CLASSES, "config": cfg})


def write_images(folder: Path) -> list[Path]:
    """One image per size in :data:`SIZES`, JPEG and PNG alternately."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(SIZES):
        image = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (7, 7), 2)
        path = folder / f"image{i}.{'jpg' if i % 2 == 0 else 'png'}"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def assert_same(got: list[dict], expected, where: str = "") -> None:
    """The server's ``detections`` equal a Predictor :class:`Result`: as many, each matched to one of
    the same class with the same score and box (within the JSON's rounding)."""
    assert len(got) == len(expected), f"{where}: {len(got)} detections, Predictor has {len(expected)}"
    unmatched = list(range(len(got)))
    for box, score, name in zip(expected.boxes.tolist(), expected.scores.tolist(), expected.names):
        candidates = [j for j in unmatched if got[j]["name"] == name and abs(got[j]["score"] - score) <= SCORE_TOL]
        assert candidates, f"{where}: no {name} scoring {score:.5f} among {got}"
        j = min(candidates, key=lambda j: max(abs(a - b) for a, b in zip(got[j]["box"], box)))
        assert max(abs(a - b) for a, b in zip(got[j]["box"], box)) <= BOX_TOL, f"{where}: {got[j]} vs {box}"
        assert got[j]["label"] == CLASSES.index(name)
        unmatched.remove(j)
