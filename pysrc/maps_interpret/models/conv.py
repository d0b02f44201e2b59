"""ClinicaDL's Conv5_FC3 and Conv4_FC3, rebuilt with the same layer order and state_dict keys
(`convolutions.<i>.*`, `fc.<i>.*`), 2D or 3D from the length of `input_size`.

Both share the same convolutional part: five blocks [conv k3 pad1, batch norm, ReLU, PadMaxPool(2, 2)]
with 8, 16, 32, 64, 128 channels, a flat Sequential of 20 modules; they differ in the classifier only.
The first Linear layer is sized by arithmetic (ClinicaDL runs a dummy forward pass for it).
"""

from __future__ import annotations

from math import prod
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = (8, 16, 32, 64, 128)


class PadMaxPool3d(nn.Module):
    """Max-pool 2x2x2 after zero-padding the *beginning* of every odd-sized axis, so out = ceil(in / 2).
    Inputs are post-ReLU (>= 0), so the zero padding never wins against a real value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: List[int] = [x.size(4) % 2, 0, x.size(3) % 2, 0, x.size(2) % 2, 0]
        if pads[0] + pads[2] + pads[4] > 0:
            x = F.pad(x, pads)
        return F.max_pool3d(x, 2, 2)


class PadMaxPool2d(nn.Module):
    """2D twin of PadMaxPool3d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: List[int] = [x.size(3) % 2, 0, x.size(2) % 2, 0]
        if pads[0] + pads[2] > 0:
            x = F.pad(x, pads)
        return F.max_pool2d(x, 2, 2)


class ClinicaCNN(nn.Module):
    """ClinicaDL's CNN shape: `convolutions` then `fc`, both nn.Sequential."""

    def __init__(self, convolutions: nn.Sequential, fc: nn.Sequential):
        super().__init__()
        self.convolutions = convolutions
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convolutions(x))


def _layers(input_size: Sequence[int]):
    if len(input_size) == 4:
        return nn.Conv3d, nn.BatchNorm3d, PadMaxPool3d
    if len(input_size) == 3:
        return nn.Conv2d, nn.BatchNorm2d, PadMaxPool2d
    raise ValueError(f"input_size must be (C, D, H, W) or (C, H, W), got {list(input_size)}")


def conv5_blocks(input_size: Sequence[int]) -> nn.Sequential:
    conv, norm, pool = _layers(input_size)
    layers: list[nn.Module] = []
    previous = int(input_size[0])
    for channels in CHANNELS:
        layers += [conv(previous, channels, 3, padding=1), norm(channels), nn.ReLU(), pool()]
        previous = channels
    return nn.Sequential(*layers)


def flattened_size(input_size: Sequence[int]) -> int:
    """Features after the five pools: each halves every spatial axis, rounding up."""
    spatial = [int(s) for s in input_size[1:]]
    for _ in CHANNELS:
        spatial = [(s + 1) // 2 for s in spatial]
    return CHANNELS[-1] * prod(spatial)


def _classifier(n_in: int, hidden: Sequence[int], output_size: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(p=dropout)]
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        n_in = width
    layers.append(nn.Linear(n_in, output_size))
    return nn.Sequential(*layers)


def conv5_fc3(input_size: Sequence[int], output_size: int = 2, dropout: float = 0.5) -> ClinicaCNN:
    return ClinicaCNN(conv5_blocks(input_size),
                      _classifier(flattened_size(input_size), (1300, 50), output_size, dropout))


def conv4_fc3(input_size: Sequence[int], output_size: int = 2, dropout: float = 0.5) -> ClinicaCNN:
    # Despite its name, ClinicaDL's Conv4_FC3 has five convolution blocks too.
    return ClinicaCNN(conv5_blocks(input_size),
                      _classifier(flattened_size(input_size), (50, 40), output_size, dropout))
