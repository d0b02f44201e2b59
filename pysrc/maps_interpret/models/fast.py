"""Rewrites of a network that change its cost, not its function, for input gradients in eval mode.

ClinicaDL's convolution blocks are [Conv, BatchNorm, ReLU, PadMaxPool]. They compute the same function, and
the same input gradient, as [Conv, BatchNorm, max-pool with implicit padding, ReLU]:
- ReLU and max-pool commute (ReLU is monotonic), so ReLU runs on the pooled tensor, 8 times smaller in 3D.
  Where every value of a window is <= 0 both orders give 0 and a zero gradient.
- ClinicaDL pads odd axes with one zero at the beginning before pooling: with ReLU after the pool this is
  max-pooling with padding 1 on those axes (the padded cell at the end is never used by a 2-wide, stride-2
  window), so no padded copy of the activation is made.
- The convolutions' input gradients, computed by oneDNN's contiguous kernels, took half of the pass on the
  CPU; `maps_interpret::frozen_conv` keeps torch's forward values and computes the input gradient on
  channels-last copies (6x faster for the first layer).
- BatchNorm with running statistics is a per-channel affine map, so its input gradient is the output
  gradient times alpha = weight / sqrt(var + eps). `maps_interpret::frozen_batch_norm` (a C++ op of the
  core, csrc/ops/) returns torch's own batch-norm values (bit-identical) with that one-multiplication
  backward: torch's channels-last batch-norm backward was the slowest kernel of the whole pass on the CPU.
The forward pass is bit-identical to the plain computation, so every ReLU and max-pool decision is the
same; gradients differ by float rounding only. Rejected after measurement, because changing the forward
rounding flips ReLU/max-pool decisions (up to 11% of a map's maximum on 2 of 6 images of ClinicaDL's
fixture; 3% on random full-size models, as much as batch size 1 instead of 2 changes ClinicaDL's own
maps): folding BatchNorm into the convolution, recomputing BatchNorm as x * alpha + beta, and running the
forward pass on channels-last inputs.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import core  # noqa: F401  loading the core registers torch.ops.maps_interpret.*
from .conv import ClinicaCNN, PadMaxPool2d, PadMaxPool3d


class FrozenBatchNorm(nn.Module):
    """Eval-mode BatchNorm: torch's forward values, a one-multiplication backward."""

    def __init__(self, norm: nn.Module, dims: int):
        super().__init__()
        self.eps = float(norm.eps)
        self.weight = norm.weight
        self.bias = norm.bias
        self.register_buffer("running_mean", norm.running_mean)
        self.register_buffer("running_var", norm.running_var)
        with torch.no_grad():
            alpha = 1 / torch.sqrt(norm.running_var.float() + norm.eps)
            if norm.weight is not None:
                alpha = alpha * norm.weight.float()
        self.register_buffer("alpha", alpha.reshape([-1] + [1] * dims).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.maps_interpret.frozen_batch_norm(x, self.weight, self.bias, self.running_mean,
                                                          self.running_var, self.eps, self.alpha)


class FrozenConv(nn.Module):
    """A convolution with frozen weights: torch's forward values; on the CPU its input gradient runs on
    channels-last copies (csrc/ops/frozen_conv.cpp)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FrozenConv supports numeric zero padding only")
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride: List[int] = list(conv.stride)
        self.padding: List[int] = list(conv.padding)
        self.dilation: List[int] = list(conv.dilation)
        self.groups = int(conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.maps_interpret.frozen_conv(x, self.weight, self.bias, self.stride, self.padding,
                                                    self.dilation, self.groups)


class ConvPoolBlock(nn.Module):
    """Conv (FrozenConv) -> BatchNorm (FrozenBatchNorm) -> max-pool 2 with padding 1 on odd axes -> ReLU."""

    def __init__(self, conv: nn.Module, norm: nn.Module, dims: int):
        super().__init__()
        self.conv = FrozenConv(conv)
        self.norm = FrozenBatchNorm(norm, dims)
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        padding: List[int] = [y.size(2 + i) % 2 for i in range(self.dims)]
        if self.dims == 3:
            y = F.max_pool3d(y, 2, 2, padding)
        else:
            y = F.max_pool2d(y, 2, 2, padding)
        return F.relu_(y)


PATTERNS = ((nn.Conv3d, nn.BatchNorm3d, nn.ReLU, PadMaxPool3d, 3), (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, PadMaxPool2d, 2))


def fuse_blocks(model: nn.Module) -> nn.Module:
    """`model` (eval mode) with every [Conv, BatchNorm, ReLU, PadMaxPool] run of its `convolutions` replaced
    by a ConvPoolBlock (sharing the convolution); the model itself is not modified."""
    if not isinstance(model, ClinicaCNN):
        return model
    layers = list(model.convolutions.children())
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        window = layers[i:i + 4]
        match = next((p for p in PATTERNS if len(window) == 4 and all(isinstance(m, t) for m, t in zip(window, p[:4]))),
                     None)
        if match is not None and window[1].track_running_stats:
            out.append(ConvPoolBlock(window[0], window[1], match[4]))
            i += 4
        else:
            out.append(layers[i])
            i += 1
    return ClinicaCNN(nn.Sequential(*out), model.fc).train(model.training)
