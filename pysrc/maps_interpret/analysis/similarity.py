"""How alike two maps are: Pearson and Spearman correlation, and the Dice overlap of their top-k% voxels.
Used by `maps-interpret-compare` (agreement between models) and `--sanity_check` (a map against the map of
a randomised model). Every function takes two tensors of the same shape and computes in float64 on their
device; maps are compared voxel by voxel, flattened."""

from __future__ import annotations

import math

import torch


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes cannot be compared: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() < 2:
        raise ValueError("a map needs at least 2 voxels to be compared")
    return a.detach().reshape(-1).double(), b.detach().reshape(-1).to(a.device).double()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson's r; NaN when either map is constant (its correlation is undefined)."""
    x, y = _pair(a, b)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x.square().sum()) * float(y.square().sum()))
    return float((x * y).sum()) / denominator if denominator > 0 else math.nan


def ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a flat tensor, ties given the mean of the ranks they span (as scipy's rankdata):
    gradient maps often hold many equal values (zeros outside the brain, a ReLU's dead zones)."""
    order = torch.argsort(x, stable=True)
    sorted_ = x[order]
    new_value = torch.ones_like(sorted_, dtype=torch.bool)
    new_value[1:] = sorted_[1:] != sorted_[:-1]
    run = torch.cumsum(new_value, 0) - 1  # which run of equal values each sorted position is in
    starts = torch.nonzero(new_value).reshape(-1)
    ends = torch.cat((starts[1:], torch.tensor([x.numel()], device=x.device)))
    mean_rank = (starts + ends + 1).double() / 2  # mean of the 1-based positions start+1 .. end
    out = torch.empty_like(x, dtype=torch.float64)
    out[order] = mean_rank[run]
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties averaged); NaN when either map is constant."""
    x, y = _pair(a, b)
    return pearson(ranks(x), ranks(y))


def top_mask(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """The ceil(fraction * n) voxels of largest |x| (ties broken by position, first kept) that are not 0, as a
    flat bool mask: a sparse map (a Grad-CAM map the ReLU zeroed in most places) has fewer top voxels, rather
    than zeros picked by their position, which two unrelated sparse maps would share."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the top fraction must be in (0, 1], got {fraction}")
    flat = x.detach().reshape(-1).double().abs()
    k = max(1, math.ceil(fraction * flat.numel()))
    order = torch.argsort(-flat, stable=True)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[order[:k]] = True
    return mask & (flat > 0)


def mask_dice(x: torch.Tensor, y: torch.Tensor) -> float:
    """Dice overlap of two flat bool masks; NaN when both are empty (two maps of zeros)."""
    total = float(x.sum() + y.sum())
    return 2 * float((x & y).sum()) / total if total else math.nan


def top_dice(a: torch.Tensor, b: torch.Tensor, fraction: float) -> float:
    """Dice overlap (2|A∩B| / (|A|+|B|)) of the top `fraction` of each map's voxels by magnitude (`top_mask`):
    1 when both maps point at the same voxels, whatever their values; NaN when both maps are 0 everywhere."""
    _pair(a, b)
    return mask_dice(top_mask(a, fraction), top_mask(b, fraction))
