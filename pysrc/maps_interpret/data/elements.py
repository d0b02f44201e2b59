"""How each mode cuts a session's image into the elements a network sees, and names them
(ClinicaDL 1.6.1, facts §5). An element id is ClinicaDL's `<mode>_id`: 0 for images, the patch index,
the slice index in the volume (discarded slices included), the index in `roi_list`.

Every layout gives `element_ids(image_shape)`, `extract(image, element_id)` (one element, ClinicaDL's way: the
reference) and `cut(images)` (every element of a stack of images at once, on the images' device, the same
values); with `prepare_dl`, `element_file(image_tensor_path, element_id)` names the pre-extracted tensor to
read instead. `region(element_id, image_shape)` says which voxels of the image an element covers (space.py
puts maps back there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import MapsInterpretError

SLICE_AXES = {0: "sag", 1: "cor", 2: "axi"}


def _split_name(image_path: Path) -> tuple[str, str]:
    """ClinicaDL's file-name cut at the last '_': prefix, and suffix ('_T1w.pt')."""
    name = image_path.name.replace(".nii.gz", ".pt")
    cut = name.rfind("_")
    return name[:cut], name[cut:]


def _based_dir(image_path: Path, mode: str) -> Path:
    return Path(*[f"{mode}_based" if part == "image_based" else part for part in image_path.parent.parts])


@dataclass(frozen=True)
class ImageLayout:
    mode = "image"
    prepare_dl = False

    def element_ids(self, image_shape: Sequence[int]) -> list[int]:
        return [0]

    def extract(self, image: torch.Tensor, element: int) -> torch.Tensor:
        return image

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def element_file(self, image_path: Path, element: int) -> Path:
        raise AssertionError("image mode reads the image tensor itself")

    def region(self, element: int, image_shape: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(0, s) for s in image_shape[1:])


@dataclass(frozen=True)
class PatchLayout:
    """Cubic patches of `size` voxels every `stride` voxels, row-major over (D, H, W); patches that do not
    fit are dropped."""

    size: int
    stride: int
    prepare_dl: bool = False
    mode = "patch"

    def grid(self, image_shape: Sequence[int]) -> list[int]:
        return [max(0, (s - self.size) // self.stride + 1) for s in image_shape[1:]]

    def element_ids(self, image_shape: Sequence[int]) -> list[int]:
        if image_shape[0] != 1:
            raise MapsInterpretError(f"patch mode needs single-channel images, got shape {tuple(image_shape)}")
        return list(range(int(np.prod(self.grid(image_shape)))))

    def extract(self, image: torch.Tensor, element: int) -> torch.Tensor:
        position = np.unravel_index(element, self.grid(image.shape))
        d, h, w = (int(p) * self.stride for p in position)
        s = self.size
        return image[:, d:d + s, h:h + s, w:w + s].clone()

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) -> (N * patches, C, s, s, s), patches row-major over the grid as `extract` numbers them."""
        n, c = images.shape[:2]
        s, t = self.size, self.stride
        grid = images.unfold(2, s, t).unfold(3, s, t).unfold(4, s, t)  # (N, C, gd, gh, gw, s, s, s)
        return grid.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, c, s, s, s)

    def region(self, element: int, image_shape: Sequence[int]) -> tuple[slice, ...]:
        position = np.unravel_index(element, self.grid(image_shape))
        return tuple(slice(int(p) * self.stride, int(p) * self.stride + self.size) for p in position)

    def element_file(self, image_path: Path, element: int) -> Path:
        prefix, suffix = _split_name(image_path)
        return (_based_dir(image_path, "patch")
                / f"{prefix}_patchsize-{self.size}_stride-{self.stride}_patch-{element}{suffix}")


@dataclass(frozen=True)
class SliceLayout:
    """2D slices along `direction` (0 sagittal = tensor axis 1, 1 coronal, 2 axial), `discarded` slices
    skipped at the (begin, end); "rgb" repeats the slice on 3 channels."""

    direction: int
    slice_mode: str = "rgb"
    discarded: tuple[int, int] = (0, 0)
    num_slices: Optional[int] = None
    prepare_dl: bool = False
    mode = "slice"

    def element_ids(self, image_shape: Sequence[int]) -> list[int]:
        begin, end = self.discarded
        count = self.num_slices if self.num_slices is not None else image_shape[self.direction + 1] - begin - end
        if count <= 0 or begin + count > image_shape[self.direction + 1]:
            raise MapsInterpretError(
                f"slice mode: {count} slice(s) from index {begin} do not fit an image of shape {tuple(image_shape)} "
                f"along axis {self.direction} (maps.json discarded_slices/num_slices)")
        return [begin + k for k in range(count)]

    def extract(self, image: torch.Tensor, element: int) -> torch.Tensor:
        plane = image.select(self.direction + 1, element)  # (1, *2D)
        if self.slice_mode == "rgb":
            plane = torch.cat((plane, plane, plane))
        return plane.clone()

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, *3D) -> (N * slices, 1 or 3, *2D)."""
        ids = self.element_ids(tuple(images.shape[1:]))
        planes = images.narrow(self.direction + 2, ids[0], len(ids)).movedim(self.direction + 2, 1)
        planes = planes.reshape(-1, *planes.shape[2:])  # (N * slices, C, *2D)
        if self.slice_mode == "rgb":
            planes = planes.expand(-1, 3 * planes.shape[1], *planes.shape[2:]) if planes.shape[1] == 1 \
                else torch.cat((planes, planes, planes), dim=1)
        return planes.contiguous()

    def region(self, element: int, image_shape: Sequence[int]) -> tuple[slice, ...]:
        """The slice's plane, one voxel thick along the slice direction."""
        return tuple(slice(element, element + 1) if axis == self.direction else slice(0, s)
                     for axis, s in enumerate(image_shape[1:]))

    def element_file(self, image_path: Path, element: int) -> Path:
        prefix, suffix = _split_name(image_path)
        return (_based_dir(image_path, "slice") / f"{prefix}_axis-{SLICE_AXES[self.direction]}"
                f"_channel-{self.slice_mode}_slice-{element}{suffix}")


@dataclass(frozen=True)
class RoiLayout:
    """Regions of interest: image x binary mask, cropped to the mask's bounding box unless `uncropped`."""

    masks: tuple[np.ndarray, ...] = field(compare=False)
    mask_paths: tuple[Path, ...]
    uncropped: bool = False
    prepare_dl: bool = False
    mode = "roi"

    def element_ids(self, image_shape: Sequence[int]) -> list[int]:
        for mask, path in zip(self.masks, self.mask_paths):
            if tuple(mask.shape[-3:]) != tuple(image_shape[1:]):
                raise MapsInterpretError(f"mask {path} has shape {mask.shape} but the images are "
                                         f"{tuple(image_shape[1:])}")
        return list(range(len(self.masks)))

    _on_device: dict = field(default_factory=dict, compare=False, repr=False)  # (element, device) -> mask, crop

    def _stacked(self, element: int) -> np.ndarray:
        """The mask with its channel axis, as the images have one."""
        mask = self.masks[element]
        return mask[np.newaxis] if mask.ndim == 3 else mask

    def _kept(self, element: int) -> list[np.ndarray]:
        """Per axis of the (channel-first) mask, the indices where it is non-zero somewhere: what a crop keeps."""
        mask = self._stacked(element)
        return [np.flatnonzero(mask.any(axis=tuple(a for a in range(4) if a != axis))) for axis in range(4)]

    def _mask(self, element: int, device: torch.device) -> tuple[torch.Tensor, Optional[tuple]]:
        key = (element, str(device))
        if key not in self._on_device:  # once per region and device, not once per image
            keep = None if self.uncropped else np.ix_(*self._kept(element))
            self._on_device[key] = (torch.from_numpy(self._stacked(element)).to(device), keep)
        return self._on_device[key]

    def extract(self, image: torch.Tensor, element: int) -> torch.Tensor:
        mask, keep = self._mask(element, image.device)
        region = image.double() * mask  # as ClinicaDL: float64 product, then float32
        if keep is not None:
            region = region[keep]
        return region.float().clone()

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, *3D) -> (N * regions, C, *region), regions per image in `roi_list` order."""
        parts = [torch.stack([self.extract(image, element) for element in range(len(self.masks))])
                 for image in images]
        return torch.cat(parts) if parts else images.new_empty((0, *images.shape[1:]))

    def region(self, element: int, image_shape: Sequence[int]) -> tuple:
        """The voxels `extract` keeps (`_kept`; the whole image when uncropped): a slice per axis where they are
        contiguous (the bounding box; always for a connected region), else the index array (a mask whose
        projection has gaps)."""
        spatial = self._stacked(element).shape[1:]
        if self.uncropped:
            return tuple(slice(0, s) for s in spatial)
        out = []
        for kept in self._kept(element)[1:]:
            contiguous = kept.size and kept[-1] - kept[0] + 1 == kept.size
            out.append(slice(int(kept[0]), int(kept[-1]) + 1) if contiguous else kept)
        return tuple(out)

    def weight(self, element: int) -> np.ndarray:
        """The mask over `region`: the network sees image x mask, so a voxel outside the mask never reaches it."""
        inside = (self._stacked(element) != 0).any(0)
        return inside if self.uncropped else inside[np.ix_(*self._kept(element)[1:])]

    def element_file(self, image_path: Path, element: int) -> Path:
        name = image_path.name
        parts = name.split("_")
        prefix = "_".join(parts[:3])
        if not prefix.endswith("_T1w"):
            prefix = "_".join(parts[:2])
        suffix = parts[-1].split(".")[0]
        return _based_dir(image_path, "roi") / f"{prefix}_{roi_output_pattern(self.mask_paths[element], not self.uncropped)}_{suffix}.pt"


def roi_output_pattern(mask_path: Path, cropped: bool) -> str:
    """The space/desc/roi part of a pre-extracted ROI file name, from its mask's name."""
    words = mask_path.name.split("_")
    template = words[0].split("-")[1]
    descriptors = words[1:-2]
    roi = words[-2].split("-")[1]
    if "desc-Crop" in descriptors:
        descriptors = [d for d in descriptors if d != "desc-Crop"]
        descriptors = ["desc-CropRoi" if cropped else "desc-CropImage"] + descriptors
    elif cropped:
        descriptors = ["desc-CropRoi"] + descriptors
    middle = "_".join(descriptors)
    return f"space-{template}_{middle}_roi-{roi}" if middle else f"space-{template}_roi-{roi}"


def discarded_slices(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) in (1, 2) and all(isinstance(v, int) for v in value):
        return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
    raise MapsInterpretError(f"maps.json: discarded_slices must be an integer or a list of 1 or 2 integers, got {value!r}")


TEMPLATES = {"t1-linear": "MNI152NLin2009cSym", "pet-linear": "MNI152NLin2009cSym", "flair-linear": "MNI152NLin2009cSym"}
MASK_PATTERNS = {"t1-linear": "res-1x1x1", "pet-linear": "res-1x1x1", "flair-linear": "res-1x1x1"}


def find_masks(caps: Path, prep: dict) -> list[Path]:
    """The masks of roi mode, one per name of `roi_list` (`find_mask`)."""
    roi_list = prep.get("roi_list")
    if not roi_list:
        raise MapsInterpretError("roi mode: maps.json preprocessing_dict has no roi_list")
    return [find_mask(caps, prep, roi) for roi in roi_list]


def find_mask(caps: Path, prep: dict, roi: str, who: str = "roi mode") -> Path:
    """`<caps>/masks/tpl-<template>/*<pattern>*_roi-<roi>_mask.nii*` with `_desc-Crop_` in the name (the first in
    sorted order when several match), as ClinicaDL's roi mode finds it; `who` starts the errors."""
    preprocessing = prep.get("preprocessing")
    template = prep.get("roi_custom_template") if preprocessing == "custom" else TEMPLATES.get(preprocessing)
    pattern = prep.get("roi_custom_mask_pattern") if preprocessing == "custom" else MASK_PATTERNS.get(preprocessing)
    if template is None:
        raise MapsInterpretError(f"{who}: no mask template for preprocessing {preprocessing!r} "
                                 "(set roi_custom_template in maps.json preprocessing_dict)")
    folder = caps / "masks" / f"tpl-{template}"
    candidates = sorted(p for p in folder.glob(f"*{pattern or ''}*_roi-{roi}_mask.nii*") if "_desc-Crop_" in p.name)
    if not candidates:
        known = sorted({p.name.split("_roi-")[1].split("_mask")[0] for p in folder.glob("*_roi-*_mask.nii*")})
        raise MapsInterpretError(f"{who}: no mask for region {roi!r} in {folder} (expected "
                                 f"*{pattern or ''}*_roi-{roi}_mask.nii* with _desc-Crop_ in the name; regions "
                                 f"there: {', '.join(known) or 'none'})")
    return candidates[0]


def layout_for(prep: dict, caps: Optional[Path] = None):
    """The layout of a MAPS' preprocessing_dict; roi mode reads its masks from `caps`."""
    mode = prep.get("mode")
    prepare_dl = bool(prep.get("prepare_dl", False))
    try:
        if mode == "image":
            return ImageLayout()
        if mode == "patch":
            return PatchLayout(int(prep["patch_size"]), int(prep["stride_size"]), prepare_dl)
        if mode == "slice":
            direction = int(prep.get("slice_direction", 0))
            if direction not in SLICE_AXES:
                raise MapsInterpretError(f"maps.json: slice_direction must be 0, 1 or 2, got {direction}")
            slice_mode = prep.get("slice_mode", "rgb")
            if slice_mode not in ("rgb", "single"):
                raise MapsInterpretError(f"maps.json: slice_mode must be rgb or single, got {slice_mode!r}")
            num = prep.get("num_slices")
            return SliceLayout(direction, slice_mode, discarded_slices(prep.get("discarded_slices", 0)),
                               int(num) if num is not None else None, prepare_dl)
        if mode == "roi":
            import nibabel as nib

            paths = find_masks(caps, prep)
            masks = tuple(np.asarray(nib.load(p).get_fdata()) for p in paths)
            return RoiLayout(masks, tuple(paths), bool(prep.get("uncropped_roi", False)), prepare_dl)
    except KeyError as missing:
        raise MapsInterpretError(f"maps.json: preprocessing_dict lacks {missing} needed by mode {mode!r}") from None
    raise MapsInterpretError(f"maps.json: mode {mode!r} is not one of image, patch, slice, roi")
