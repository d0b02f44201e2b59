"""ClinicaDL's `resnet18` (2D only), rebuilt without torchvision and without any pretrained download.

ClinicaDL facts mirrored here:
* ClinicaDL builds a torchvision-style ResNet-18 (BasicBlock, [2, 2, 2, 2]) whose first convolution
  always takes 3 channels (7x7, stride 2, padding 3, no bias), loads ImageNet weights into it (those are
  replaced by the MAPS checkpoint anyway), and keeps its parts as
  `convolutions` = Sequential(conv1, bn1, ReLU(inplace), MaxPool2d(3, 2, 1), layer1, layer2, layer3,
  layer4, AvgPool2d) -- 9 modules, layers 4-7 being Sequentials of two residual blocks each;
* the average pooling kernel is the whole spatial size left after layer4 (ClinicaDL measures it with a
  dummy forward pass; here by arithmetic: every one of the five stride-2 stages maps n to
  floor((n - 1) / 2) + 1), with stride 1, so its output is 1x1;
* `fc` = Sequential("0": Flatten, "1": Linear(512, 1000), "drop_out": Dropout(dropout),
  "fc_out": Linear(1000, output_size)); forward(x) = fc(convolutions(x)).
* `input_size[0]` is never used as a channel count: ClinicaDL's own dummy forward fails unless it is 3,
  so any other value is refused here.
maps.json keys read: input_size, output_size, dropout.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from . import _params
from .conv import ClinicaCNN

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of the first block), 2 blocks each


class BasicBlock(nn.Module):
    """torchvision's BasicBlock layout: conv1 (3x3, stride), bn1, relu (in place), conv2 (3x3), bn2,
    optional downsample (1x1 conv with stride + batch norm) on the identity path, sum, relu."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        downsample: Optional[nn.Module] = None
        if stride != 1 or in_channels != channels:
            downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(channels))
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


def _halve(n: int) -> int:
    return (n - 1) // 2 + 1


def pooled_size(input_size: Sequence[int]) -> Tuple[int, int]:
    """Spatial size reaching the average pooling: conv1, max pooling, layer2, layer3, layer4 each map
    n to floor((n - 1) / 2) + 1."""
    h, w = int(input_size[1]), int(input_size[2])
    for _ in range(5):
        h, w = _halve(h), _halve(w)
    return h, w


def resnet18(params: Mapping[str, Any]) -> ClinicaCNN:
    """Builds ClinicaDL's resnet18 from the maps.json dictionary (random weights, never downloaded)."""
    size = _params.input_size(params, dims=(2,))
    if size[0] != 3:
        raise ValueError(f"resnet18 takes 3-channel 2D images (ClinicaDL's first convolution has 3 input "
                         f"channels and cannot be built for input_size {list(size)})")
    stages: list[nn.Module] = []
    in_channels = 64
    for channels, stride in STAGES:
        stages.append(nn.Sequential(BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels)))
        in_channels = channels
    convolutions = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        *stages,
        nn.AvgPool2d(pooled_size(size), stride=1),
    )
    fc = nn.Sequential(OrderedDict([
        ("0", nn.Flatten()),
        ("1", nn.Linear(512, 1000)),
        ("drop_out", nn.Dropout(p=_params.dropout(params))),
        ("fc_out", nn.Linear(1000, _params.output_size(params))),
    ]))
    return ClinicaCNN(convolutions, fc)


BUILDERS = {"resnet18": resnet18}
