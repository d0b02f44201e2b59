"""Does a map point where the disease is? Four measures of a map against a binary mask of the same grid (a
region the truth says matters: the planted atrophy of the demo's cohort, a CAPS ROI mask, any NIfTI mask):

- `relevance_mass`: the share of the map's relevance that lies inside the mask (Arras et al., "CLEVR-XAI",
  Information Fusion 2022: relevance mass accuracy); the mask's volume fraction for a constant map.
- `rank_accuracy`: of the K voxels of highest relevance, K the mask's size, the share inside the mask (Arras et
  al.'s relevance rank accuracy); ties at the K-th value shared out as a random tie-break would on average.
- `auroc`: the probability that a voxel inside the mask has more relevance than one outside (ties count one
  half): the area under the ROC curve of the map as a detector of the mask (Mann-Whitney U / (n_in n_out)).
- `pointing_game`: whether the voxel of highest relevance lies in the mask (Zhang et al., ECCV 2016); with tied
  maxima, the share of them inside (a random pick's chance of a hit).

Relevance is |map| by default (a voxel matters whichever way it pushes the output) or the positive part
(`relevance="positive"`: evidence for the target only). Every measure is NaN where it is undefined: an empty or
full mask, a map of zeros for the mass. Each returns a Python float; the maps stay on their device.
"""

from __future__ import annotations

import math

import torch

from .similarity import ranks

RELEVANCE = ("abs", "positive")


def relevance(map_: torch.Tensor, kind: str = "abs") -> torch.Tensor:
    """A map's relevance per voxel, flat, float64: |map| or max(map, 0); the channels of a voxel summed (an rgb
    slice's three copies of one voxel are one voxel)."""
    if kind not in RELEVANCE:
        raise ValueError(f"relevance must be one of {', '.join(RELEVANCE)}, got {kind!r}")
    values = map_.detach().double()
    values = values.abs() if kind == "abs" else values.clamp(min=0)
    return values.sum(0).reshape(-1) if values.dim() == 4 else values.reshape(-1)


def _pair(map_: torch.Tensor, mask: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    values = relevance(map_, kind)
    inside = mask.detach().reshape(-1).to(values.device) > 0
    if inside.numel() != values.numel():
        spatial = tuple(map_.shape[1:]) if map_.dim() == 4 else tuple(map_.shape)
        raise ValueError(f"a mask of shape {tuple(mask.shape)} does not fit a map of {spatial} voxels: resample the "
                         "mask onto the map's grid")
    return values, inside


def relevance_mass(map_: torch.Tensor, mask: torch.Tensor, relevance_kind: str = "abs") -> float:
    values, inside = _pair(map_, mask, relevance_kind)
    total = float(values.sum())
    return float(values[inside].sum()) / total if total > 0 else math.nan


def rank_accuracy(map_: torch.Tensor, mask: torch.Tensor, relevance_kind: str = "abs") -> float:
    values, inside = _pair(map_, mask, relevance_kind)
    k = int(inside.sum())
    if k == 0:
        return math.nan
    threshold = torch.topk(values, k).values[-1]
    above = values > threshold
    tied = values == threshold
    hits = float((above & inside).sum()) + (k - int(above.sum())) * float((tied & inside).sum()) / float(tied.sum())
    return hits / k


def auroc(map_: torch.Tensor, mask: torch.Tensor, relevance_kind: str = "abs") -> float:
    values, inside = _pair(map_, mask, relevance_kind)
    n_in = int(inside.sum())
    n_out = values.numel() - n_in
    if n_in == 0 or n_out == 0:
        return math.nan
    rank_sum = float(ranks(values)[inside].sum())  # ties: mean ranks, so a tie between in and out counts 1/2
    return (rank_sum - n_in * (n_in + 1) / 2) / (n_in * n_out)


def pointing_game(map_: torch.Tensor, mask: torch.Tensor, relevance_kind: str = "abs") -> float:
    values, inside = _pair(map_, mask, relevance_kind)
    if not bool(inside.any()):
        return math.nan
    maxima = values == values.max()
    return float((maxima & inside).sum()) / float(maxima.sum())


MEASURES = {"relevance_mass": relevance_mass, "rank_accuracy": rank_accuracy, "auroc": auroc,
            "pointing_game": pointing_game}


def localisation(map_: torch.Tensor, mask: torch.Tensor, relevance_kind: str = "abs") -> dict[str, float]:
    """Every measure of one map, by name (MEASURES' order)."""
    return {name: measure(map_, mask, relevance_kind) for name, measure in MEASURES.items()}
