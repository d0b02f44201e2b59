"""ClinicaDL's SqueezeExcitationCNN (3D only), a network of fixed shape.

ClinicaDL facts mirrored here:
* Like ResNet3D, ClinicaDL builds its designer with no argument: the network always has the shape of the
  default input (1, 169, 208, 179) (one input channel, first Linear of 128 * 4 * 5 * 4 = 10240
  features), 2 outputs and a dropout of 0.5, whatever maps.json says (`input_size`, `output_size`,
  `dropout` are accepted by its constructor and ignored).
* `convolutions` = Sequential of 5 stages, each Sequential(ResBlock_SE, MaxPool3d(3, stride=2)), channels
  1 -> 8 -> 16 -> 32 -> 64 -> 128.
* ResBlock_SE: conv1 (3x3x3, pad 1, no bias), bn1, ReLU, conv2 (3x3x3, pad 1, no bias), bn2, then a
  squeeze-and-excitation block on that branch, plus a shortcut Sequential(1x1x1 conv, no bias) applied
  to the block input, then ReLU. State_dict order follows ClinicaDL's attribute order: conv1, bn1,
  conv2, bn2, se_block.fc1, se_block.fc2, shortcut.0.
* SE block: global average (AdaptiveAvgPool3d(1)), fc1 Linear(C, C // 8), ReLU, fc2 Linear(C // 8, C),
  sigmoid, and the input multiplied channel-wise by those weights (reduction ratio 8 in every stage).
* `fc` = [Flatten, Dropout(0.5), Linear(10240, 256), ReLU, Linear(256, 2)] (keys fc.2, fc.4);
  forward(x) = fc(convolutions(x)).
maps.json keys read: none (the architecture name alone decides the network).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .conv import ClinicaCNN
from .resnet3d import fixed_flattened_size, staged_convolutions

SE_RATIO = 8


class SEBlock(nn.Module):
    """Squeeze and excitation of a (N, C, D, H, W) tensor (ClinicaDL's SE_Blocks)."""

    def __init__(self, num_channels: int, ratio: int = SE_RATIO):
        super().__init__()
        self.num_channels = num_channels
        self.avg_pooling_3D = nn.AdaptiveAvgPool3d(1)
        reduced = num_channels // ratio
        self.fc1 = nn.Linear(num_channels, reduced)
        self.fc2 = nn.Linear(reduced, num_channels)
        self.act1 = nn.ReLU()
        self.act2 = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.size(0), x.size(1)
        squeezed = self.avg_pooling_3D(x).view(batch, channels)
        weights = self.act2(self.fc2(self.act1(self.fc1(squeezed))))
        return torch.mul(x, weights.view(batch, channels, 1, 1, 1))


class ResBlockSE(nn.Module):
    """One residual stage of SqueezeExcitationCNN (ClinicaDL's ResBlock_SE)."""

    def __init__(self, in_channels: int, out_channels: int, ratio: int = SE_RATIO):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.se_block = SEBlock(out_channels, ratio)
        self.shortcut = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=False))
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.se_block(self.bn2(self.conv2(out)))
        out += self.shortcut(x)
        return self.act2(out)


def squeeze_excitation_cnn(params: Mapping[str, Any]) -> ClinicaCNN:
    """Builds ClinicaDL's SqueezeExcitationCNN; `params` (maps.json) is deliberately ignored."""
    del params
    convolutions = staged_convolutions(ResBlockSE)
    fc = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(p=0.5),
        nn.Linear(fixed_flattened_size(), 256),
        nn.ReLU(),
        nn.Linear(256, 2),
    )
    return ClinicaCNN(convolutions, fc)


BUILDERS = {"SqueezeExcitationCNN": squeeze_excitation_cnn}
