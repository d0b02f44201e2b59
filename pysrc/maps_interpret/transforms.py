"""The preprocessing ClinicaDL applies to every element before the network sees it (its evaluation
transforms: NaN removal, min-max normalisation, size reduction; never data augmentation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Crops and strides of ClinicaDL's SizeReduction, per factor, for (D, H, W) of a 169x208x179 image.
SIZE_REDUCTION = {
    2: ((4, 164, 2), (8, 200, 2), (8, 168, 2)),
    3: ((0, 168, 3), (8, 200, 3), (4, 172, 3)),
    4: ((4, 164, 4), (8, 200, 4), (8, 168, 4)),
    5: ((4, 164, 5), (0, 200, 5), (8, 168, 5)),
}


def nan_removal(x: torch.Tensor) -> torch.Tensor:
    """NaN -> 0 and +-inf -> +-float max, but only when the element holds a NaN (ClinicaDL's rule). The test
    is one reduction (max propagates NaN) instead of a mask as large as the image: 8x faster per image."""
    return torch.nan_to_num(x) if torch.isnan(x.max()) else x


def min_max(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(x - min) / (max - min) over the whole element, all channels together: the same operations as the
    plain expression (same values bit for bit), with one pass for both extremes and one new buffer (or
    `out`, e.g. shared memory a loader worker hands over without a copy) instead of two."""
    low, high = torch.aminmax(x)
    return torch.sub(x, low, out=out).div_(high - low)


def size_reduction(x: torch.Tensor, factor: int) -> torch.Tensor:
    (d0, d1, ds), (h0, h1, hs), (w0, w1, ws) = SIZE_REDUCTION[factor]
    return x[:, d0:d1:ds, h0:h1:hs, w0:w1:ws]


@dataclass(frozen=True)
class Preprocess:
    """Picklable (DataLoader workers) composition of the transforms a MAPS asks for."""

    normalize: bool = True
    size_reduction_factor: int | None = None

    @classmethod
    def from_params(cls, params: dict) -> "Preprocess":
        factor = int(params["size_reduction_factor"]) if params.get("size_reduction") else None
        if factor is not None and factor not in SIZE_REDUCTION:
            from .errors import MapsInterpretError

            raise MapsInterpretError(f"maps.json: size_reduction_factor {factor} is not one of ClinicaDL's "
                                     f"{sorted(SIZE_REDUCTION)}")
        return cls(normalize=bool(params["normalize"]), size_reduction_factor=factor)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The preprocessed element; written into `out` (and returned) when given and of the right shape,
        else a new tensor. Never modifies `x`."""
        x = nan_removal(x)
        if self.normalize and self.size_reduction_factor is None and out is not None and out.shape == x.shape:
            return min_max(x, out=out)
        if self.normalize:
            x = min_max(x)
        if self.size_reduction_factor is not None:
            x = size_reduction(x, self.size_reduction_factor)
        return x
