"""ClinicaDL 2.0.0's extractions (dataset.json `transforms.extraction`) as element layouts (elements.py's
interface: `element_ids`, `extract`, `cut`, `region`, `mode`).

2.0 (clinicadl/transforms/extraction/) cuts the transformed image:
- Image: the image itself, element 0.
- Patch(patch_size, overlap, pad_mode="constant", pad_value=0): each axis is first padded at its END by
  (p - s) mod round(p - p*overlap) voxels (none when pad_mode is null), then patches start every
  round(p * (1 - overlap)) voxels (monai's iter_patch_position), row-major over (D, H, W), last axis fastest.
  Without padding that is 1.6.1's PatchLayout (cubic patches, one stride); with it, patches may reach past the
  image into the padding, which 1.6.1 never does (`Patch2Layout`, whose regions then end outside the image).
- Slice(slice_direction, slices | discarded_slices + borders, squeeze=True): the selected indices along tensor
  axis direction + 1, ascending, each a (C, *2D) slice once squeezed. Element id = slice index. Borders alone
  are SliceLayout's discarded slices (single channel); an explicit list is `Slice2Layout`.
Refused: slices from a TSV file (a different list per session), squeeze=False (3D slabs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import MapsInterpretError
from .elements import ImageLayout, PatchLayout, SliceLayout


def _triple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3


@dataclass(frozen=True)
class Patch2Layout:
    """2.0's Patch extraction where it differs from PatchLayout (padding, non-cubic, per-axis overlap)."""

    size: tuple[int, int, int]
    overlap: tuple[float, float, float]
    pad_mode: Optional[str] = "constant"
    pad_value: float = 0.0
    prepare_dl = False
    mode = "patch"

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(round(p * (1.0 - o)) for p, o in zip(self.size, self.overlap))  # monai's expression

    def padding(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Voxels added at the end of each axis (2.0's own expression, not quite monai's step)."""
        if not self.pad_mode:
            return (0, 0, 0)
        return tuple((p - s) % round(p - (p * o)) for s, p, o in zip(spatial, self.size, self.overlap))

    def grid(self, image_shape: Sequence[int]) -> list[int]:
        padded = [s + a for s, a in zip(image_shape[1:], self.padding(image_shape[1:]))]
        if any(s < p for s, p in zip(padded, self.size)):
            raise MapsInterpretError(f"patch extraction: patches of {self.size} voxels do not fit images of shape "
                                     f"{tuple(image_shape)} (2.0 would feed truncated patches)")
        return [(s - p) // t + 1 for s, p, t in zip(padded, self.size, self.steps)]

    def element_ids(self, image_shape: Sequence[int]) -> list[int]:
        return list(range(int(np.prod(self.grid(image_shape)))))

    def _position(self, element: int, image_shape: Sequence[int]) -> tuple[int, ...]:
        index = np.unravel_index(element, self.grid(image_shape))
        return tuple(int(i) * t for i, t in zip(index, self.steps))

    def _padded(self, images: torch.Tensor) -> torch.Tensor:
        """2.0's torch.nn.functional.pad of (C or N, C, *3D), at the end of each axis."""
        pad = self.padding(images.shape[-3:])
        if not any(pad):
            return images
        return torch.nn.functional.pad(images, (0, pad[2], 0, pad[1], 0, pad[0]), mode=self.pad_mode,
                                       value=self.pad_value if self.pad_mode == "constant" else None)

    def extract(self, image: torch.Tensor, element: int) -> torch.Tensor:
        d, h, w = self._position(element, image.shape)
        p = self.size
        return self._padded(image)[:, d:d + p[0], h:h + p[1], w:w + p[2]].clone()

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, *3D) -> (N * patches, C, *size), in `extract`'s numbering."""
        self.grid(images.shape[1:])
        n, c = images.shape[:2]
        (p0, p1, p2), (t0, t1, t2) = self.size, self.steps
        grid = self._padded(images).unfold(2, p0, t0).unfold(3, p1, t1).unfold(4, p2, t2)
        return grid.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, c, p0, p1, p2)

    def region(self, element: int, image_shape: Sequence[int]) -> tuple[slice, ...]:
        """The patch's box in the image grid; it ends past the image where the patch holds padding."""
        return tuple(slice(s, s + p) for s, p in zip(self._position(element, image_shape), self.size))

    def element_file(self, image_path, element: int):
        raise AssertionError("ClinicaDL 2.0 extracts patches from the image at every read")


@dataclass(frozen=True)
class Slice2Layout:
    """2.0's Slice extraction with an explicit list of slices or of discarded ones (squeezed, single channel)."""

    direction: int
    slices: Optional[tuple[int, ...]] = None
    discarded: Optional[tuple[int, ...]] = None
    borders: Optional[tuple[int, int]] = None
    prepare_dl = False
    mode = "slice"
    slice_mode = "single"

    def element_ids(self, image_shape: Sequence[int]) -> list[int]:
        """2.0's selection (Slice._get_sample_positions), step by step."""
        n = image_shape[self.direction + 1]
        selection = np.ones(n, dtype=bool)
        try:
            if self.slices:
                selection[:] = False
                selection[list(self.slices)] = True
            else:
                if self.discarded:
                    selection[list(self.discarded)] = False
                if self.borders:
                    selection[:self.borders[0]] = False
                    selection[n - self.borders[1]:] = False
        except IndexError:
            raise MapsInterpretError(f"slice extraction: slices {self.slices or self.discarded} outside an image of "
                                     f"{n} slices along axis {self.direction}") from None
        return [int(i) for i in np.flatnonzero(selection)]

    def extract(self, image: torch.Tensor, element: int) -> torch.Tensor:
        return image.select(self.direction + 1, element).clone()

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, *3D) -> (N * slices, C, *2D), slices of each image in ascending order."""
        ids = torch.tensor(self.element_ids(images.shape[1:]), device=images.device)
        planes = images.index_select(self.direction + 2, ids).movedim(self.direction + 2, 1)
        return planes.reshape(-1, *planes.shape[2:]).contiguous()

    def region(self, element: int, image_shape: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(element, element + 1) if axis == self.direction else slice(0, s)
                     for axis, s in enumerate(image_shape[1:]))

    def element_file(self, image_path, element: int):
        raise AssertionError("ClinicaDL 2.0 extracts slices from the image at every read")


def _ints(value, name: str) -> Optional[tuple[int, ...]]:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ValueError(f"{name} must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _layout(extraction: dict):
    name = extraction.get("name_", "Image")
    if name == "Image":
        return ImageLayout()
    if name == "Patch":
        size = tuple(int(v) for v in _triple(extraction["patch_size"]))
        overlap = tuple(float(v) for v in _triple(extraction.get("overlap", 0.0)))
        pad_mode = extraction.get("pad_mode", "constant")
        if pad_mode not in (None, "constant", "reflect", "replicate", "circular"):
            raise ValueError(f"pad_mode {pad_mode!r} is none of 2.0's")
        if any(round(p * (1.0 - o)) < 1 or round(p - p * o) < 1 for p, o in zip(size, overlap)):
            raise ValueError(f"overlap {overlap} leaves patches of {size} voxels no step")
        if pad_mode is None and len(set(size)) == 1 and len(set(overlap)) == 1:
            return PatchLayout(size[0], round(size[0] * (1.0 - overlap[0])))
        return Patch2Layout(size, overlap, pad_mode, float(extraction.get("pad_value", 0.0)))
    if name == "Slice":
        direction = int(extraction.get("slice_direction", 0))
        if direction not in (0, 1, 2):
            raise ValueError(f"slice_direction {direction} is not 0, 1 or 2")
        if extraction.get("tsv_path") is not None:
            raise ValueError("tsv_path selects different slices in each session, which maps-interpret does not")
        if extraction.get("squeeze", True) is not True:
            raise ValueError("squeeze=false feeds 3D one-slice slabs, which maps-interpret does not place")
        slices, discarded = _ints(extraction.get("slices"), "slices"), _ints(extraction.get("discarded_slices"),
                                                                            "discarded_slices")
        borders = extraction.get("borders")
        if borders is not None:  # 2.0 turns one number into (n, n)
            borders = tuple(int(b) for b in (borders if isinstance(borders, (list, tuple)) else (borders,) * 2))
        if not slices and not discarded:
            return SliceLayout(direction, "single", borders or (0, 0))
        return Slice2Layout(direction, slices, discarded, borders)
    raise ValueError(f"extraction {name!r} is none of Image, Patch, Slice")


def layout_for_extraction(extraction: dict, where: str):
    """The layout of a dataset.json `transforms.extraction`; MapsInterpretError (one line) when refused."""
    try:
        return _layout(extraction or {})
    except (ValueError, KeyError, TypeError) as why:
        reason = f"lacks {why}" if isinstance(why, KeyError) else str(why)
        raise MapsInterpretError(f"{where}: transforms.extraction {(extraction or {}).get('name_')}: {reason}; "
                                 "maps-interpret reproduces 2.0's Image, Patch and Slice extractions otherwise"
                                 ) from None


@dataclass(frozen=True)
class SamplePreprocess:
    """What the loaders apply to the elements cut from a 2.0 network input (data/dataset.py's `Preprocess`
    interface): 2.0's sample_transforms of each patch or slice; nothing for an image."""

    pipeline: object  # clinicadl2.Pipeline2

    def output_shape(self, shape: tuple) -> tuple:
        return tuple(shape)

    def batch(self, x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.pipeline.sample_intensity(x) if self.pipeline.sample else x
        if out is not None and out.shape == y.shape:
            y = out.copy_(y)
        bad = ~torch.isfinite(y.reshape(y.shape[0], -1)).all(dim=1)
        return y.contiguous(), bad
