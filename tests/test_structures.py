"""Box formats and the target/detection contracts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_convert

from detkit.structures import (
    boxes_to_input,
    boxes_to_original,
    box_area,
    check_detections,
    check_targets,
    convert_boxes,
    denormalise_boxes,
    normalise_boxes,
)


def random_xyxy(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 100 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("src,dst", [("xyxy", "xywh"), ("xyxy", "cxcywh"), ("xywh", "cxcywh"),
                                     ("cxcywh", "xyxy"), ("xywh", "xyxy"), ("cxcywh", "xywh")])
def test_conversions_match_torchvision(src, dst):
    boxes = box_convert(random_xyxy(), "xyxy", src)
    expected = box_convert(boxes, src, dst)
    torch.testing.assert_close(convert_boxes(boxes, src, dst), expected)
    # numpy arrays and leading batch dimensions work the same way
    np.testing.assert_allclose(convert_boxes(boxes.numpy()[None], src, dst)[0], expected.numpy(), rtol=1e-6)


def test_hand_computed_conversion_and_errors():
    box = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    assert convert_boxes(box, "xyxy", "xywh").tolist() == [[10, 20, 40, 60]]
    assert convert_boxes(box, "xyxy", "cxcywh").tolist() == [[30, 50, 40, 60]]
    with pytest.raises(ValueError, match="unknown box format"):
        convert_boxes(box, "xyxy", "yolo")
    with pytest.raises(ValueError, match="4 values"):
        convert_boxes(torch.zeros(2, 5), "xyxy", "xywh")


def test_normalise_round_trip_and_area():
    boxes = random_xyxy()
    norm = normalise_boxes(boxes, 640, 480)
    assert float(norm[:, 0::2].max()) <= 400 / 640 + 1e-6
    torch.testing.assert_close(denormalise_boxes(norm, 640, 480), boxes)
    np.testing.assert_allclose(normalise_boxes(boxes.numpy(), 640, 480), norm.numpy(), rtol=1e-6)
    assert box_area(torch.tensor([[0.0, 0.0, 4.0, 5.0], [5.0, 5.0, 1.0, 1.0]])).tolist() == [20.0, 0.0]


def test_meta_mapping_round_trips_for_a_letterbox():
    # A 300x600 (HxW) image letterboxed into 448x448: scale 448/600, padded top and bottom.
    s = 448 / 600
    meta = {"orig_size": (300, 600), "input_size": (448, 448), "scale": (s, s), "pad": (0.0, (448 - 300 * s) / 2)}
    boxes = torch.tensor([[0.0, 0.0, 600.0, 300.0], [100.0, 50.0, 200.0, 120.0]])
    inp = boxes_to_input(boxes, meta)
    assert inp[0].tolist() == pytest.approx([0.0, meta["pad"][1], 448.0, 448.0 - meta["pad"][1]])
    torch.testing.assert_close(boxes_to_original(inp, meta), boxes)
    # Boxes predicted in the padding are clipped to the original image.
    out = boxes_to_original(torch.tensor([[-10.0, 0.0, 460.0, 10.0]]), meta)
    assert out.tolist() == [[0.0, 0.0, 600.0, 0.0]]


def test_check_targets_names_the_offending_image():
    good = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([1])}
    check_targets([good], num_classes=2)
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] must lie in 0..1"):
        check_targets([good, {"boxes": good["boxes"], "labels": torch.tensor([2])}], num_classes=2)
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] has boxes with x2 < x1"):
        check_targets([{"boxes": torch.tensor([[5.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] must be an int64"):
        check_targets([{"boxes": good["boxes"], "labels": torch.tensor([1], dtype=torch.int32)}])
    with pytest.raises(TypeError, match="one dict per image"):
        check_targets(good)


def test_check_detections_shapes_must_agree():
    det = {"boxes": torch.zeros(3, 4), "scores": torch.zeros(3), "labels": torch.zeros(3, dtype=torch.int64)}
    check_detections([det])
    with pytest.raises(ValueError, match=r"detections\[0\]: shapes"):
        check_detections([{**det, "scores": torch.zeros(2)}])
