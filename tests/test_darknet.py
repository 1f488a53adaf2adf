"""YOLOv1's own network: the darknet backbones against the paper's layer table, the paper's head
option, the paper's recipe (``configs/yolov1_darknet_voc.py``).

References are written out here from the paper (Redmon et al., CVPR 2016, Figure 3 and section 2)
and darknet's cfg files, not read from detkit: per-layer output sizes at 448x448 and parameter
counts summed from the table by hand arithmetic. Shape-only checks of the full-size network (205M
parameters in its first FC layer) run on the meta device: no memory, no arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from detkit import registry
from detkit.config import load_config
from detkit.models.builder import build_detector
from detkit.models.heads.yolov1 import YOLOv1Head
from stand_ins import target

REPO = Path(__file__).resolve().parents[1]
VOC_CLASSES = tuple(f"class{i}" for i in range(20))

# Figure 3 at 448x448: (kernel, filters, stride, output side) of every conv; a 2x2/2 max-pool follows
# conv 1, 2, 6 and 16. The first 20 are what the paper pre-trains; 21-24 are added for detection.
FIGURE_3 = [
    (7, 64, 2, 224),
    (3, 192, 1, 112),
    (1, 128, 1, 56), (3, 256, 1, 56), (1, 256, 1, 56), (3, 512, 1, 56),
    *[(1, 256, 1, 28), (3, 512, 1, 28)] * 4, (1, 512, 1, 28), (3, 1024, 1, 28),
    *[(1, 512, 1, 14), (3, 1024, 1, 14)] * 2,
    (3, 1024, 1, 14), (3, 1024, 2, 7), (3, 1024, 1, 7), (3, 1024, 1, 7),
]
POOL_SIDES = [112, 56, 28, 14]
# Fast YOLO, darknet's yolo-tiny.cfg: nine 3x3 convs, a 2x2/2 max-pool after each of the first six.
TINY = [(3, 16, 1, 448), (3, 32, 1, 224), (3, 64, 1, 112), (3, 128, 1, 56), (3, 256, 1, 28),
        (3, 512, 1, 14), (3, 1024, 1, 7), (3, 1024, 1, 7), (3, 1024, 1, 7)]
FC_INPUT = 7 * 7 * 1024  # "7x7x1024" before the first connected layer
OUTPUTS = 7 * 7 * 30  # 1470


def conv_parameters(table, norm: bool = False) -> int:
    """Weights + biases (or BatchNorm scale and shift) of the convs of a layer table, on RGB input."""
    total, channels = 0, 3
    for kernel, filters, _, _ in table:
        total += kernel * kernel * channels * filters + (2 * filters if norm else filters)
        channels = filters
    return total


def conv_table(model: nn.Module, size: int) -> tuple[list, list]:
    """Run ``model`` (on the meta device) on a ``size`` image; every conv's (kernel, filters, stride,
    output side) and every max-pool's output side, in execution order."""
    convs, pools = [], []
    hooks = [m.register_forward_hook(lambda m, i, o: convs.append(
        (m.kernel_size[0], m.out_channels, m.stride[0], o.shape[-1]))) for m in model.modules()
        if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(lambda m, i, o: pools.append(o.shape[-1])) for m in model.modules()
              if isinstance(m, nn.MaxPool2d)]
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return convs, pools


def build(name: str, **kwargs):
    return registry.build("backbones", dict(type=name, **kwargs))


def paper_model(backbone: dict | None = None, **head):
    cfg = load_config(REPO / "configs" / "yolov1_darknet_voc.py")["model"]
    cfg["backbone"].update(backbone or {})
    cfg["head"].update(head)
    return build_detector(cfg, VOC_CLASSES)


# ----------------------------------------------------------------------------------------------
# Backbones against the paper's table
# ----------------------------------------------------------------------------------------------


def test_darknet_yolov1_is_figure_3():
    with torch.device("meta"):
        full = build("darknet_yolov1", depth=24).eval()
        pretrained_part = build("darknet_yolov1").eval()
    convs, pools = conv_table(full, 448)
    assert convs == FIGURE_3 and pools == POOL_SIDES
    assert conv_table(pretrained_part, 448)[0] == FIGURE_3[:20]
    # The pre-training input: 20 layers give 7x7x1024 at 224 (then average pooling and the FC).
    assert conv_table(pretrained_part, 224)[0][-1] == (3, 1024, 1, 7)
    assert (full.out_channels, full.stride, pretrained_part.stride) == (1024, 64, 32)
    assert full.feature_sizes(448) == [(7, 7)] and pretrained_part.feature_sizes(448) == [(14, 14)]

    # Leaky ReLU 0.1 after every conv, no batch-norm, biases on every conv.
    leaky = [m for m in full.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 24 and all(m.negative_slope == 0.1 for m in leaky)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in full.modules())
    assert sum(p.numel() for p in full.parameters()) == conv_parameters(FIGURE_3)
    assert sum(p.numel() for p in pretrained_part.parameters()) == conv_parameters(FIGURE_3[:20])


def test_darknet_batchnorm_option_is_darknets_cfg():
    with torch.device("meta"):
        backbone = build("darknet_yolov1", norm=True)
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 20
    assert all(m.bias is None for m in backbone.modules() if isinstance(m, nn.Conv2d))
    assert sum(p.numel() for p in backbone.parameters()) == conv_parameters(FIGURE_3[:20], norm=True)


def test_fast_yolo_backbone_is_yolo_tiny_cfg():
    with torch.device("meta"):
        tiny = build("darknet_yolov1_tiny").eval()
    convs, pools = conv_table(tiny, 448)
    assert convs == TINY
    assert pools == [224, 112, 56, 28, 14, 7]
    assert (tiny.out_channels, tiny.stride) == (1024, 64)
    assert sum(p.numel() for p in tiny.parameters()) == conv_parameters(TINY)


def test_darknet_maps_are_ceil_of_size_over_stride_like_darknet():
    # darknet's 2x2/2 max-pool keeps the last odd row/column (output ceil(h / 2)).
    backbone = build("darknet_yolov1_tiny").eval()
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, 100, 70))
    assert out.shape[-2:] == (2, 2)  # ceil(100 / 64), ceil(70 / 64)
    assert backbone.feature_sizes((65, 129)) == [(2, 3)]


def test_darknet_init_is_darknets_he_normal():
    torch.manual_seed(0)
    backbone = build("darknet_yolov1")
    conv = backbone.get_submodule("conv8.conv")  # 3x3, 256 -> 512: fan_in 2304
    std = float(conv.weight.detach().std())
    assert std == pytest.approx((2 / (3 * 3 * 256)) ** 0.5, rel=0.02)
    assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


# ----------------------------------------------------------------------------------------------
# The paper's head and the whole network
# ----------------------------------------------------------------------------------------------


def test_paper_model_has_the_papers_layers_and_parameter_count():
    with torch.device("meta"):
        model = paper_model()
    head = model.head
    assert isinstance(head, YOLOv1Head) and head.activation == "linear"
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(FC_INPUT, 4096), (4096, OUTPUTS)]
    assert [m.p for m in head.modules() if isinstance(m, nn.Dropout)] == [0.5]
    leaky = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 24 + 1 and all(m.negative_slope == 0.1 for m in leaky)  # 24 convs + FC 4096

    # The 24 conv layers of Figure 3 across backbone and head, then 7x7x1024 into the FC layers.
    convs, _ = conv_table(model.backbone, 448)
    head_convs = []
    hooks = [m.register_forward_hook(lambda m, i, o: head_convs.append(
        (m.kernel_size[0], m.out_channels, m.stride[0], o.shape[-1]))) for m in head.convs
        if isinstance(m, nn.Conv2d)]
    flat = []
    hooks.append(head.predictor[1].register_forward_hook(lambda m, i, o: flat.append(i[0].shape)))
    grid = model.eval().predict_grid(torch.empty(1, 3, 448, 448, device="meta"))
    for hook in hooks:
        hook.remove()
    assert convs + head_convs == FIGURE_3
    assert flat == [torch.Size([1, FC_INPUT])]
    assert grid.shape == (1, 7, 7, 30) and grid[0].numel() == OUTPUTS

    expected = conv_parameters(FIGURE_3) + FC_INPUT * 4096 + 4096 + 4096 * OUTPUTS + OUTPUTS
    assert sum(p.numel() for p in model.parameters()) == expected

    # The same network split the other way: the 24-layer backbone and a head without convs.
    with torch.device("meta"):
        split = paper_model(backbone=dict(depth=24), num_convs=0, conv_strides=None)
    assert conv_table(split.backbone, 448)[0] == FIGURE_3
    assert sum(p.numel() for p in split.parameters()) == expected


def test_linear_head_outputs_are_the_raw_last_layer():
    torch.manual_seed(0)
    head = YOLOv1Head(in_channels=16, num_classes=3, grid_size=2, num_convs=2, conv_channels=8,
                      conv_strides=(1, 2), norm=False, hidden_dim=32, activation="linear").eval()
    x = torch.randn(1, 16, 4, 4)
    raw = head.predictor(head.pool(head.convs(x))).view(1, 2, 2, 13)
    torch.testing.assert_close(head(x), raw)
    assert head.convs[2].stride == (2, 2)  # the second conv halves the map: 4x4 -> 2x2, no pooling needed


def test_conv_strides_must_match_the_convs():
    with pytest.raises(ValueError, match=r"conv_strides must hold one positive integer per conv \(num_convs=4\)"):
        YOLOv1Head(in_channels=8, num_classes=3, num_convs=4, conv_strides=[1, 2])
    with pytest.raises(ValueError, match="conv_strides"):
        YOLOv1Head(in_channels=8, num_classes=3, num_convs=2, conv_strides=[1, 0])


def test_paper_model_trains_end_to_end_at_a_small_size():
    # The paper's layers with narrow head layers (the real first FC is 205M weights) on a 64x64 image.
    torch.manual_seed(0)
    model = paper_model(hidden_dim=32, conv_channels=64).train()
    images = torch.rand(2, 3, 64, 64)
    out = model(images, [target([[4, 4, 40, 50]], [3]), target([[10, 20, 60, 60]], [19])])
    total = sum(v for k, v in out.items() if k.startswith("loss_"))
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.get_submodule("conv1.conv").weight.grad.abs().sum() > 0
    detections = model.eval()(images)
    assert len(detections) == 2


# ----------------------------------------------------------------------------------------------
# The paper's recipe
# ----------------------------------------------------------------------------------------------


def test_darknet_voc_config_is_the_papers_recipe():
    cfg = load_config(REPO / "configs" / "yolov1_darknet_voc.py")
    model, train = cfg["model"], cfg["train"]
    assert model["backbone"] == dict(type="darknet_yolov1", depth=20, norm=False, pretrained=None)
    head = model["head"]
    assert (head["grid_size"], head["num_boxes"], head["mode"]) == (7, 2, "fc")
    assert (head["num_convs"], head["conv_channels"], list(head["conv_strides"])) == (4, 1024, [1, 2, 1, 1])
    assert (head["norm"], head["activation"], head["hidden_dim"], head["dropout"]) == (False, "linear", 4096, 0.5)
    assert (model["loss"]["lambda_coord"], model["loss"]["lambda_noobj"]) == (5.0, 0.5)

    assert cfg["data"]["train"]["transforms"] == dict(size=448, preset="yolov1")
    assert cfg["data"]["val"]["transforms"] == dict(size=448)
    assert (train["epochs"], train["batch_size"]) == (135, 64)
    opt = train["optimizer"]
    assert (opt["type"], opt["lr"], opt["momentum"], opt["weight_decay"]) == ("sgd", 1e-2, 0.9, 5e-4)
    sched = train["scheduler"]
    assert sched["type"] == "yolov1" and sched["milestones"] == [75, 105] and sched["gamma"] == 0.1
    assert opt["lr"] * sched["warmup_start_factor"] == pytest.approx(1e-3)  # warm-up from 1e-3
    # Nothing the paper did not do is inherited from the generic SGD schedule.
    assert train["grad_clip"] is None
    assert opt["no_decay_norm_bias"] is True  # darknet decays weights only
    # The opening comment lists the differences from the paper.
    text = (REPO / "configs" / "yolov1_darknet_voc.py").read_text()
    assert "Every remaining difference from the paper" in text and "No ImageNet pre-training" in text


def test_resnet_variants_keep_their_gradient_clipping():
    for name in ("yolov1_voc.py", "yolov1_coco.py"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg["train"]["grad_clip"] == 10.0 and cfg["train"]["scheduler"]["milestones"] == [75, 105]
