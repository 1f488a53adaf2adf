"""Backbones: every registered name, built through the registry.

References are independent of detkit's code: torchvision's own networks (their trunk is run by hand
here), architecture facts from the papers / torchvision (channels, strides, minimum sizes), and
conv/pool size arithmetic written out in this file.
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from detkit import registry
from detkit.errors import CheckpointError, ConfigError

# Every backbone detkit itself registers (plugins test their own): a new entry point is picked up
# here, and test_every_builtin_backbone_has_facts makes it state its facts below.
NAMES = sorted(c.name for c in registry.components("backbones", load=False) if c.distribution == "detkit")
# The networks torchvision defines (and publishes ImageNet weights for) under the same name.
TORCHVISION_NAMES = ["alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "googlenet", "resnet18",
                     "resnet34", "resnet50", "mobilenet_v2"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # darknet: 0..1 pixels, no normalisation
VGG = ([128, 256, 512, 512], [4, 8, 16, 32], 32)
RESNET_STRIDES = [4, 8, 16, 32]

# Architecture facts (papers, torchvision), not read from detkit:
# name: (stage channels, stage strides, min input size, has BatchNorm, first-conv weight key, (mean, std))
ARCH = {
    "lenet5": ([16, 120], [4, 4], 4, False, "c1.weight", HALF),
    "alexnet": ([192, 256], [16, 32], 63, False, "features.0.weight", IMAGENET),
    "vgg11": (*VGG, False, "features.0.weight", IMAGENET),
    "vgg11_bn": (*VGG, True, "features.0.weight", IMAGENET),
    "vgg16": (*VGG, False, "features.0.weight", IMAGENET),
    "vgg16_bn": (*VGG, True, "features.0.weight", IMAGENET),
    "nin": ([256, 384], [16, 32], 1, False, "mlpconv1.conv.weight", IMAGENET),
    # torchvision's GoogLeNet weights expect (x - 0.5) / 0.5 (its transform_input=True).
    "googlenet": ([480, 832, 1024], [8, 16, 32], 15, True, "conv1.conv.weight", HALF),
    "resnet18": ([64, 128, 256, 512], RESNET_STRIDES, 1, True, "conv1.weight", IMAGENET),
    "resnet34": ([64, 128, 256, 512], RESNET_STRIDES, 1, True, "conv1.weight", IMAGENET),
    "resnet50": ([256, 512, 1024, 2048], RESNET_STRIDES, 1, True, "conv1.weight", IMAGENET),
    "mobilenet_v2": ([24, 32, 96, 1280], RESNET_STRIDES, 1, True, "features.0.0.weight", IMAGENET),
    # YOLOv1 paper, Figure 3 (first 20 layers) and darknet's yolo-tiny.cfg.
    "darknet_yolov1": ([512, 1024, 1024], [8, 16, 32], 1, False, "conv1.conv.weight", RAW),
    "darknet_yolov1_tiny": ([64, 128, 256, 512, 1024], [4, 8, 16, 32, 64], 1, False, "conv1.conv.weight", RAW),
    # d2l.ai's code (the course's variants).
    "lenet5_bn_d2l": ([16], [4], 16, True, "c1.weight", HALF),
    "alexnet_d2l": ([256, 256], [16, 32], 65, False, "conv1.weight", IMAGENET),
    "googlenet_d2l": ([192, 480, 832, 1024], [8, 16, 32, 32], 1, False, "b1.0.weight", IMAGENET),
    "resnet18_d2l": ([64, 128, 256, 512], [1, 2, 4, 8], 1, True, "conv1.weight", IMAGENET),
}
CLASSIFIER_PREFIXES = {
    "alexnet": ("classifier.",), "vgg11": ("classifier.",), "vgg11_bn": ("classifier.",),
    "vgg16": ("classifier.",), "vgg16_bn": ("classifier.",), "googlenet": ("fc.", "aux1.", "aux2."),
    "resnet18": ("fc.",), "resnet34": ("fc.",), "resnet50": ("fc.",), "mobilenet_v2": ("classifier.",),
}
EXACT = 64  # a multiple of every stride (128 for alexnet_d2l, which needs 65 pixels)
SMALL = {"lenet5": 8, "alexnet": 63, "alexnet_d2l": 65, "lenet5_bn_d2l": 16}  # 32 for the others
VALID_PADDING = {"alexnet", "alexnet_d2l", "lenet5_bn_d2l"}  # maps are not exactly H / stride


def small(name: str) -> int:
    """Smallest convenient training size."""
    return SMALL.get(name, 32)


def exact(name: str) -> int:
    return EXACT if ARCH[name][2] <= EXACT else 2 * EXACT


def build(name: str, **kwargs):
    return registry.build("backbones", dict(type=name, **kwargs))


def _conv(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def expected_stage_sizes(name: str, n: int) -> list[int]:
    """Map size after each stage for an n×n input, from the layers' size arithmetic."""
    if name in ("alexnet", "alexnet_d2l"):  # conv 11/4 p2 (d2l: p1), pool 3/2 | conv 5 p2, pool | 3 convs 3 p1, pool
        n = _conv(_conv(n, 11, 4, 2 if name == "alexnet" else 1), 3, 2, 0)
        s0 = _conv(_conv(n, 5, 1, 2), 3, 2, 0)
        return [s0, _conv(s0, 3, 2, 0)]
    if name == "lenet5_bn_d2l":  # conv 5 (no padding), avg-pool 2/2 | conv 5, avg-pool 2/2
        return [_conv(_conv(_conv(_conv(n, 5, 1, 0), 2, 2, 0), 5, 1, 0), 2, 2, 0)]
    # Every other net pads so that a stride-s stage maps an exact multiple n to n / s.
    assert n % 32 == 0
    return [n // s for s in ARCH[name][1]]


def fill_running_stats(model: nn.Module, size: int) -> None:
    """One train-mode forward so BatchNorm buffers differ from their defaults."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model.train()
        with torch.no_grad():
            model(torch.rand(2, 3, size, size))
    model.eval()


def torchvision_reference(name: str):
    """(torchvision network with random init, function computing its trunk by hand)."""
    models = torchvision.models
    if name.startswith("resnet"):
        net = getattr(models, name)(weights=None)

        def trunk(x):
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    elif name == "googlenet":
        # As torchvision builds it for its pretrained weights: aux heads and transform_input.
        net = models.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=True)
        order = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
                 "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d",
                 "inception4e", "maxpool4", "inception5a", "inception5b"]

        def trunk(x):
            x = net._transform_input(x)
            for child in order:
                x = getattr(net, child)(x)
            return x

    else:  # alexnet, vgg*, mobilenet_v2: the trunk is `features`
        net = getattr(models, name)(weights=None)

        def trunk(x):
            return net.features(x)

    return net, trunk


@pytest.fixture(scope="module")
def saved_backbone(tmp_path_factory):
    """name -> (a 3-channel backbone with non-default BatchNorm statistics, its state-dict file);
    built once per module and only ever run in eval mode by the tests."""
    cache = {}

    def get(name):
        if name not in cache:
            source = build(name)
            fill_running_stats(source, small(name))
            path = tmp_path_factory.mktemp(name) / "weights.pth"
            torch.save(source.state_dict(), path)
            cache[name] = (source, path)
        return cache[name]

    return get


# ----------------------------------------------------------------------------------------------
# Registry and construction
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_factory_has_explicit_options(name):
    # Explicit keyword parameters let the registry reject a misspelt option before building.
    params = inspect.signature(registry.get("backbones", name)).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for option in ("pretrained", "strict", "in_channels", "frozen_stages", "norm_eval", "out_indices"):
        assert option in params
    with pytest.raises(ConfigError, match="frozen_stages"):
        build(name, frozen_stage=1)


def test_invalid_options_are_config_errors():
    with pytest.raises(ConfigError, match="frozen_stages"):
        build("resnet18", frozen_stages=5)
    with pytest.raises(ConfigError, match="out_indices"):
        build("resnet18", out_indices=(4,))
    with pytest.raises(ConfigError, match="out_indices"):
        build("resnet18", out_indices=(2, 1))
    with pytest.raises(ConfigError, match="in_channels"):
        build("lenet5", in_channels=0)
    with pytest.raises(ConfigError, match="activation"):
        build("lenet5", activation="gelu")
    with pytest.raises(ConfigError, match="pretrained must be 'imagenet'.*got True"):
        build("lenet5", pretrained=True)
    with pytest.raises(ConfigError, match="depth must be 20 .* or 24"):
        build("darknet_yolov1", depth=22)
    with pytest.raises(ConfigError, match="stem must be one of"):
        build("resnet18_d2l", stem="cifar")


def test_every_builtin_backbone_has_facts():
    assert set(NAMES) == set(ARCH)
    assert set(TORCHVISION_NAMES) <= set(NAMES)


def test_package_import_is_light():
    code = (
        "import sys, detkit.models.backbones as b; "
        "assert not [m for m in sys.modules if m.startswith('torchvision')], 'torchvision imported'; "
        "assert b.Backbone.__name__ == 'Backbone'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_attributes(name, saved_backbone):
    channels, strides, min_size, _, _, (mean, std) = ARCH[name]
    backbone = saved_backbone(name)[0]
    assert isinstance(backbone, nn.Module)
    assert backbone.out_channels == channels[-1] and isinstance(backbone.out_channels, int)
    assert backbone.stride == strides[-1] and isinstance(backbone.stride, int)
    assert backbone.min_input_size == min_size
    assert backbone.pixel_mean == pytest.approx(mean) and len(backbone.pixel_mean) == 3
    assert backbone.pixel_std == pytest.approx(std) and len(backbone.pixel_std) == 3

    size = exact(name)
    side = expected_stage_sizes(name, size)[-1]
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, size, size))
        odd = backbone(torch.rand(1, 3, 70, 100))
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == (1, channels[-1], side, side)
    if name not in VALID_PADDING:  # see alexnet.py: valid padding loses cells
        assert side == size // backbone.stride
    # feature_sizes (shape inference on the meta device) agrees with a real forward.
    assert backbone.feature_sizes(size) == [(side, side)]
    assert backbone.feature_sizes((70, 100)) == [tuple(odd.shape[-2:])]


@pytest.mark.parametrize("name", NAMES)
def test_out_indices_give_declared_levels(name, saved_backbone):
    channels, strides = ARCH[name][:2]
    every = list(range(len(channels)))
    single = saved_backbone(name)[0]
    multi = build(name, out_indices=every).eval()
    multi.load_state_dict(single.state_dict())
    assert multi.out_channels_list == channels and multi.strides == strides
    assert multi.out_channels == channels[-1] and multi.stride == strides[-1]

    size = exact(name)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        maps = multi(x)
        last = single(x)
    sizes = expected_stage_sizes(name, size)
    assert isinstance(maps, list) and len(maps) == len(every)
    for fmap, c, n in zip(maps, channels, sizes):
        assert tuple(fmap.shape) == (1, c, n, n)
    torch.testing.assert_close(maps[-1], last, rtol=0, atol=0)
    assert multi.feature_sizes(size) == [(n, n) for n in sizes]



def test_out_indices_early_stage_and_negative_index():
    first = build("resnet18", out_indices=[0])
    assert first.out_channels_list == [64] and first.strides == [4]
    assert (first.out_channels, first.stride) == (64, 4)
    with torch.no_grad():
        (fmap,) = first.eval()(torch.rand(1, 3, 64, 64))
    assert tuple(fmap.shape) == (1, 64, 16, 16)
    assert build("resnet18", out_indices=[-2, -1]).out_indices == (2, 3)


# ----------------------------------------------------------------------------------------------
# Training behaviour
# ----------------------------------------------------------------------------------------------


def _batchnorms(module: nn.Module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _stats(bns):
    return [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]


@pytest.mark.parametrize("name", NAMES)
def test_frozen_stages_get_no_gradient(name):
    num_stages = len(ARCH[name][0])
    if num_stages > 1:
        backbone = build(name, frozen_stages=1, out_indices=[0, num_stages - 1])
        frozen_paths = backbone.layout.stem.modules + backbone.layout.stages[0].modules
    else:  # one stage after the stem: freeze the stem only
        backbone = build(name, frozen_stages=0, out_indices=[0])
        frozen_paths = backbone.layout.stem.modules
    backbone.train()
    frozen = {id(p) for path in frozen_paths for p in backbone.get_submodule(path).parameters()}
    frozen_bns = [bn for path in frozen_paths for bn in _batchnorms(backbone.get_submodule(path))]
    before = _stats(frozen_bns)

    *first, last = backbone(torch.rand(2, 3, small(name), small(name)))
    # Nothing upstream of stage 0's output is trainable; the last map is.
    assert all(not stage0.requires_grad for stage0 in first)
    assert last.requires_grad
    last.square().mean().backward()

    params = list(backbone.parameters())
    assert 0 < len(frozen) < len(params)
    for p in params:
        if id(p) in frozen:
            assert not p.requires_grad and p.grad is None
        else:
            assert p.requires_grad and p.grad is not None
    assert all(not bn.training for bn in frozen_bns)
    assert all(bn.training for bn in _batchnorms(backbone) if all(bn is not f for f in frozen_bns))
    for (m0, v0), bn in zip(before, frozen_bns):
        assert torch.equal(m0, bn.running_mean) and torch.equal(v0, bn.running_var)


def test_frozen_stem_only():
    backbone = build("resnet18", frozen_stages=0)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1.weight", "bn1.weight", "bn1.bias"}
    assert all(n.startswith("layer") for n in trainable)
    assert not backbone.train().bn1.training and backbone.layer1[0].bn1.training


@pytest.mark.parametrize("name", NAMES)
def test_norm_eval_freezes_batchnorm_statistics(name):
    has_bn = ARCH[name][3]
    backbone = build(name, norm_eval=True).train()
    bns = _batchnorms(backbone)
    if not has_bn:
        assert bns == []  # nothing for norm_eval to do
        return
    assert bns and backbone.training and all(not bn.training for bn in bns)
    before = _stats(bns)
    x = torch.rand(2, 3, small(name), small(name))
    with torch.no_grad():
        backbone(x)
    for (m0, v0), bn in zip(before, bns):
        assert torch.equal(m0, bn.running_mean) and torch.equal(v0, bn.running_var)
    assert all(bn.weight.requires_grad for bn in bns)  # only the statistics are frozen

    # Control: without norm_eval the same forward moves the statistics.
    backbone.norm_eval = False
    backbone.train()
    with torch.no_grad():
        backbone(x)
    assert any(not torch.equal(m0, bn.running_mean) for (m0, _), bn in zip(before, bns))


def test_batchnorm_can_be_swapped_after_build():
    # Stages name their modules instead of holding them, so converting BN layers keeps working.
    backbone = build("resnet18").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = backbone(x)
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(backbone).eval()
        assert isinstance(converted.bn1, nn.SyncBatchNorm)
        torch.testing.assert_close(converted(x), expected)


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_weights_round_trip_through_a_file(name, saved_backbone):
    source, path = saved_backbone(name)
    loaded = build(name, pretrained=str(path)).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(1, 3, small(name), small(name))
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


@pytest.mark.parametrize("name", ["lenet5", "resnet18"])
def test_detkit_checkpoint_backbone_keys_load(name, saved_backbone, tmp_path):
    source, _ = saved_backbone(name)
    checkpoint = {
        "format": "detkit-checkpoint",
        "version": 1,
        "model": {
            **{"backbone." + k: v for k, v in source.state_dict().items()},
            "head.fc.weight": torch.ones(2),
        },
        "class_names": ["a", "b"],
    }
    torch.save(checkpoint, tmp_path / "detector.pth")
    loaded = build(name, pretrained=str(tmp_path / "detector.pth")).eval()
    x = torch.rand(1, 3, small(name), small(name))
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_weights_load_unchanged_from_the_hub_cache_and_from_a_path(name, torch_hub_cache, caplog):
    net, trunk = torchvision_reference(name)
    net.train()
    with torch.no_grad():  # non-default BatchNorm statistics, so buffers are compared too
        trunk(torch.rand(2, 3, small(name), small(name)))
    net.eval()
    # Where torchvision's own `weights=` loading keeps its published file: no network is needed.
    path = torch_hub_cache / os.path.basename(torchvision.models.get_model_weights(name).DEFAULT.url)
    tv_state = net.state_dict()
    for key in [k for k in tv_state if k.startswith(CLASSIFIER_PREFIXES[name])]:
        if tv_state[key].numel() > 1_000_000:
            # VGG's and AlexNet's classifier matrices are 150-400 MB; the loader only looks at the
            # key (and drops it), so a stub of another shape keeps the test fast and checks the same.
            tv_state[key] = torch.zeros(4, 2)
    torch.save(tv_state, path)

    with caplog.at_level(logging.WARNING):
        backbone = build(name, pretrained="imagenet", strict=True).eval()
        from_path = build(name, pretrained=str(path), strict=True).eval()
    path.unlink()  # VGG files are ~0.5 GB
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    classifier = tuple(k for k in tv_state if k.startswith(CLASSIFIER_PREFIXES[name]))
    assert classifier  # the file really had a classifier to drop
    assert set(backbone.state_dict()) == set(tv_state) - set(classifier)
    assert all(torch.equal(from_path.state_dict()[k], v) for k, v in backbone.state_dict().items())

    x = torch.rand(1, 3, EXACT, EXACT)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    ours_mean, ours_std = (
        torch.tensor(v).view(1, 3, 1, 1) for v in (backbone.pixel_mean, backbone.pixel_std)
    )
    with torch.no_grad():
        # torchvision's pretrained models are fed ImageNet-normalised images; detkit normalises
        # with the backbone's own statistics (for GoogLeNet that replaces transform_input).
        expected = trunk((x - mean) / std)
        got = backbone((x - ours_mean) / ours_std)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("name", NAMES)
def test_one_input_channel_sums_pretrained_first_conv(name, saved_backbone):
    first_conv_key = ARCH[name][4]
    rgb, path = saved_backbone(name)
    grey = build(name, in_channels=1, pretrained=str(path)).eval()

    expected_weight = rgb.state_dict()[first_conv_key].sum(dim=1, keepdim=True)
    torch.testing.assert_close(grey.state_dict()[first_conv_key], expected_weight)
    assert grey.in_channels == 1
    assert grey.pixel_mean == pytest.approx((sum(rgb.pixel_mean) / 3,))

    # A grey image through the adapted net == the same image replicated to RGB through the original.
    x = torch.rand(1, 1, small(name), small(name))
    with torch.no_grad():
        got = grey(x)
        expected = rgb(x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        grey(torch.rand(1, 3, small(name), small(name)))


def test_four_input_channels_repeat_and_rescale(saved_backbone):
    rgb, path = saved_backbone("resnet18")
    four = build("resnet18", in_channels=4, pretrained=str(path))
    w = rgb.conv1.weight.detach()
    expected = torch.cat([w, w[:, :1]], dim=1) * (3 / 4)  # timm's adapt_input_conv, by hand
    torch.testing.assert_close(four.conv1.weight.detach(), expected)
    assert four.pixel_mean == pytest.approx(IMAGENET[0] + IMAGENET[0][:1])
    assert build("resnet18", in_channels=4).conv1.weight.shape == (64, 4, 7, 7)


@pytest.mark.parametrize("name", ["resnet18", "lenet5"])
def test_mismatched_weights_are_reported(name, saved_backbone, tmp_path, caplog):
    state = saved_backbone(name)[0].state_dict()
    some_key = next(k for k in state if k.endswith("weight") and state[k].dim() == 4 and k != ARCH[name][4])
    dropped_key = next(k for k in reversed(list(state)) if k.endswith("bias"))

    def save(sd, file):
        torch.save(sd, tmp_path / file)
        return str(tmp_path / file)

    unexpected = save({**state, "extra.weight": torch.zeros(3)}, "unexpected.pth")
    missing = save({k: v for k, v in state.items() if k != dropped_key}, "missing.pth")
    bad_shape = {**state, some_key: torch.zeros(2, *state[some_key].shape[1:])}
    mismatched = save(bad_shape, "shape.pth")

    with pytest.raises(CheckpointError, match="extra.weight") as err:
        build(name, pretrained=unexpected)
    assert "unexpected" in str(err.value) and "unexpected.pth" in str(err.value)
    with pytest.raises(CheckpointError, match="missing") as err:
        build(name, pretrained=missing)
    assert dropped_key in str(err.value)
    with pytest.raises(CheckpointError) as err:
        build(name, pretrained=mismatched)
    shape_file, shape_model = list(bad_shape[some_key].shape), list(state[some_key].shape)
    assert f"{some_key} (file {shape_file} vs model {shape_model})" in str(err.value)

    # strict=False: one warning naming the problem; the rest is loaded, the bad key skipped.
    with caplog.at_level(logging.WARNING):
        lenient = build(name, pretrained=mismatched, strict=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and some_key in warnings[0]
    loaded = lenient.state_dict()
    assert not torch.equal(loaded[some_key], state[some_key])
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k != some_key)
    lenient_extra = build(name, pretrained=unexpected, strict=False)
    assert all(torch.equal(lenient_extra.state_dict()[k], v) for k, v in state.items())


def test_unusable_weight_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nowhere.pth"):
        build("lenet5", pretrained=str(tmp_path / "nowhere.pth"))

    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        build("lenet5", pretrained=str(tmp_path / "garbage.pth"))

    torch.save({"weights": [1, 2]}, tmp_path / "notstate.pth")
    with pytest.raises(CheckpointError, match="notstate.pth.*not a state dict"):
        build("lenet5", pretrained=str(tmp_path / "notstate.pth"))

    torch.save({"format": "detkit-checkpoint", "model": {"head.w": torch.ones(1)}}, tmp_path / "nohead.pth")
    with pytest.raises(CheckpointError, match="no 'backbone.\\*' weights"):
        build("lenet5", pretrained=str(tmp_path / "nohead.pth"))

    # Nothing fits (another network's weights): an error even when not strict.
    torch.save(build("nin").state_dict(), tmp_path / "nin.pth")
    with pytest.raises(CheckpointError, match="none of its"):
        build("lenet5", pretrained=str(tmp_path / "nin.pth"), strict=False)


def test_wrapped_and_ddp_state_dicts_load(saved_backbone, tmp_path):
    state = saved_backbone("lenet5")[0].state_dict()
    torch.save({"model": {"module." + k: v for k, v in state.items()}, "epoch": 3}, tmp_path / "ref.pth")
    loaded = build("lenet5", pretrained=str(tmp_path / "ref.pth"))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_too_small_input_is_a_clear_error(name, saved_backbone):
    min_size = ARCH[name][2]
    backbone = saved_backbone(name)[0]
    too_small = torch.rand(1, 3, min_size - 1, min_size + 7)
    with pytest.raises(ValueError, match=rf"'{name}'.*at least {min_size}x{min_size}"):
        backbone(too_small)
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, min_size, min_size))
        assert out.shape[-2:] == (1, 1)  # the smallest input gives exactly one cell
        if min_size > 1:
            # The minimum is tight: without the check the trunk itself fails one pixel below it.
            try:
                raw = backbone._forward_features(torch.rand(1, 3, min_size - 1, min_size - 1))
            except RuntimeError:
                raw = None
            assert raw is None or raw.numel() == 0


def test_alexnet_on_32_pixels():
    with pytest.raises(ValueError, match="alexnet.*63x63"):
        build("alexnet")(torch.rand(1, 3, 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    backbone = build("resnet18", out_indices=[1, 3]).cuda().eval()
    with torch.no_grad():
        maps = backbone(torch.rand(1, 3, 64, 64, device="cuda"))
    assert all(m.is_cuda for m in maps)
    assert backbone.feature_sizes(64) == [(8, 8), (2, 2)]
