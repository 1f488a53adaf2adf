"""What every detector gets from detkit.models.detectors.base: the metas argument, the construction
checks, export-friendly input checks and grey (in_channels=1) input, for YOLOv1 and R-CNN alike.

References: the image meta's definition (``x_input = x_orig * sx + left``) written out by hand, PIL's
``convert("L")`` for the RGB -> grey conversion, and the eager model for traced / exported ones.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from detkit import registry
from detkit.checkpoint import save_checkpoint
from detkit.errors import ConfigError, DataError
from detkit.models.builder import build_detector
from detkit.structures import check_detections
from stand_ins import TinyBackbone, target

YOLO_HEAD = {"type": "yolov1", "grid_size": 4, "num_boxes": 2, "mode": "conv", "num_convs": 1, "conv_channels": 16}


def yolov1_cfg(backbone):
    return {"type": "yolov1", "backbone": backbone, "head": dict(YOLO_HEAD), "loss": {"type": "yolov1_loss"},
            "postprocessor": {"type": "batched_nms", "score_threshold": 0.0}}


def rcnn_cfg(backbone):
    return {"type": "rcnn", "backbone": backbone,
            "proposals": {"type": "sliding_window", "scales": (0.2, 0.4, 0.7), "max_proposals": 100},
            "head": {"type": "region_classifier", "mode": "roi", "pool_size": 4, "hidden_dim": 32},
            "loss": {"type": "region_loss"}, "num_samples": 32,
            "postprocessor": {"type": "batched_nms", "iou_threshold": 0.3, "score_threshold": 0.0}}


CONFIGS = {"yolov1": yolov1_cfg, "rcnn": rcnn_cfg}


@pytest.fixture
def tiny_backbone():
    with registry.register("backbones", "tiny_base_test_backbone", TinyBackbone):
        yield {"type": "tiny_base_test_backbone"}


# ----------------------------------------------------------------------------------------------
# metas: the explicit argument that maps detections to original pixels
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CONFIGS)
def test_metas_map_boxes_per_image_and_eval_refuses_targets(kind, tiny_backbone):
    torch.manual_seed(0)
    model = build_detector(CONFIGS[kind](tiny_backbone), ["a", "b"]).eval()
    images = torch.rand(2, 3, 64, 96)
    plain = model(images)
    assert all(len(d["boxes"]) for d in plain)
    # Image 0: a 120 x 60 (W x H) original letterboxed into 96 x 64: scale 0.8, 8 px on top.
    meta = {"orig_size": (60, 120), "input_size": (64, 96), "scale": (0.8, 0.8), "pad": (0.0, 8.0),
            "file_name": "x.jpg"}
    mapped = model(images, metas=[meta, None])
    expected = (plain[0]["boxes"] - torch.tensor([0.0, 8.0, 0.0, 8.0])) / 0.8
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 120)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, 60)
    torch.testing.assert_close(mapped[0]["boxes"], expected)
    torch.testing.assert_close(mapped[0]["scores"], plain[0]["scores"])
    torch.testing.assert_close(mapped[1]["boxes"], plain[1]["boxes"])  # no meta: input pixels

    with pytest.raises(ValueError, match="eval mode takes no targets.*metas="):
        model(images, [{"meta": meta}, {"meta": meta}])
    with pytest.raises(ValueError, match="2 images but 1 metas"):
        model(images, metas=[meta])
    with pytest.raises(TypeError, match=r"metas\[1\] must be a dict"):
        model(images, metas=[meta, "x.jpg"])
    with pytest.raises(ValueError, match=r"metas\[0\] \(image x\.jpg\) has no scale, pad"):
        model(images, metas=[{"orig_size": (60, 120), "file_name": "x.jpg"}, None])


@pytest.mark.parametrize("kind", CONFIGS)
def test_training_errors_name_the_image_from_metas_or_targets(kind, tiny_backbone):
    model = build_detector(CONFIGS[kind](tiny_backbone), ["a", "b"]).train()
    bad = target([[0, 0, 5, 5]], [7], meta={"path": "/data/from_target.jpg"})
    with pytest.raises(DataError, match=r"must lie in 0\.\.1, found 7\.\.7 \(image /data/from_target\.jpg\)"):
        model(torch.rand(1, 3, 64, 64), [bad])
    with pytest.raises(DataError, match=r"must lie in 0\.\.1, found 7\.\.7 \(image /data/from_metas\.jpg\)"):
        model(torch.rand(1, 3, 64, 64), [bad], metas=[{"path": "/data/from_metas.jpg"}])


@pytest.mark.parametrize("kind", CONFIGS)
def test_both_detectors_refuse_a_bool_num_classes_and_a_wrong_class_list(kind, tiny_backbone):
    cfg = CONFIGS[kind](tiny_backbone)
    with pytest.raises(ConfigError, match="num_classes must be a positive integer, got True"):
        registry.build("detectors", {**cfg, "num_classes": True}, path="model")
    with pytest.raises(ConfigError, match="3 class names for num_classes=2"):
        registry.build("detectors", {**cfg, "num_classes": 2, "class_names": ["a", "b", "c"]}, path="model")


# ----------------------------------------------------------------------------------------------
# Export: the checks that read values stay out of torch.jit.trace / torch.export
# ----------------------------------------------------------------------------------------------


class GridPath(torch.nn.Module):
    """What an exporter captures of YOLOv1: the base's input checks, then features + head."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, images):
        self.detector.check_inputs(images, None)
        return self.detector.predict_grid(images)


def test_feature_head_path_traces_and_exports_without_the_base_checks_getting_in_the_way(tiny_backbone):
    torch.manual_seed(0)
    path = GridPath(build_detector(yolov1_cfg(tiny_backbone), ["a", "b"]).eval()).eval()
    example, other = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(path, example)
    # Python checks on traced values would warn (and be frozen into the trace); none from the base.
    from_base = [str(w.message) for w in caught
                 if issubclass(w.category, torch.jit.TracerWarning) and w.filename.endswith("detectors/base.py")]
    assert from_base == []
    torch.testing.assert_close(traced(other), path(other))

    # torch.export refuses a Python float() of a tensor value (the 0..255 check) outright.
    exported = torch.export.export(path, (example,))
    torch.testing.assert_close(exported.module()(other), path(other))

    # Outside capture the checks still run.
    with pytest.raises(ValueError, match="scaled to 0..1"):
        path(example * 255)
    with pytest.raises(ValueError, match="smaller than the backbone's minimum 8"):
        path(torch.rand(1, 3, 4, 64))


# ----------------------------------------------------------------------------------------------
# Grey input: backbones built with in_channels=1
# ----------------------------------------------------------------------------------------------


def pil_luma(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` 0..1 -> ``[N, 1, H, W]`` through PIL's ``convert("L")`` on the uint8 image."""
    grey = []
    for image in images:
        rgb = (image * 255).round().byte().permute(1, 2, 0).numpy()
        grey.append(np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255.0)
    return torch.from_numpy(np.stack(grey))[:, None]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from detkit.data.shapes import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, num=16, seed=0, size=80, val_fraction=0.25, workers=1)
    return root


@pytest.mark.parametrize("kind", CONFIGS)
def test_grey_backbone_trains_evaluates_and_predicts_from_rgb_data(kind, shapes, tmp_path):
    from detkit.data.loader import build_dataloader
    from detkit.data.shapes import ShapesDataset
    from detkit.data.transforms import build_transforms
    from detkit.evaluation.loop import run_evaluation
    from detkit.evaluation.voc import VOCEvaluator
    from detkit.inference.predictor import Predictor

    torch.manual_seed(0)
    cfg = CONFIGS[kind]({"type": "lenet5", "in_channels": 1})
    train_set = ShapesDataset(shapes, split="train", transforms=build_transforms({"size": 64}))
    model = build_detector(cfg, train_set.classes)
    assert model.in_channels == 1 and model.pixel_mean.shape == (1, 1, 1, 1)

    # RGB in, grey to the backbone: the same as PIL's luma image given directly (uint8 rounding aside).
    rgb = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.features(rgb), model.features(pil_luma(rgb)), atol=2e-2, rtol=0)
    check_detections(model(pil_luma(rgb)))  # grey [N, 1, H, W] is accepted as it is
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\] grey or \[N, 3, H, W\] RGB"):
        model(torch.rand(1, 2, 64, 64))

    # A few training iterations on the (RGB) data pipeline.
    first_conv = next(p for p in model.backbone.parameters() if p.dim() == 4)
    assert first_conv.shape[1] == 1
    before = first_conv.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    loader = build_dataloader(train_set, batch_size=4, shuffle=True, num_workers=0)
    for step, (images, targets) in enumerate(loader):
        losses = model(images, targets)
        total = sum(v for k, v in losses.items() if k.startswith("loss_"))
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        if step == 2:
            break
    assert not torch.equal(first_conv.detach(), before)

    # Evaluation through the loop the runner uses (its metas come from the RGB val pipeline).
    val_set = ShapesDataset(shapes, split="val", transforms=build_transforms({"size": 64}))
    val_loader = build_dataloader(val_set, batch_size=4, shuffle=False, num_workers=0)
    metrics = run_evaluation(model, val_loader, VOCEvaluator(val_set.classes, metrics=("voc07",)), "cpu",
                             progress=False)
    assert 0.0 <= metrics["voc07_ap50"] <= 1.0

    # Predictor on an 80 x 80 RGB photo: resized to 64 (scale 0.8) by the config's transforms.
    ckpt = save_checkpoint(tmp_path / "grey.pth", {"model": model.state_dict(),
                                                   "class_names": list(train_set.classes)})
    predictor = Predictor({"model": cfg, "data": {"classes": list(train_set.classes),
                                                  "val": {"transforms": {"size": 64}}}}, ckpt, device="cpu",
                          conf=None)
    photo = train_set.load_image(0)
    assert photo.shape == (80, 80, 3)
    [det] = predictor.predict(photo)
    batch, _ = predictor.preprocess([photo])
    with torch.no_grad():
        [own] = model.eval()(batch)
    torch.testing.assert_close(det.boxes, own["boxes"] / 0.8)
    torch.testing.assert_close(det.scores, own["scores"])


def test_proposal_generators_get_grey_images_as_three_equal_channels():
    from detkit.models.detectors.rcnn import images_to_uint8

    grey = torch.rand(2, 1, 8, 10)
    arrays = images_to_uint8(grey)
    assert arrays[1].shape == (8, 10, 3) and arrays[1].dtype == np.uint8
    expected = (grey[1, 0] * 255).round().byte().numpy()
    assert all((arrays[1][..., c] == expected).all() for c in range(3))
