"""The target/detection contracts and the image-meta mapping."""

from __future__ import annotations

import pytest
import torch

from detkit.structures import boxes_to_original, check_detections, check_targets


def test_meta_mapping_round_trips_for_a_letterbox():
    # A 300x600 (HxW) image letterboxed into 448x448: scale 448/600, padded top and bottom.
    s = 448 / 600
    meta = {"orig_size": (300, 600), "input_size": (448, 448), "scale": (s, s), "pad": (0.0, (448 - 300 * s) / 2)}
    boxes = torch.tensor([[0.0, 0.0, 600.0, 300.0], [100.0, 50.0, 200.0, 120.0]])
    # Into the input by the meta's definition (x_input = x_orig * sx + left), written out here.
    inp = boxes * s + torch.tensor([0.0, meta["pad"][1], 0.0, meta["pad"][1]])
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
