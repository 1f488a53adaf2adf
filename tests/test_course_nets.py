"""The course's variants of the classic nets (d2l.ai's code) against the book's layer tables.

The expected tables are d2l's printed ``layer_summary`` output (AlexNet at 224x224, GoogLeNet and
ResNet-18 at 96x96, one grey channel as the book feeds Fashion-MNIST) and, where the book prints
none, the size arithmetic of its code (BN-LeNet at 28x28, ``d2l.resnet18`` at 28x28) written out
here. Parameter counts are summed from the book's channel numbers by hand arithmetic.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from detkit import registry


def build(name: str, **kwargs):
    return registry.build("backbones", dict(type=name, in_channels=1, **kwargs)).eval()


def layer_summary(backbone, size: int) -> list[tuple[str, str, tuple]]:
    """d2l's ``layer_summary``: ``(module path, class name, output shape without the batch)`` of every
    module of the stem and the stages, run in order on a grey ``size`` x ``size`` image."""
    x = torch.rand(1, 1, size, size)
    rows = []
    with torch.no_grad():
        for part in (backbone.layout.stem, *backbone.layout.stages):
            for path in part.modules:
                module = backbone.get_submodule(path)
                x = module(x)
                rows.append((path, type(module).__name__, tuple(x.shape[1:])))
    return rows


def conv_parameters(layers) -> int:
    """``layers``: (in_channels, out_channels, kernel) per conv with bias."""
    return sum(cin * cout * k * k + cout for cin, cout, k in layers)


# ----------------------------------------------------------------------------------------------
# AlexNet
# ----------------------------------------------------------------------------------------------

# d2l, "Deep Convolutional Neural Networks (AlexNet)": AlexNet().layer_summary((1, 1, 224, 224)),
# up to the Flatten (the classifier follows).
D2L_ALEXNET = [
    ("Conv2d", (96, 54, 54)), ("ReLU", (96, 54, 54)), ("MaxPool2d", (96, 26, 26)),
    ("Conv2d", (256, 26, 26)), ("ReLU", (256, 26, 26)), ("MaxPool2d", (256, 12, 12)),
    ("Conv2d", (384, 12, 12)), ("ReLU", (384, 12, 12)), ("Conv2d", (384, 12, 12)), ("ReLU", (384, 12, 12)),
    ("Conv2d", (256, 12, 12)), ("ReLU", (256, 12, 12)), ("MaxPool2d", (256, 5, 5)),
]


def paper_response_normalisation(a: torch.Tensor, k=2.0, n=5, alpha=1e-4, beta=0.75) -> torch.Tensor:
    """Krizhevsky et al. 2012, section 3.3:
    b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta."""
    channels = a.shape[1]
    out = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        out[:, i] = a[:, i] / (k + alpha * a[:, lo:hi + 1].square().sum(dim=1)) ** beta
    return out


def test_alexnet_d2l_without_lrn_is_the_books_table():
    rows = layer_summary(build("alexnet_d2l", lrn=False), 224)
    assert [(kind, shape) for _, kind, shape in rows] == D2L_ALEXNET


def test_alexnet_d2l_puts_the_papers_lrn_after_conv1_and_conv2():
    backbone = build("alexnet_d2l")
    rows = layer_summary(backbone, 224)
    assert [r[0] for r in rows[:4]] == ["conv1", "relu1", "lrn1", "pool1"]
    assert [r[0] for r in rows[4:8]] == ["conv2", "relu2", "lrn2", "pool2"]
    assert [(kind, shape) for _, kind, shape in rows if kind != "LocalResponseNorm"] == D2L_ALEXNET
    assert sum(kind == "LocalResponseNorm" for _, kind, _ in rows) == 2

    a = torch.rand(2, 96, 5, 5) * 30  # large activations, where the normalisation bites
    with torch.no_grad():
        torch.testing.assert_close(backbone.lrn1(a), paper_response_normalisation(a), rtol=1e-5, atol=1e-6)
    # Not the Caffe / PyTorch reading of alpha (divided by n), which normalises five times less.
    assert not torch.allclose(backbone.lrn1(a), paper_response_normalisation(a, alpha=1e-4 / 5))

    channels = [(1, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    assert sum(p.numel() for p in backbone.parameters()) == conv_parameters(channels)


# ----------------------------------------------------------------------------------------------
# GoogLeNet
# ----------------------------------------------------------------------------------------------

# d2l, "Multi-Branch Networks (GoogLeNet)": GoogleNet().layer_summary((1, 1, 96, 96)); b5 is shown
# before its global average pooling.
D2L_GOOGLENET = {"b1": (64, 24, 24), "b2": (192, 12, 12), "b3": (480, 6, 6), "b4": (832, 3, 3), "b5": (1024, 3, 3)}
# The book's Inception(c1, c2, c3, c4) arguments, in order.
D2L_INCEPTIONS = [
    (64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64),
    (192, (96, 208), (16, 48), 64), (160, (112, 224), (24, 64), 64), (128, (128, 256), (24, 64), 64),
    (112, (144, 288), (32, 64), 64), (256, (160, 320), (32, 128), 128),
    (256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128),
]


def test_googlenet_d2l_is_the_books_table_with_5x5_branches_and_no_batchnorm():
    backbone = build("googlenet_d2l")
    assert {path: shape for path, _, shape in layer_summary(backbone, 96)} == D2L_GOOGLENET
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    fives = [m for m in backbone.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (5, 5)]
    assert len(fives) == 9  # one per inception block
    # torchvision's GoogLeNet, for contrast: 3x3 in that branch, and BatchNorm.
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    assert tv.inception3a.branch3[1].conv.kernel_size == (3, 3) and hasattr(tv.inception3a.branch3[1], "bn")

    stem = [(1, 64, 7), (64, 64, 1), (64, 192, 3)]
    inceptions, channels = [], 192
    for c1, (r2, c2), (r3, c3), c4 in D2L_INCEPTIONS:
        inceptions += [(channels, c1, 1), (channels, r2, 1), (r2, c2, 3), (channels, r3, 1), (r3, c3, 5),
                       (channels, c4, 1)]
        channels = c1 + c2 + c3 + c4
    assert channels == 1024
    assert sum(p.numel() for p in backbone.parameters()) == conv_parameters(stem + inceptions)


# ----------------------------------------------------------------------------------------------
# LeNet with batch-norm
# ----------------------------------------------------------------------------------------------

# d2l's BNLeNet on 28x28 (its code: conv 5 unpadded -> BN -> sigmoid -> avg-pool 2/2, twice).
D2L_BN_LENET = [
    ("Conv2d", (6, 24, 24)), ("BatchNorm2d", (6, 24, 24)), ("Sigmoid", (6, 24, 24)), ("AvgPool2d", (6, 12, 12)),
    ("Conv2d", (16, 8, 8)), ("BatchNorm2d", (16, 8, 8)), ("Sigmoid", (16, 8, 8)), ("AvgPool2d", (16, 4, 4)),
]


def test_lenet5_bn_d2l_is_the_books_bn_lenet():
    backbone = build("lenet5_bn_d2l")
    assert [(kind, shape) for _, kind, shape in layer_summary(backbone, 28)] == D2L_BN_LENET
    # 16 x 4 x 4 = the 256 inputs of the book's first dense layer.
    assert backbone.feature_sizes(28) == [(4, 4)] and backbone.out_channels * 4 * 4 == 256
    bn = 2 * (6 + 16)
    assert sum(p.numel() for p in backbone.parameters()) == conv_parameters([(1, 6, 5), (6, 16, 5)]) + bn


# ----------------------------------------------------------------------------------------------
# ResNet-18
# ----------------------------------------------------------------------------------------------


def residual_parameters(cin: int, channels: int, projection: bool) -> int:
    convs = [(cin, channels, 3), (channels, channels, 3)] + ([(cin, channels, 1)] if projection else [])
    return conv_parameters(convs) + 2 * 2 * channels  # two BatchNorms (scale and shift)


def resnet18_d2l_parameters(stem_kernel: int) -> int:
    total = conv_parameters([(1, 64, stem_kernel)]) + 2 * 64
    cin = 64
    for index, width in enumerate((64, 128, 256, 512)):
        total += residual_parameters(cin, width, projection=index > 0) + residual_parameters(width, width, False)
        cin = width
    return total


def stage_outputs(backbone, size: int) -> list[tuple]:
    rows = {path: shape for path, _, shape in layer_summary(backbone, size)}
    ends = [backbone.layout.stem.modules[-1]] + [s.modules[-1] for s in backbone.layout.stages]
    return [rows[path] for path in ends]


def test_resnet18_d2l_imagenet_stem_is_the_books_table():
    # d2l, "Residual Networks (ResNet)": ResNet18().layer_summary((1, 1, 96, 96)).
    backbone = build("resnet18_d2l", stem="imagenet")
    assert stage_outputs(backbone, 96) == [(64, 24, 24), (64, 24, 24), (128, 12, 12), (256, 6, 6), (512, 3, 3)]
    assert sum(p.numel() for p in backbone.parameters()) == resnet18_d2l_parameters(7)


def test_resnet18_d2l_small_stem_is_d2l_resnet18():
    # d2l.resnet18 ("a smaller convolution kernel, stride, and padding", no max-pool) on 28x28.
    backbone = build("resnet18_d2l")
    assert backbone.layout.stem.modules == ("conv1", "bn1", "relu")
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert stage_outputs(backbone, 28) == [(64, 28, 28), (64, 28, 28), (128, 14, 14), (256, 7, 7), (512, 4, 4)]
    assert sum(p.numel() for p in backbone.parameters()) == resnet18_d2l_parameters(3)


def test_d2l_residual_block_adds_a_plain_1x1_conv_shortcut_then_relu():
    torch.manual_seed(0)
    block = build("resnet18_d2l").layer2[0]  # 64 -> 128, stride 2, projection shortcut; eval mode
    assert isinstance(block.conv3, nn.Conv2d) and block.conv3.bias is not None  # no BN on the shortcut
    assert block.conv1.bias is not None and block.conv2.bias is not None
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        # The book's forward, written out with the block's own layers.
        y = F.relu(block.bn1(block.conv1(x)))
        y = block.bn2(block.conv2(y))
        expected = F.relu(y + F.conv2d(x, block.conv3.weight, block.conv3.bias, stride=2))
        torch.testing.assert_close(block(x), expected)
    assert build("resnet18_d2l").layer1[0].conv3 is None  # identity shortcut where nothing changes


# ----------------------------------------------------------------------------------------------
# The book's initialisation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, path, fan_in, fan_out", [
    ("alexnet_d2l", "conv2", 96 * 25, 256 * 25),
    ("googlenet_d2l", "b2.2", 64 * 9, 192 * 9),
    ("resnet18_d2l", "layer3.0.conv1", 128 * 9, 256 * 9),
])
def test_d2l_variants_use_the_books_xavier_init(name, path, fan_in, fan_out):
    torch.manual_seed(0)
    weight = registry.build("backbones", dict(type=name)).get_submodule(path).weight.detach()
    bound = (6 / (fan_in + fan_out)) ** 0.5  # Xavier-uniform: U(-bound, bound)
    assert float(weight.abs().max()) <= bound
    assert float(weight.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.03)
