"""Faithfulness: does the model's output follow the map? Deletion removes the voxels the map ranks first, K steps
of 1/K of the volume each, and records the model's target output (and its probability) at each step; insertion
starts from the image with every voxel removed and puts them back in the same order (Petsiuk et al., RISE, BMVC
2018; Samek et al., IEEE TNNLS 2017 for "most relevant first" pixel flipping). A faithful map makes the deletion
curve fall fast (a small area under it) and the insertion curve rise fast; a random ranking gives the baseline.

- **Ranking** (`order`): by the signed map (`map`: evidence for the target first), by |map| (`abs`), or at random
  (`random`, the baseline); `direction` `morf` takes the most relevant first, `lerf` the least relevant first.
- **Removed voxels** (`replacement`) become a constant (`constant`, `value`), the image blurred by a Gaussian
  of `sigma` voxels (`blur`: the content goes, the intensity stays), or a noisy linear imputation from their kept
  neighbours (`road`: Rong et al., ROAD, ICML 2022, which avoids the out-of-distribution edges of a constant: each
  removed voxel the mean of its 6 neighbours, by `road_iterations` Jacobi sweeps started from the blurred image,
  then Gaussian noise of `road_noise` times the image's standard deviation).
- **Cost**: the K + 1 perturbed copies of an image go through the model `chunk` at a time, forward only, on the
  image's device: one curve costs K + 1 forward passes of one image, batched.

Voxels are spatial: the channels of a voxel go together (an rgb slice's three copies of one voxel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..config import EVALUATION_ORDERS as ORDERS, EVALUATION_REPLACEMENTS as REPLACEMENTS  # the options' choices

DIRECTIONS = ("morf", "lerf")
KINDS = ("deletion", "insertion")

Model = Callable[[torch.Tensor], torch.Tensor]  # a batch (B, C, *spatial) -> outputs (B, n_outputs)


@dataclass(frozen=True)
class Perturbation:
    steps: int = 20
    replacement: str = "constant"
    value: float = 0.0  # constant
    sigma: float = 2.0  # blur and road's start, in voxels
    road_noise: float = 0.01
    road_iterations: int = 50
    chunk: int = 8  # copies per forward pass

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be 1 or more, got {self.steps}")
        if self.replacement not in REPLACEMENTS:
            raise ValueError(f"replacement must be one of {', '.join(REPLACEMENTS)}, got {self.replacement!r}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be 1 or more, got {self.chunk}")


@dataclass(frozen=True)
class Curve:
    fractions: torch.Tensor  # (K + 1,) share of the voxels removed (deletion) or put back (insertion)
    outputs: torch.Tensor  # (K + 1,) the target output at each step
    probabilities: torch.Tensor  # (K + 1,) its softmax probability (sigmoid for a single output)

    def auc(self, probabilities: bool = True) -> float:
        """Area under the curve over the fractions [0, 1] (trapezoid rule)."""
        values = self.probabilities if probabilities else self.outputs
        return float(torch.trapezoid(values.double(), self.fractions.double()))


def ranking(map_: torch.Tensor, order: str = "abs", direction: str = "morf",
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each spatial voxel's position in the removal order (0 first), flat, on the map's device. Ties keep the
    voxels' order in memory (a stable sort), so a curve is the same on every run."""
    if order not in ORDERS or direction not in DIRECTIONS:
        raise ValueError(f"order must be one of {ORDERS} and direction one of {DIRECTIONS}, got {order!r}, "
                         f"{direction!r}")
    values = map_.detach().double().sum(0).reshape(-1)  # a voxel's channels together
    if order == "random":
        permutation = torch.randperm(values.numel(), generator=generator).to(values.device)
    else:
        score = values if order == "map" else values.abs()
        permutation = torch.argsort(score if direction == "lerf" else -score, stable=True)
    position = torch.empty_like(permutation)
    position[permutation] = torch.arange(permutation.numel(), device=permutation.device)
    return position


def blurred(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """The image (C, *spatial) smoothed by a separable Gaussian of `sigma` voxels (edges replicated)."""
    radius = max(1, int(3 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = image.unsqueeze(0)
    spatial = image.dim() - 1
    for axis in range(spatial):
        shape = [1, 1] + [1] * spatial
        shape[2 + axis] = kernel.numel()
        weight = kernel.reshape(shape).repeat(image.shape[0], 1, *[1] * spatial)
        padding = [0] * (2 * spatial)
        padding[2 * (spatial - 1 - axis)] = padding[2 * (spatial - 1 - axis) + 1] = radius
        convolve = F.conv3d if spatial == 3 else F.conv2d
        out = convolve(F.pad(out, padding, mode="replicate"), weight, groups=image.shape[0])
    return out[0]


def _neighbour_mean(batch: torch.Tensor) -> torch.Tensor:
    """Mean of each voxel's face neighbours inside the grid, (B, C, *spatial)."""
    total = torch.zeros_like(batch)
    count = torch.zeros_like(batch[:1, :1])
    ones = torch.ones_like(batch[:1, :1])
    for axis in range(2, batch.dim()):
        for shift in (1, -1):
            total += _shift(batch, shift, axis)
            count += _shift(ones, shift, axis)
    return total / count


def _shift(x: torch.Tensor, shift: int, axis: int) -> torch.Tensor:
    """x moved by one voxel along `axis`, zeros where nothing comes in (no wrap-around)."""
    out = torch.zeros_like(x)
    n = x.shape[axis]
    if shift > 0:
        out.narrow(axis, 1, n - 1).copy_(x.narrow(axis, 0, n - 1))
    else:
        out.narrow(axis, 0, n - 1).copy_(x.narrow(axis, 1, n - 1))
    return out


def road_imputed(image: torch.Tensor, removed: torch.Tensor, settings: Perturbation, start: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Copies (B, C, *spatial) of the image whose `removed` voxels (B, 1, *spatial, bool) hold the mean of their
    neighbours (the kept ones fixed), plus noise: ROAD's noisy linear imputation."""
    batch = torch.where(removed, start.unsqueeze(0), image.unsqueeze(0))
    for _ in range(settings.road_iterations):
        batch = torch.where(removed, _neighbour_mean(batch), batch)
    if settings.road_noise > 0:
        noise = torch.randn(batch.shape, generator=generator, dtype=batch.dtype).to(batch.device)
        batch = torch.where(removed, batch + settings.road_noise * float(image.std()) * noise, batch)
    return batch


def _probabilities(outputs: torch.Tensor, target: int) -> torch.Tensor:
    if outputs.shape[1] == 1:
        return torch.sigmoid(outputs[:, 0])
    return torch.softmax(outputs.double(), dim=1)[:, target]


def baseline(image: torch.Tensor, settings: Perturbation) -> torch.Tensor:
    """What removed voxels become (ROAD: where its imputation starts): the constant, or the blurred image."""
    if settings.replacement == "constant":
        return torch.full_like(image, settings.value)
    return blurred(image, settings.sigma)


def curve(model: Model, image: torch.Tensor, position: torch.Tensor, target: int, kind: str = "deletion",
          settings: Perturbation = Perturbation(), generator: Optional[torch.Generator] = None,
          replaced: Optional[torch.Tensor] = None) -> Curve:
    """The deletion or insertion curve of one image (C, *spatial) for a removal order (`ranking`'s positions):
    steps + 1 copies, `settings.chunk` per forward pass, on the image's device, without gradients. `replaced`:
    the image's `baseline`, when several curves of one image share it (a blur costs about a forward pass)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    n = position.numel()
    counts = torch.round(torch.linspace(0, n, settings.steps + 1, dtype=torch.float64)).long()
    if replaced is None:
        replaced = baseline(image, settings)
    spatial = image.shape[1:]
    outputs = []
    with torch.no_grad():
        for start in range(0, counts.numel(), settings.chunk):
            chunk = counts[start:start + settings.chunk].to(position.device)
            gone = (position.unsqueeze(0) < chunk.unsqueeze(1)).reshape(len(chunk), 1, *spatial)
            removed = gone if kind == "deletion" else ~gone  # insertion: what is not back yet
            if settings.replacement == "road":
                batch = road_imputed(image, removed, settings, replaced, generator)
            else:
                batch = torch.where(removed, replaced.unsqueeze(0), image.unsqueeze(0))
            outputs.append(model(batch).detach().double().cpu())
    out = torch.cat(outputs)
    return Curve(counts.double() / n, out[:, target],
                 _probabilities(out, target))
