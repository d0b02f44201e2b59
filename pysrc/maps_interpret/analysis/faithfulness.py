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
- **Cost**: the perturbed copies of an image go through the model `chunk` at a time, forward only, on the image's
  device. One curve costs K + 1 forward passes of one image, batched; `curves` computes each copy once for several
  curves (the intact and the fully replaced image serve all; deletion most relevant first and insertion least
  relevant first remove the same voxels; so do a random order's deletion and insertion), so the default four
  curves (deletion and insertion, by |map| and at random) cost 3 (K - 1) + 2 passes instead of 4 (K + 1).

Voxels are spatial: the channels of a voxel go together (an rgb slice's three copies of one voxel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import EVALUATION_ORDERS as ORDERS, EVALUATION_REPLACEMENTS as REPLACEMENTS  # the options' choices
from ..settings import step_counts  # the curves' steps, which the tables count too

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
    voxels' order in memory (a stable sort), so a curve is the same on every run; least relevant first is most
    relevant first reversed (ties too), so the two remove the same voxels from opposite ends."""
    if order not in ORDERS or direction not in DIRECTIONS:
        raise ValueError(f"order must be one of {ORDERS} and direction one of {DIRECTIONS}, got {order!r}, "
                         f"{direction!r}")
    values = map_.detach().double().sum(0).reshape(-1)  # a voxel's channels together
    if order == "random":
        permutation = torch.randperm(values.numel(), generator=generator).to(values.device)
    else:
        permutation = torch.argsort(-(values if order == "map" else values.abs()), stable=True)
    position = torch.empty_like(permutation)
    position[permutation] = torch.arange(permutation.numel(), device=permutation.device)
    return position if direction == "morf" else position.numel() - 1 - position


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


Request = tuple  # (kind, order, direction) of one curve


def curves(model: Model, image: torch.Tensor, positions: dict, target: int, requests: Sequence[Request],
           settings: Perturbation = Perturbation(), generator: Optional[torch.Generator] = None,
           replaced: Optional[torch.Tensor] = None, intact: Optional[torch.Tensor] = None) -> dict:
    """Several curves of one image (C, *spatial), each perturbed copy computed once: {request: Curve}.
    `positions`: each order's most-relevant-first positions (`ranking(map_, order)`). A step's copy removes either
    the first m voxels of an order or its last m, and curves share those: deletion most relevant first and
    insertion least relevant first, deletion least relevant first and insertion most relevant first, and a random
    order's deletion and insertion (insertion puts voxels back in the reverse of the deletion's random order, a
    random order too); the intact and the fully replaced image serve every curve. Copies go `settings.chunk` per
    forward pass, without gradients. `replaced`: the image's `baseline` when the caller has it; `intact`: the
    model's outputs for the image (n_outputs,), when the caller has them."""
    for kind, _, direction in requests:
        if kind not in KINDS or direction not in DIRECTIONS:
            raise ValueError(f"kind must be one of {KINDS} and direction one of {DIRECTIONS}, got {kind!r}, "
                             f"{direction!r}")
    n = image[0].numel()
    counts = torch.tensor(step_counts(n, settings.steps))
    plans = {request: [_copy_key(request, int(c), n) for c in counts] for request in requests}
    outputs = {} if intact is None else {"intact": intact.detach().double().cpu()}
    keys = [key for key in dict.fromkeys(k for plan in plans.values() for k in plan) if key not in outputs]
    if replaced is None:
        replaced = baseline(image, settings)
    spatial = image.shape[1:]
    buffer = image.new_empty((min(settings.chunk, len(keys)), *image.shape)) if keys else None
    with torch.no_grad():
        for start in range(0, len(keys), settings.chunk):
            chunk = keys[start:start + settings.chunk]
            removed = torch.stack([_removed(key, positions, n) for key in chunk]).reshape(len(chunk), 1, *spatial)
            if settings.replacement == "road":
                batch = road_imputed(image, removed, settings, replaced, generator)
            else:  # one buffer for every chunk: no new volume per forward pass
                batch = torch.where(removed, replaced.unsqueeze(0), image.unsqueeze(0), out=buffer[:len(chunk)])
            outputs.update(zip(chunk, model(batch).detach().double().cpu()))
    results = {}
    for request, plan in plans.items():
        out = torch.stack([outputs[key] for key in plan])
        results[request] = Curve(counts.double() / n, out[:, target], _probabilities(out, target))
    return results


def _copy_key(request: Request, count: int, n: int):
    """Which copy a curve's step uses: "intact", "replaced", or (order, end, m): the order's first (end "top")
    or last ("bottom") m voxels removed."""
    kind, order, direction = request
    size = count if kind == "deletion" else n - count  # insertion removes what is not back yet
    top = (kind == "deletion") == (direction == "morf") or (order == "random" and kind == "insertion")
    return "intact" if size == 0 else "replaced" if size == n else (order, "top" if top else "bottom", size)


def _removed(key, positions: dict, n: int) -> torch.Tensor:
    if key in ("intact", "replaced"):
        device = next(iter(positions.values())).device
        return torch.full((n,), key == "replaced", dtype=torch.bool, device=device)
    order, end, size = key
    return positions[order] < size if end == "top" else positions[order] >= n - size


def curve(model: Model, image: torch.Tensor, position: torch.Tensor, target: int, kind: str = "deletion",
          settings: Perturbation = Perturbation(), generator: Optional[torch.Generator] = None,
          replaced: Optional[torch.Tensor] = None) -> Curve:
    """The deletion or insertion curve of one image (C, *spatial) for one removal order (`ranking`'s positions):
    deletion removes the voxels whose position is below each step's count, insertion the others (`curves`, which
    computes several curves at once)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    request = (kind, "given", "morf")
    return curves(model, image, {"given": position}, target, [request], settings, generator, replaced)[request]
