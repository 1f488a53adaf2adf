"""Real data: the raccoon YOLOv1 recipe, trained briefly, clearly beats the untrained model on val.

Slow (a few minutes on 2 CPU cores): runs only with ``DETKIT_SLOW=1 make test``. The margin is
measured against the untrained model in the same test, not a magic number.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stand_ins import require_component

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_short_raccoon_schedule_beats_the_untrained_model(raccoon_root, tmp_path):
    require_component("backbones", "efficientnet_lite0", "detkit-efficientnet-lite")
    from detkit.config import load_config
    from detkit.engine.runner import train
    from detkit.evaluation.run import evaluate
    from detkit.models.builder import build_detector

    cfg = load_config(REPO / "configs" / "yolov1_raccoon_lite0.py", [
        f"data.train.root={raccoon_root}", "data.train.transforms.size=224", "data.val.transforms.size=224",
        "train.epochs=6", "train.eval_interval=6", "train.num_workers=0", "eval.num_workers=0",
        "eval.metric=['voc07']",
    ])
    torch.manual_seed(0)
    untrained = build_detector(cfg["model"], cfg["data"]["classes"])
    ckpt = tmp_path / "untrained.pth"
    torch.save({"format": "detkit-checkpoint", "version": 1, "model": untrained.state_dict(),
                "class_names": list(cfg["data"]["classes"])}, ckpt)
    baseline = evaluate(cfg, ckpt, metric="voc07", device="cpu")["voc07_ap50"]

    result = train(cfg, work_dir=tmp_path / "run", device="cpu")
    trained = evaluate(cfg, result["last_checkpoint"], metric="voc07", device="cpu")["voc07_ap50"]
    assert trained >= baseline + 0.2, (baseline, trained)
    assert trained >= 2 * baseline, (baseline, trained)
