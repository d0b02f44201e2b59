"""ClinicaDL's ResNet3D (3D only), a network of fixed shape.

ClinicaDL facts mirrored here:
* ClinicaDL's ResNet3D builds its designer with *no* argument, so the network always has the shape of
  the default input (1, 169, 208, 179): one input channel and a first Linear layer of
  128 * 4 * 5 * 4 = 10240 features, whatever maps.json says. `input_size`, `output_size` and `dropout`
  are accepted by its constructor but never used: the last layer always has 2 outputs and the dropout
  rate is fixed at 0.8. An input whose feature maps do not flatten to 10240 values fails in `fc`.
* `convolutions` = Sequential of 5 stages, each Sequential(ResBlock, MaxPool3d(3, stride=2)); stage
  b = 1..5 goes from 2**(b+1) channels (1 for the first) to 2**(b+2): 8, 16, 32, 64, 128.
* ResBlock: conv1 (3x3x3, pad 1, no bias), bn1, ELU, conv2 (3x3x3, pad 1, no bias), bn2, plus a
  shortcut Sequential(1x1x1 conv, no bias) applied to the block input, then ELU.
* `fc` = [Flatten, Linear(10240, 256), ELU, Dropout(0.8), Linear(256, 2)] (keys fc.1, fc.4);
  forward(x) = fc(convolutions(x)).
ClinicaDL runs a dummy forward pass at construction; the sizes here are arithmetic: each
MaxPool3d(3, stride 2) maps n to floor((n - 3) / 2) + 1.
maps.json keys read: none (the architecture name alone decides the network).
"""

from __future__ import annotations

from math import prod
from typing import Any, Mapping, Sequence, Tuple

import torch
from torch import nn

from .conv import ClinicaCNN

DEFAULT_INPUT_SIZE = (1, 169, 208, 179)  # the only shape ClinicaDL 1.6.1 ever builds
STAGES = 5


def maxpool_output_size(spatial: Sequence[int], stages: int = STAGES) -> Tuple[int, ...]:
    """Spatial size after `stages` MaxPool3d(kernel 3, stride 2) layers (the convolutions keep sizes)."""
    sizes = tuple(int(s) for s in spatial)
    for _ in range(stages):
        sizes = tuple((s - 3) // 2 + 1 for s in sizes)
    return sizes


def fixed_flattened_size() -> int:
    return 128 * prod(maxpool_output_size(DEFAULT_INPUT_SIZE[1:]))


class ResBlock(nn.Module):
    """One residual stage of ResNet3D; `in_channels` -> `out_channels`, spatial size kept."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.act1 = nn.ELU()
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.shortcut = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=False))
        self.act2 = nn.ELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.act2(out)


def stage_channels(block_number: int, first_in_channels: int) -> Tuple[int, int]:
    """(in, out) channels of stage `block_number` (1..5), as ClinicaDL's 2**(b+1) -> 2**(b+2)."""
    in_channels = first_in_channels if block_number == 1 else 2 ** (block_number + 1)
    return in_channels, 2 ** (block_number + 2)


def staged_convolutions(block: type) -> nn.Sequential:
    """The five stages [block(in, out), MaxPool3d(3, stride 2)] shared by ResNet3D and SqueezeExcitationCNN."""
    return nn.Sequential(*[
        nn.Sequential(block(*stage_channels(b, DEFAULT_INPUT_SIZE[0])), nn.MaxPool3d(3, stride=2))
        for b in range(1, STAGES + 1)
    ])


def resnet3d(params: Mapping[str, Any]) -> ClinicaCNN:
    """Builds ClinicaDL's ResNet3D; `params` (maps.json) is deliberately ignored, as ClinicaDL does."""
    del params
    convolutions = staged_convolutions(ResBlock)
    fc = nn.Sequential(
        nn.Flatten(),
        nn.Linear(fixed_flattened_size(), 256),
        nn.ELU(),
        nn.Dropout(p=0.8),
        nn.Linear(256, 2),
    )
    return ClinicaCNN(convolutions, fc)


BUILDERS = {"ResNet3D": resnet3d}
