"""The arithmetic of the ClinicaDL 2.0.0 image transforms maps-interpret reproduces (torchio 0.20's code), in
torch, on a batch (N, C, *spatial) on any device, each image with its own statistics.

Exactness (tests/test_clinicadl2_transforms.py compares with torchio and ClinicaDL 2.0 itself):
- crops, pads, masks, clamps: copies and comparisons, bit for bit on every device;
- RescaleIntensity: bit for bit on every device. Its percentiles follow numpy's 'linear' method to the
  letter (numpy itself on the CPU; on a GPU its formula: the float32 difference of the two neighbours, then a
  float64 interpolation), the clip, the float32 min/max of the clipped image and the four float32 in-place
  operations are torchio's, in its order;
- ZNormalization: torchio's own torch calls (mean and std of the values in the image's logical order), so bit
  for bit on the CPU with the same number of torch threads as the 2.0 run (torch's float32 sum splits by
  thread: 1 thread and 2 threads differ in the last bit of the mean); on a GPU the reductions add in another
  order (a few ulps on the mean and std).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

ANATOMICAL = ("Left", "Right", "Anterior", "Posterior", "Inferior", "Superior")  # torchio's, index-based
PAD_BY_INDEX = ("edge", "reflect", "symmetric", "wrap")  # numpy modes that copy voxels
PAD_BY_VALUE = ("maximum", "minimum", "median")  # torchio: one value computed from the whole image
Masking = Union[None, str, tuple]


class ZeroStd(ValueError):
    """ZNormalization of an image whose values have standard deviation 0 (2.0 raises too)."""

    def __init__(self, image: int):
        super().__init__(image)
        self.image = image


def six_bounds(value) -> tuple[int, int, int, int, int, int]:
    """torchio's bounds: n, (a, b, c) or (a0, a1, b0, b1, c0, c1) voxels, non-negative integers."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if len(values) not in (1, 3, 6) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in values):
        raise ValueError(f"bounds must be 1, 3 or 6 non-negative integers, got {value!r}")
    if len(values) == 1:
        return values * 6
    if len(values) == 3:
        return tuple(v for v in values for _ in range(2))
    return values


def masking_method(value) -> Masking:
    """None, an anatomical label (torchio capitalises it) or six bounds; ValueError for anything else (a mask
    image's name: maps-interpret does not read the dataset's masks)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.capitalize() in ANATOMICAL:
            return value.capitalize()
        raise ValueError(f"masking_method {value!r} names one of the dataset's mask images, which maps-interpret "
                         "does not read")
    return six_bounds(value)


def region_mask(method: Masking, shape: Sequence[int], device) -> Optional[torch.Tensor]:
    """torchio's mask for `method` over one image of shape (C, W, H, D): None for every voxel. Anatomical labels
    are halves of the voxel axes (torchio assumes RAS and never looks at the affine)."""
    if method is None:
        return None
    mask = torch.zeros(tuple(shape), dtype=torch.bool, device=device)
    _, width, height, depth = shape
    if isinstance(method, str):
        half = {"Right": (1, width // 2, None), "Left": (1, None, width // 2),
                "Anterior": (2, height // 2, None), "Posterior": (2, None, height // 2),
                "Superior": (3, depth // 2, None), "Inferior": (3, None, depth // 2)}[method]
        index = [slice(None)] * 4
        index[half[0]] = slice(half[1], half[2])
        mask[tuple(index)] = True
        return mask
    i1, j1, k1 = np.array(shape[1:]) - np.array(method[1::2])  # Python slicing, negative stops included
    i0, j0, k0 = method[::2]
    mask[:, i0:int(i1), j0:int(j1), k0:int(k1)] = True
    return mask


def _values(image: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The values statistics are taken from, in the image's logical order (torchio's `tensor[mask]`)."""
    return image.reshape(-1) if mask is None else image[mask]


def percentiles(values: torch.Tensor, qs: Sequence[float], use_numpy: Optional[bool] = None) -> list[float]:
    """`np.percentile(values, qs)` (method 'linear') as float64: numpy itself on the CPU, its formula elsewhere."""
    if use_numpy is None:
        use_numpy = values.device.type == "cpu"
    if use_numpy:
        with np.errstate(invalid="ignore"):  # inf - inf in numpy's interpolation: NaN, as in 2.0
            return [float(v) for v in np.percentile(values.detach().numpy(), tuple(qs))]
    if bool(torch.isnan(values).any()):
        return [math.nan] * len(qs)  # numpy: a NaN anywhere makes every percentile NaN
    n = values.numel()
    ranks = []
    for q in qs:
        virtual = (n - 1) * (q / 100)
        if virtual >= n - 1:  # numpy takes the last value and keeps index -1 in the weight
            ranks.append((n - 1, n - 1, virtual + 1))
        else:
            below = math.floor(virtual)
            ranks.append((below, below + 1, virtual - below))
    picked = torch.sort(values).values[[i for a, b, _ in ranks for i in (a, b)]].tolist()
    out = []
    for k, (_, _, gamma) in enumerate(ranks):
        a, b = picked[2 * k], picked[2 * k + 1]
        with np.errstate(invalid="ignore"):
            diff = float(np.float32(b) - np.float32(a))  # numpy subtracts in the array's float32
        out.append(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)
    return out


def _per_image(x: torch.Tensor, fn) -> torch.Tensor:
    return torch.stack([fn(image) for image in x]) if x.shape[0] else x


def rescale(x: torch.Tensor, out_min_max: tuple[float, float], qs: tuple[float, float],
            in_min_max: Optional[tuple[float, float]], method: Masking, use_numpy: Optional[bool] = None
            ) -> torch.Tensor:
    """torchio RescaleIntensity of every image of x (N, C, *spatial)."""
    out_min, out_max = out_min_max
    out_range = np.float32(out_max - out_min)  # Python float difference, cast to float32 by the in-place op
    out_min32 = np.float32(out_min)

    def one(image: torch.Tensor) -> torch.Tensor:
        mask = region_mask(method, image.shape, image.device)
        values = _values(image, mask)
        if values.numel() == 0:  # torchio warns and returns the image unchanged
            return image
        low, high = percentiles(values, qs, use_numpy)
        if math.isnan(low) or math.isnan(high):  # numpy's clip to NaN bounds makes every voxel NaN
            return torch.full_like(image, math.nan)
        clipped = image.clamp(np.float32(low).item(), np.float32(high).item())
        if in_min_max is None:
            in_min, in_range = clipped.min(), clipped.max() - clipped.min()
            if bool(in_range == 0):  # torchio warns and returns the image unchanged (not clipped)
                return image
        else:
            if in_min_max[1] - in_min_max[0] == 0:
                return image
            in_min = torch.tensor(np.float32(in_min_max[0]), device=image.device)
            in_range = torch.tensor(np.float32(in_min_max[1] - in_min_max[0]), device=image.device)
        # Device tensors, not Python scalars: CUDA divides by a host scalar as a product with its reciprocal.
        return (clipped - in_min).div_(in_range).mul_(out_range.item()).add_(out_min32.item())

    return _per_image(x, one)


def znormalize(x: torch.Tensor, method: Masking) -> torch.Tensor:
    """torchio ZNormalization of every image of x (N, C, *spatial); ZeroStd where 2.0 raises."""
    images = []
    for index, image in enumerate(x):
        values = _values(image, region_mask(method, image.shape, image.device))
        if values.numel() < 2:  # mean or unbiased std of fewer than 2 values: NaN, hence NaN everywhere
            images.append(torch.full_like(image, math.nan))
            continue
        mean, std = values.mean(), values.std()
        if bool(std == 0):
            raise ZeroStd(index)
        images.append((image - mean) / std)
    return torch.stack(images) if images else x


def clamp(x: torch.Tensor, low: Optional[float], high: Optional[float]) -> torch.Tensor:
    return x.clamp(low, high)


def mask(x: torch.Tensor, method: Masking, outside: float) -> torch.Tensor:
    """torchio Mask: voxels outside the region set to `outside` (float32)."""
    region = region_mask(method, x.shape[1:], x.device)
    if region is None:
        return x
    return torch.where(region, x, torch.tensor(np.float32(outside), device=x.device))


def crop(x: torch.Tensor, bounds: Sequence[int]) -> torch.Tensor:
    """torchio Crop of (N, C, *3D): bounds (w0, w1, h0, h1, d0, d1) voxels off each end."""
    (i0, j0, k0), ends = bounds[::2], np.array(x.shape[2:]) - np.array(bounds[1::2])
    return x[:, :, i0:int(ends[0]), j0:int(ends[1]), k0:int(ends[2])]


def _pad_index(n: int, low: int, high: int, mode: str, device) -> torch.Tensor:
    """numpy.pad's source index of each padded position along an axis of n voxels (any pad width)."""
    p = torch.arange(-low, n + high, device=device)
    if mode == "edge":
        return p.clamp(0, n - 1)
    if mode == "wrap":
        return p.remainder(n)
    if mode == "reflect":
        if n == 1:
            return torch.zeros_like(p)
        period = 2 * n - 2
        m = p.remainder(period)
        return torch.where(m < n, m, period - m)
    period = 2 * n  # symmetric
    m = p.remainder(period)
    return torch.where(m < n, m, period - 1 - m)


def pad_fill(image: torch.Tensor, mode) -> torch.Tensor:
    """The value torchio's Pad writes for a number or a whole-image statistic mode (0-d, on the device)."""
    if mode == "maximum":
        return image.max()
    if mode == "minimum":
        return image.min()
    if mode == "median":
        return torch.quantile(image.float(), 0.5)
    return torch.tensor(np.float32(mode), device=image.device)


def pad(x: torch.Tensor, bounds: Sequence[int], mode) -> torch.Tensor:
    """torchio Pad of (N, C, *3D): bounds (w0, w1, h0, h1, d0, d1) voxels added at each end, `mode` a number,
    one of PAD_BY_VALUE or one of PAD_BY_INDEX."""
    if mode in PAD_BY_INDEX:
        for axis in range(3):
            x = x.index_select(axis + 2, _pad_index(x.shape[axis + 2], bounds[2 * axis], bounds[2 * axis + 1],
                                                    mode, x.device))
        return x
    n, c = x.shape[:2]
    shape = [s + bounds[2 * a] + bounds[2 * a + 1] for a, s in enumerate(x.shape[2:])]
    fills = torch.stack([pad_fill(image, mode) for image in x]) if n else x.new_zeros(0)
    out = fills.to(x.dtype).view(n, 1, 1, 1, 1).expand(n, c, *shape).clone()
    i, j, k = bounds[::2]
    out[:, :, i:i + x.shape[2], j:j + x.shape[3], k:k + x.shape[4]] = x
    return out


def crop_or_pad_bounds(shape: Sequence[int], target: Sequence[int]) -> tuple[Optional[tuple], Optional[tuple]]:
    """torchio CropOrPad (centred, no mask): (padding, cropping) bounds, None where nothing to do; the
    odd voxel goes to the start."""
    diff = np.array(target) - np.array(shape)

    def six(amounts: np.ndarray) -> Optional[tuple]:
        if not amounts.any():
            return None
        return tuple(v for a in amounts / 2 for v in (int(np.ceil(a)), int(np.floor(a))))

    return six(np.maximum(diff, 0)), six(-np.minimum(diff, 0))


def multiple_target(shape: Sequence[int], multiple: Sequence[int], method: str) -> tuple[int, int, int]:
    """torchio EnsureShapeMultiple: the CropOrPad target shape."""
    ratio = (np.floor if method == "crop" else np.ceil)(np.array(shape, np.uint16) / np.array(multiple))
    return tuple(int(v) for v in np.maximum(ratio * np.array(multiple), 1))
