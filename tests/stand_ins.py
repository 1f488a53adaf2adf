"""Test-only components shared by several test files (imported as `stand_ins`: pytest puts tests/ on
sys.path). They honour detkit's contracts at sizes that train in seconds."""

from torch import nn


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
