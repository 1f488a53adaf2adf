"""Test-only components shared by several test files (imported as `stand_ins`: pytest puts tests/ on
sys.path). They honour detkit's contracts at sizes that train in seconds."""

import pytest
import torch
from torch import nn

from detkit.errors import DataError


class TinyBackbone(nn.Module):
    """Three stride-2 convs: the backbone contract at a size that trains in seconds."""

    pixel_mean = (0.485, 0.456, 0.406)
    pixel_std = (0.229, 0.224, 0.225)
    stride = 8
    min_input_size = 8

    def __init__(self, out_channels: int = 32):
        super().__init__()
        self.out_channels = out_channels
        layers, channels = [], 3
        for width in (16, 32, out_channels):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


def target(boxes, labels, **extra) -> dict:
    """A training target in detkit's contract from plain lists."""
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), **extra}


def assert_rejects_bad_inputs(model) -> None:
    """The input checks every detector shares (detkit.models.detectors.base.DetectorBase), each a clear
    error: ``model`` has 2 classes and a backbone whose minimum input is 8 px (``TinyBackbone``)."""
    good = torch.rand(1, 3, 64, 64)
    box = target([[0, 0, 5, 5]], [0])
    with pytest.raises(ValueError, match="needs targets"):
        model.train()(good)
    with pytest.raises(ValueError, match="float in 0..1"):
        model((good * 255).to(torch.uint8), [box])
    with pytest.raises(ValueError, match="scaled to 0..1"):
        model(good * 255, [box])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.rand(3, 64, 64), [box])
    with pytest.raises(ValueError, match="smaller than the backbone's minimum 8"):
        model(torch.rand(1, 3, 4, 64), [box])
    with pytest.raises(ValueError, match="1 images but 2 targets"):
        model(good, [box] * 2)
    bad_label = target([[0, 0, 5, 5]], [7], meta={"file_name": "img_0042.jpg"})
    with pytest.raises(DataError, match=r"targets\[0\]\['labels'\] must lie in 0\.\.1.*img_0042\.jpg"):
        model(good, [bad_label])
    with pytest.raises(DataError, match="x2 < x1"):
        model(good, [target([[10, 0, 5, 5]], [0])])


def require_component(group: str, name: str, distribution: str | None = None) -> None:
    """Fail when ``name`` is missing from the registry although what provides it is installed
    (detkit itself, or the plugin ``distribution``): a broken registry must fail tests, not turn
    them into skips. Skips only when the plugin ``distribution`` is not installed at all."""
    import importlib.metadata

    from detkit import registry

    if distribution is not None:
        try:
            importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"plugin {distribution} is not installed")
    names = registry.available(group)
    assert name in names, (f"{group} '{name}' is not in the registry although {distribution or 'detkit'} "
                           f"is installed; the registry has: {', '.join(names)}")
