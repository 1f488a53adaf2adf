"""detkit.ops.boxes: the box coder against torchvision's, clipping/IoU/filtering on hand-computed values."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from detkit.ops import BoxCoder, box_iou, clip_boxes


def random_boxes(k, generator, dtype=torch.float32, min_size=1.0, max_size=120.0):
    xy = torch.rand(k, 2, generator=generator, dtype=torch.float64) * 400
    wh = min_size + torch.rand(k, 2, generator=generator, dtype=torch.float64) * (max_size - min_size)
    return torch.cat([xy, xy + wh], -1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0), (20.0, 15.0, 3.0, 7.0)])
def test_box_coder_matches_torchvision_bit_for_bit(dtype, weights):
    g = torch.Generator().manual_seed(0)
    proposals, gt = random_boxes(500, g, dtype), random_boxes(500, g, dtype)
    ours, reference = BoxCoder(weights), TorchvisionBoxCoder(weights)
    assert torch.equal(ours.encode(proposals, gt), reference.encode_single(gt, proposals))
    deltas = torch.randn(500, 4, generator=g, dtype=torch.float64).to(dtype) * 3  # some hit the clamp
    assert torch.equal(ours.decode(deltas, proposals), reference.decode_single(deltas, proposals))
    # class-specific deltas, flat [K, C*4] and [K, C, 4]
    per_class = torch.randn(500, 7 * 4, generator=g, dtype=torch.float64).to(dtype)
    expected = reference.decode_single(per_class, proposals)
    assert torch.equal(ours.decode(per_class, proposals), expected)
    assert torch.equal(ours.decode(per_class.reshape(500, 7, 4), proposals), expected.reshape(500, 7, 4))


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(1)
    coder = BoxCoder()
    # size ratios below exp(clamp) = 62.5, so decoding is not clamped
    proposals, gt = random_boxes(1000, g, torch.float64, 5, 100), random_boxes(1000, g, torch.float64, 5, 100)
    torch.testing.assert_close(coder.decode(coder.encode(proposals, gt), proposals), gt, rtol=0, atol=1e-9)
    # any leading shape: [K, C, 4] ground truth against [K, 1, 4] proposals
    gt3 = gt.reshape(100, 10, 4)
    deltas = coder.encode(proposals[:100, None], gt3)
    assert deltas.shape == (100, 10, 4)
    torch.testing.assert_close(coder.decode(deltas, proposals[:100]), gt3, rtol=0, atol=1e-9)


def test_hand_computed_encode_and_clamped_decode():
    coder = BoxCoder()  # weights (10, 10, 5, 5), clamp log(1000 / 16)
    proposal = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size (10, 20)
    gt = torch.tensor([[5.0, 5.0, 25.0, 45.0]])  # centre (15, 25), size (20, 40)
    expected = torch.tensor([[10 * 10 / 10, 10 * 15 / 20, 5 * math.log(2), 5 * math.log(2)]])
    torch.testing.assert_close(coder.encode(proposal, gt), expected)
    # a huge dw/dh grows the box by at most 1000/16 = 62.5 times
    box = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    torch.testing.assert_close(box, torch.tensor([[5 - 312.5, 5 - 312.5, 5 + 312.5, 5 + 312.5]]))
    unclamped = BoxCoder(clamp=math.inf).decode(torch.tensor([[0.0, 0.0, 5.0, 0.0]]), proposal)
    torch.testing.assert_close(unclamped, torch.tensor([[5 - 5 * math.e, 0.0, 5 + 5 * math.e, 20.0]]))


def test_box_coder_validation():
    with pytest.raises(ValueError, match="4 positive numbers"):
        BoxCoder(weights=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="4 positive numbers"):
        BoxCoder(weights=(1.0, 0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        BoxCoder(clamp=math.nan)
    coder = BoxCoder()
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        coder.encode(torch.zeros(3, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\[K, C \* 4\]"):
        coder.decode(torch.zeros(3, 6), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="proposals"):
        coder.decode(torch.zeros(3, 4), torch.zeros(3, 2))


def test_clip_boxes_hand_computed():
    boxes = torch.tensor([[-5.0, 3.0, 120.0, 90.0], [10.0, -1.0, 20.0, 30.0]])
    clipped = clip_boxes(boxes, (80, 100))  # (height, width)
    assert clipped.tolist() == [[0.0, 3.0, 100.0, 80.0], [10.0, 0.0, 20.0, 30.0]]
    assert boxes[0, 0] == -5.0  # input untouched
    batched = clip_boxes(boxes.repeat(2, 3, 1, 1).reshape(2, 3, 2, 4), (80, 100))
    assert batched.shape == (2, 3, 2, 4) and torch.equal(batched[1, 2], clipped)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        clip_boxes(torch.zeros(2, 3), (10, 10))
    with pytest.raises(ValueError, match="height, width"):
        clip_boxes(boxes, (10, 10, 3))


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))
    assert box_iou(a[None].repeat(4, 1, 1), b[None].repeat(4, 1, 1)).shape == (4, 1, 3)


def test_importing_detkit_ops_imports_neither_torch_nor_torchvision():
    code = (
        "import sys, detkit.ops as ops\n"
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'eager import'\n"
        "assert ops.BoxCoder.__module__ == 'detkit.ops.boxes'\n"
        "assert ops.batched_nms.__module__ == 'detkit.ops.nms'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
