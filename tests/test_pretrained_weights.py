"""``pretrained="imagenet"``: torchvision's published weights through the torch hub cache.

No test reaches the internet: the cache is a temporary ``TORCH_HOME`` (the ``torch_hub_cache``
fixture, which also refuses any download not from 127.0.0.1), filled by the test or by a download from
an HTTP server the test starts on 127.0.0.1 (torchvision's URL pointed at it). That every torchvision
backbone loads its published file unchanged is in ``test_backbones.py``.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import socket
import threading

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights, get_model_weights

from detkit import Predictor, registry
from detkit.checkpoint import save_checkpoint
from detkit.errors import CheckpointError, ConfigError
from detkit.models.builder import build_detector
from detkit.models.backbones.weights import resolve_weights

TORCHVISION_NAMES = ["alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "googlenet", "resnet18",
                     "resnet34", "resnet50", "mobilenet_v2"]
UNPUBLISHED = sorted(
    c.name for c in registry.components("backbones", load=False)
    if c.distribution == "detkit" and c.name not in TORCHVISION_NAMES
)


def build(name: str, **kwargs):
    return registry.build("backbones", dict(type=name, **kwargs))


@pytest.fixture
def local_server(tmp_path):
    """``(folder, base_url)``: files put in ``folder`` are served at ``base_url`` on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resnet18_state() -> dict:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_names_resolve_to_torchvision_weights(name):
    enum = get_model_weights(name)
    assert resolve_weights(name, name, "imagenet") is enum.DEFAULT
    assert resolve_weights(name, name, "DEFAULT") is enum.DEFAULT
    assert resolve_weights(name, name, "IMAGENET1K_V1") is enum.IMAGENET1K_V1
    assert resolve_weights(name, name, f"{enum.__name__}.IMAGENET1K_V1") is enum.IMAGENET1K_V1


def test_default_is_torchvisions_best_weights():
    assert resolve_weights("resnet50", "resnet50", "imagenet").name == "IMAGENET1K_V2"
    assert resolve_weights("mobilenet_v2", "mobilenet_v2", "imagenet").name == "IMAGENET1K_V2"
    assert resolve_weights("resnet50", "resnet50", "IMAGENET1K_V1").name == "IMAGENET1K_V1"


def test_wrong_weights_names_are_config_errors_listing_the_choices():
    with pytest.raises(ConfigError, match=r"'resnet18'.*no 'IMAGENET1K_V2'.*IMAGENET1K_V1, DEFAULT"):
        build("resnet18", pretrained="IMAGENET1K_V2")
    with pytest.raises(ConfigError, match=r"names ResNet50_Weights weights.*takes ResNet18_Weights"):
        build("resnet18", pretrained="ResNet50_Weights.IMAGENET1K_V2")
    # VGG-16's "features" weights expect 0..255 inputs minus a mean: not what the backbone feeds it.
    with pytest.raises(ConfigError, match=r"FEATURES expects inputs normalised.*use one of: IMAGENET1K_V1"):
        build("vgg16", pretrained="IMAGENET1K_FEATURES")


@pytest.mark.parametrize("name", UNPUBLISHED)
def test_nets_without_published_weights_say_so(name, torch_hub_cache):
    assert {"lenet5", "nin", "darknet_yolov1", "alexnet_d2l", "resnet18_d2l"} <= set(UNPUBLISHED)
    with pytest.raises(ConfigError, match=rf"'{name}'.*torchvision publishes none.*pretrained=PATH"):
        build(name, pretrained="imagenet")


def test_a_path_is_still_a_path(tmp_path, torch_hub_cache):
    # Lower-case or dotted strings are files, whatever they are called; a missing one says so.
    with pytest.raises(CheckpointError, match="not found.*imagenet.pth"):
        build("resnet18", pretrained=str(tmp_path / "imagenet.pth"))
    torch.save(resnet18_state(), tmp_path / "DEFAULT.pth")
    loaded = build("resnet18", pretrained=str(tmp_path / "DEFAULT.pth"))
    assert torch.equal(loaded.conv1.weight, resnet18_state()["conv1.weight"])
    assert not any(torch_hub_cache.iterdir())


# ----------------------------------------------------------------------------------------------
# Cache and download
# ----------------------------------------------------------------------------------------------


def test_cached_file_loads_without_network(torch_hub_cache, monkeypatch):
    state = resnet18_state()
    torch.save(state, torch_hub_cache / "resnet18-f37072fd.pth")  # torchvision's file name
    # The URL points at a closed port: a download attempt would fail, so loading used the cache.
    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.value, "url",
                        f"http://127.0.0.1:{closed_port()}/resnet18-f37072fd.pth")
    grey = build("resnet18", pretrained="IMAGENET1K_V1", in_channels=1)
    torch.testing.assert_close(grey.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(grey.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_missing_file_is_downloaded_checked_and_cached(torch_hub_cache, local_server, monkeypatch, caplog):
    folder, base = local_server
    state = resnet18_state()
    torch.save(state, folder / "upload.pth")
    digest = hashlib.sha256((folder / "upload.pth").read_bytes()).hexdigest()
    name = f"resnet18-{digest[:8]}.pth"  # torchvision's naming: the SHA-256 prefix is checked
    (folder / "upload.pth").rename(folder / name)
    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.value, "url", f"{base}/{name}")

    with caplog.at_level(logging.INFO, logger="detkit"):
        backbone = build("resnet18", pretrained="imagenet")
    assert any("downloading" in r.getMessage() and name in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in torch_hub_cache.iterdir()) == [name]
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in state.items() if not k.startswith("fc."))

    (folder / name).unlink()  # the server no longer has it: the second build reads the cache
    again = build("resnet18", pretrained="imagenet")
    assert torch.equal(again.conv1.weight, state["conv1.weight"])


def test_corrupt_download_is_refused_and_leaves_nothing(torch_hub_cache, local_server, monkeypatch):
    folder, base = local_server
    torch.save(resnet18_state(), folder / "resnet18-f37072fd.pth")  # not the file that hash names
    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.value, "url", f"{base}/resnet18-f37072fd.pth")
    with pytest.raises(CheckpointError, match="invalid hash value") as err:
        build("resnet18", pretrained="imagenet")
    assert "\n" not in str(err.value)
    assert list(torch_hub_cache.iterdir()) == []  # no partial or corrupt file left to load next time


def test_offline_without_cache_is_one_clear_line(torch_hub_cache, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/resnet18-f37072fd.pth"
    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.value, "url", url)
    with pytest.raises(CheckpointError) as err:
        build("resnet18", pretrained="imagenet")
    message = str(err.value)
    assert "\n" not in message
    assert "ResNet18_Weights.IMAGENET1K_V1 is not in the torch hub cache" in message
    assert str(torch_hub_cache / "resnet18-f37072fd.pth") in message and url in message
    assert "pretrained=PATH" in message
    assert list(torch_hub_cache.iterdir()) == []



def test_a_trained_detector_loads_for_inference_without_its_backbone_weights(torch_hub_cache, tmp_path,
                                                                             monkeypatch):
    # Trained with pretrained="imagenet"; used where the cache is empty and the network unreachable:
    # the checkpoint holds every weight, so nothing is fetched.
    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.value, "url",
                        f"http://127.0.0.1:{closed_port()}/resnet18-f37072fd.pth")
    model_cfg = dict(type="yolov1", backbone=dict(type="resnet18", pretrained="imagenet"),
                     head=dict(type="yolov1", mode="conv", num_convs=0), loss=dict(type="yolov1_loss"),
                     postprocessor=dict(type="batched_nms"))
    with pytest.raises(CheckpointError, match="not in the torch hub cache"):
        build_detector(model_cfg, ["a", "b"])  # what training does: fetch the weights
    torch.manual_seed(0)
    trained = build_detector(model_cfg, ["a", "b"], pretrained=False)
    assert model_cfg["backbone"]["pretrained"] == "imagenet"  # the caller's config is left alone
    save_checkpoint(tmp_path / "model.pth", {"model": trained.state_dict(), "class_names": ["a", "b"]})
    cfg = {"model": model_cfg,
           "data": {"classes": ["a", "b"], "val": {"type": "voc", "root": "unused", "transforms": {"size": 64}}}}

    predictor = Predictor(cfg, tmp_path / "model.pth", device="cpu")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in predictor.model.state_dict().items())
    assert len(predictor.predict(np.zeros((50, 60, 3), np.uint8))) == 1
    assert list(torch_hub_cache.iterdir()) == []
