"""ClinicaDL's Stride_Conv5_FC3 (2D or 3D from the length of `input_size`).

ClinicaDL facts mirrored here:
* `convolutions` is one flat Sequential of 15 modules: five blocks [conv k3 stride 2 pad 1 (with bias),
  batch norm, ReLU], 8, 16, 32, 64, 128 channels; no pooling layer at all.
* `fc` is [Flatten, Dropout(dropout), Linear(n, 1300), ReLU, Linear(1300, 50), ReLU,
  Linear(50, output_size)] (keys fc.2, fc.4, fc.6), the same head as Conv5_FC3.
* forward(x) = fc(convolutions(x)) (ClinicaDL's CNN.forward).
ClinicaDL sizes the first Linear layer with a dummy forward pass; here it is arithmetic: a stride-2,
padding-1, kernel-3 convolution maps n voxels to floor((n - 1) / 2) + 1 = ceil(n / 2).
maps.json keys read: input_size, output_size, dropout.
"""

from __future__ import annotations

from math import prod
from typing import Any, Mapping, Sequence

from torch import nn

from . import _params
from .conv import CHANNELS, ClinicaCNN


def stride_flattened_size(input_size: Sequence[int]) -> int:
    spatial = [int(s) for s in input_size[1:]]
    for _ in CHANNELS:
        spatial = [(s - 1) // 2 + 1 for s in spatial]
    return CHANNELS[-1] * prod(spatial)


def stride_conv5_fc3(params: Mapping[str, Any]) -> ClinicaCNN:
    """Builds Stride_Conv5_FC3 from the maps.json dictionary."""
    size = _params.input_size(params)
    conv, norm = (nn.Conv3d, nn.BatchNorm3d) if len(size) == 4 else (nn.Conv2d, nn.BatchNorm2d)
    layers: list[nn.Module] = []
    previous = size[0]
    for channels in CHANNELS:
        layers += [conv(previous, channels, 3, padding=1, stride=2), norm(channels), nn.ReLU()]
        previous = channels
    fc = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(p=_params.dropout(params)),
        nn.Linear(stride_flattened_size(size), 1300),
        nn.ReLU(),
        nn.Linear(1300, 50),
        nn.ReLU(),
        nn.Linear(50, _params.output_size(params)),
    )
    return ClinicaCNN(nn.Sequential(*layers), fc)


BUILDERS = {"Stride_Conv5_FC3": stride_conv5_fc3}
