"""Occlusion's view of a network: its leading local layers as *stages* the C++ engine can run on a crop.

An occluded patch changes only the activations whose receptive field meets it. csrc/methods/occlusion.cpp
recomputes those through the first stages from a crop of the image, pastes them into the intact image's
activation, and runs the rest of the network on the pasted copies: the same outputs as the whole network on
the occluded image, at a fraction of the first layers' cost (where most of a 3D CNN's cost lies).

A stage is one layer whose output voxel depends on a fixed window of its input: a convolution, a max or
average pool, ClinicaDL's PadMaxPool, or a pointwise layer (BatchNorm with running statistics, activations,
dropout). The engine pads a crop only where the crop meets the image's border, with the stage's `padding(size)`
(the padding the layer gives a whole input of that size, which for PadMaxPool depends on the size) and `fill`
value, so every voxel of a crop's output is a voxel of the whole input's output. A stage's forward(x, padding)
pads x by `padding` on both sides of each axis itself (no padded copy of whole inputs); what is left (one side
only, or the padding of a stage that is not `native`) is padded before. The first layer that is not a stage (a
residual block, InstanceNorm, ...) ends them: the remaining layers and `fc` make `rest`. forward() runs the
stages on whole inputs, then `rest`: the network's function.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .conv import ClinicaCNN, PadMaxPool2d, PadMaxPool3d

POINTWISE = (nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.PReLU, nn.SELU, nn.GELU, nn.SiLU,
             nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.Identity)


def _pad_order(padding: List[int]) -> List[int]:
    """Per-axis [begin, end] pairs in axis order -> F.pad's order (last axis first)."""
    out: List[int] = []
    for axis in range(len(padding) // 2 - 1, -1, -1):
        out.append(padding[2 * axis])
        out.append(padding[2 * axis + 1])
    return out


class Stage(nn.Module):
    """A local layer: `kernel` (its window, dilation included) and `stride` per spatial axis, the `fill` value
    of its padding; for the engine's estimate of what each choice of stages on crops costs, `macs` (its
    multiply-adds per output voxel, every channel) and `channels` (in, out), both set by staged_network."""

    def __init__(self, dims: int, kernel: List[int], stride: List[int], padding: List[int], fill: float,
                 macs: float, native: bool = True):
        super().__init__()
        self.native = native  # forward() pads by `fill` itself
        self.dims = dims
        self.kernel: List[int] = kernel
        self.stride: List[int] = stride
        self.fixed_padding: List[int] = padding  # [begin, end] per axis
        self.fill = fill
        self.macs = macs  # per output voxel and channel until staged_network knows the channels
        self.channels: List[int] = [0, 0]

    @torch.jit.export
    def padding(self, size: List[int]) -> List[int]:
        """[begin, end] per spatial axis that the layer gives a whole input of spatial `size`."""
        return self.fixed_padding


class Pointwise(Stage):
    def __init__(self, module: nn.Module, dims: int):
        super().__init__(dims, [1] * dims, [1] * dims, [0] * (2 * dims), 0.0, 1.0)
        self.module = module

    def forward(self, x: torch.Tensor, padding: List[int]) -> torch.Tensor:
        return self.module(x)  # its padding is always 0


class Convolution(Stage):
    def __init__(self, conv: nn.Module, dims: int):
        kernel = [(k - 1) * d + 1 for k, d in zip(conv.kernel_size, conv.dilation)]
        padding = [p for p in conv.padding for _ in range(2)]
        macs = conv.in_channels // conv.groups * float(torch.tensor(conv.kernel_size).prod())
        super().__init__(dims, kernel, list(conv.stride), padding, 0.0, macs)
        self.weight = conv.weight
        self.bias = conv.bias
        self.dilation: List[int] = list(conv.dilation)
        self.groups = int(conv.groups)

    def forward(self, x: torch.Tensor, padding: List[int]) -> torch.Tensor:
        if self.dims == 3:
            return F.conv3d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class Pool(Stage):
    """nn.MaxPool (its implicit padding is -inf) or nn.AvgPool (zeros, counted in the mean)."""

    def __init__(self, pool: nn.Module, dims: int, average: bool):
        def axes(value) -> List[int]:
            return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * dims

        size, stride = axes(pool.kernel_size), axes(pool.stride or pool.kernel_size)
        dilation = [1] * dims if average else axes(pool.dilation)
        kernel = [(k - 1) * d + 1 for k, d in zip(size, dilation)]
        padding = [p for p in axes(pool.padding) for _ in range(2)]
        fill = 0.0 if average else float("-inf")
        super().__init__(dims, kernel, stride, padding, fill, float(torch.tensor(size).prod()))
        self.size: List[int] = size
        self.dilation: List[int] = dilation
        self.average = average

    def forward(self, x: torch.Tensor, padding: List[int]) -> torch.Tensor:
        if self.average:
            if self.dims == 3:
                return F.avg_pool3d(x, self.size, self.stride, padding)
            return F.avg_pool2d(x, self.size, self.stride, padding)
        if self.dims == 3:
            return F.max_pool3d(x, self.size, self.stride, padding, self.dilation)
        return F.max_pool2d(x, self.size, self.stride, padding, self.dilation)


class PadMaxPool(Stage):
    """ClinicaDL's PadMaxPool: one zero at the beginning of each odd-sized axis, then a 2-wide, stride-2 max."""

    def __init__(self, dims: int):
        super().__init__(dims, [2] * dims, [2] * dims, [0] * (2 * dims), 0.0, float(2 ** dims), native=False)

    @torch.jit.export
    def padding(self, size: List[int]) -> List[int]:
        out: List[int] = []
        for n in size:
            out.append(n % 2)
            out.append(0)
        return out

    def forward(self, x: torch.Tensor, padding: List[int]) -> torch.Tensor:
        if self.dims == 3:
            return F.max_pool3d(x, 2, 2)
        return F.max_pool2d(x, 2, 2)


def as_stage(layer: nn.Module, dims: int) -> Optional[Stage]:
    """`layer` as a stage, or None when its output voxels do not depend on a fixed window of its input alone."""
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)
    if isinstance(layer, conv):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return None
        return Convolution(layer, dims)
    if isinstance(layer, (PadMaxPool3d if dims == 3 else PadMaxPool2d)):
        return PadMaxPool(dims)
    if isinstance(layer, (nn.MaxPool3d if dims == 3 else nn.MaxPool2d)):
        return None if layer.ceil_mode or layer.return_indices else Pool(layer, dims, average=False)
    if isinstance(layer, (nn.AvgPool3d if dims == 3 else nn.AvgPool2d)):
        plain = not layer.ceil_mode and layer.divisor_override is None
        return Pool(layer, dims, average=True) if plain and (layer.count_include_pad or not layer.padding) else None
    if isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm3d)) and not layer.track_running_stats:
        return None  # batch statistics: every voxel depends on the whole input
    if isinstance(layer, POINTWISE):
        return Pointwise(layer, dims)
    return None


def _leaves(module: nn.Module) -> List[nn.Module]:
    if type(module) is nn.Sequential:
        return [leaf for child in module.children() for leaf in _leaves(child)]
    return [module]


class StagedNetwork(nn.Module):
    def __init__(self, stages: List[Stage], rest: nn.Module):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.rest = rest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            padding = stage.padding(list(x.shape[2:]))
            native = [min(padding[2 * d], padding[2 * d + 1]) if stage.native else 0 for d in range(len(padding) // 2)]
            left = [padding[i] - native[i // 2] for i in range(len(padding))]
            x = stage(F.pad(x, _pad_order(left), value=stage.fill) if max(left) > 0 else x, native)
        return self.rest(x)


def staged_network(model: nn.Module) -> Optional[StagedNetwork]:
    """`model` (a ClinicaCNN in eval mode) with the leading stages of its `convolutions` split out (sharing its
    weights; the model itself is not modified), or None when it has none that costs anything (no convolution or
    pool), or when it is not a ClinicaCNN (its forward is not fc(convolutions(x)))."""
    if not isinstance(model, ClinicaCNN) or isinstance(model, torch.jit.ScriptModule):
        return None
    leaves = _leaves(model.convolutions)
    first = next((m for m in leaves if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
    if first is None:
        return None
    dims = 3 if isinstance(first, nn.Conv3d) else 2
    stages: List[Stage] = []
    channels = first.in_channels
    for leaf in leaves:
        stage = as_stage(leaf, dims)
        if stage is None:
            break
        out_channels = leaf.out_channels if isinstance(stage, Convolution) else channels
        stage.channels = [channels, out_channels]
        stage.macs *= out_channels
        channels = out_channels
        stages.append(stage)
    if all(isinstance(stage, Pointwise) for stage in stages):
        return None
    return StagedNetwork(stages, nn.Sequential(*leaves[len(stages):], model.fc)).train(model.training)
