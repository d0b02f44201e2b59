"""`--deterministic` on CUDA: the same maps run after run. The engine asks torch for its deterministic kernels
(csrc/engine.cpp, CudaPolicy) and sums the copies of smoothgrad and integrated gradients without atomic
additions (csrc/methods/copies.cpp); what torch has no deterministic backward for is rewritten here: a global
average pool (SE blocks' AdaptiveAvgPool3d(1)), whose CUDA backward adds with atomics, becomes a mean over the
spatial axes (the same function; its rounding may differ in the last bits, so only --deterministic uses it)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class GlobalMean(nn.Module):
    """AdaptiveAvgPool(1) as a mean over the spatial axes: an expand in the backward, no atomic additions."""

    def __init__(self, dims: int):
        super().__init__()
        self.axes = list(range(2, 2 + dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.axes, keepdim=True)


def _global_pool_dims(module: nn.Module) -> int:
    """2 or 3 for an adaptive average pool to one voxel, else 0."""
    for kind, dims in ((nn.AdaptiveAvgPool3d, 3), (nn.AdaptiveAvgPool2d, 2)):
        if isinstance(module, kind):
            size = module.output_size
            sizes = size if isinstance(size, (tuple, list)) else (size,) * dims
            return dims if all(s == 1 for s in sizes) else 0
    return 0


def deterministic_twin(model: nn.Module) -> nn.Module:
    """`model` with every global average pool made a GlobalMean (a copy when there is one; else `model`)."""
    if not any(_global_pool_dims(m) for m in model.modules()):
        return model
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        for child_name, child in list(module.named_children()):
            dims = _global_pool_dims(child)
            if dims:
                setattr(module, child_name, GlobalMean(dims))
    return twin
