"""Maps in the space of the images they explain.

A map's voxel (i, j, k) is a voxel of the network's input: the whole image (image mode, possibly size-reduced:
a strided crop), or a patch, a slice or a region cut out of it. The `.pt` tensors were made by
`clinicadl prepare-data` from the CAPS' NIfTI images with their voxel axes unchanged, so each map has an
exact voxel-to-world affine: the source image's affine composed with the element's position (and the size
reduction's stride). A NIfTI map written with it overlays its image in any viewer. Without a source NIfTI
the image's voxel grid is the world (identity affine), as ClinicaDL writes every map.

Patch, slice and ROI maps are also put back into the whole image grid (`to_image`): overlapping patches
averaged, slices at their index, regions at their crop, times their mask. The channels of a map are summed
there: the rgb channels of a slice are three copies of the same voxel, so the derivative with respect to
that voxel is the sum of the three (chain rule); single-channel maps are unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from ..data.transforms import SIZE_REDUCTION

IMAGE_SPACE = "image-space"  # file-name token of maps reassembled into the whole image grid


@dataclass(frozen=True)
class Reference:
    """The NIfTI image the tensors were made from: voxel-to-world affine and header (None: identity)."""

    path: Optional[Path]
    affine: np.ndarray
    header: object = None  # nibabel's Nifti1Header


@functools.lru_cache(maxsize=4096)
def reference(path: Optional[Path], grid: object = None) -> Reference:
    """The source image's affine and header (its header only is read, not its voxels). `grid`: a ClinicaDL 2.0
    preprocessing (data/clinicadl2.Pipeline2), whose network input may be another voxel grid of the image
    (reoriented by ToCanonical, cropped, padded): the affine is then that grid's."""
    if path is None:
        return Reference(None, np.eye(4))
    import nibabel as nib

    image = nib.load(str(path))
    affine = image.affine if grid is None else grid.input_affine(image)
    return Reference(Path(path), np.asarray(affine, dtype=np.float64), image.header.copy())


def same_space(a: Reference, b: Reference, tolerance: float = 1e-4) -> bool:
    return bool(np.allclose(a.affine, b.affine, atol=tolerance))


def supported(layout, reduction: Optional[int]) -> bool:
    """Whether maps can be placed in the image: ClinicaDL's size reduction crops whole images; applied to a
    patch, slice or region it samples the element, and no image grid is left to place it in."""
    return layout.mode == "image" or reduction is None


def to_image_voxels(layout, element: Optional[int], image_shape: Sequence[int],
                    reduction: Optional[int]) -> np.ndarray:
    """4x4 map from an element map's voxel indices to the image's voxel indices (element None: a map of the
    whole image grid, `to_image`'s)."""
    transform = np.eye(4)
    if element is None:
        return transform
    if layout.mode == "image" and reduction is not None:
        for axis, (start, _, step) in enumerate(SIZE_REDUCTION[reduction]):
            transform[axis, axis], transform[axis, 3] = step, start
        return transform
    region = layout.region(element, image_shape)
    if not box(region):
        raise ValueError(f"{layout.mode} {element}: its region is no box of the image; no affine places it")
    for axis, span in enumerate(region):
        transform[axis, 3] = span.start
    return transform


def element_volume(layout, map_: torch.Tensor) -> torch.Tensor:
    """An element map (C, *spatial) as a NIfTI volume: 3 spatial axes in the image's order (a slice gets its
    one-voxel-thick axis back), channels on a 4th axis when there are several (rgb slices)."""
    if layout.mode == "slice":
        map_ = map_.unsqueeze(layout.direction + 1)
    return map_[0] if map_.shape[0] == 1 else map_.movedim(0, -1)


def box(region: tuple) -> bool:
    """Whether an element's region is a box of the image (a slice per axis), which an affine can place."""
    return all(isinstance(span, slice) for span in region)


def _index(region: tuple):
    if box(region):
        return region
    return np.ix_(*[np.arange(span.start, span.stop) if isinstance(span, slice) else span for span in region])


def to_image(layout, maps: Mapping[int, torch.Tensor], image_shape: Sequence[int]) -> torch.Tensor:
    """Element maps {element id: (C, *spatial)} as one map (1, D, H, W) of the image grid: channels summed,
    each element at its region (ROI maps times their mask), overlapping elements averaged, voxels that no
    element covers 0."""
    shape = tuple(image_shape[1:])
    total = torch.zeros(shape, dtype=torch.float64)
    count = torch.zeros(shape, dtype=torch.float64)
    for element, map_ in maps.items():
        volume = map_.detach().to("cpu", torch.float64).sum(0)
        if layout.mode == "slice":
            volume = volume.unsqueeze(layout.direction)
        region = layout.region(element, image_shape)
        weight = (torch.from_numpy(layout.weight(element)).double() if layout.mode == "roi"
                  else torch.ones_like(volume))
        if volume.shape != weight.shape:
            raise ValueError(f"{layout.mode} {element}: a map of shape {tuple(map_.shape)} does not fit its "
                             f"region {tuple(weight.shape)} of the image")
        index = _index(region)
        total[index] += volume * weight
        count[index] += weight
    return (total / count.clamp(min=1)).float().unsqueeze(0)


@dataclass(frozen=True)
class Placement:
    """Where one map lies in the world: its source image and its position in that image. `element` None is
    a map of the whole image grid (from `to_image`)."""

    layout: object
    element: Optional[int]
    image_shape: tuple
    reduction: Optional[int]
    source: Reference

    @property
    def on_image_grid(self) -> bool:
        """Whether the map is written on the whole image grid: a map of it (`to_image`'s), or a region whose crop
        is no box (a mask whose projection has gaps, e.g. left and right hippocampus in one mask), which no
        affine can place."""
        return self.element is None or not box(self.layout.region(self.element, self.image_shape))

    @property
    def affine(self) -> np.ndarray:
        """The voxel-to-world affine of the map's NIfTI file."""
        if self.on_image_grid:
            return self.source.affine
        return self.source.affine @ to_image_voxels(self.layout, self.element, self.image_shape, self.reduction)

    def nifti(self, map_: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(voxels, affine) of the map's NIfTI file (a region that is no box: on the whole image grid)."""
        if self.element is not None and self.on_image_grid:
            return to_image(self.layout, {self.element: map_}, self.image_shape)[0].numpy(), self.affine
        volume = map_[0] if self.element is None else element_volume(self.layout, map_)
        return volume.numpy(), self.affine
