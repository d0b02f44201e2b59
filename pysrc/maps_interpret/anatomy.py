"""Synthetic T1-weighted subjects with real anatomy: the MNI ICBM152 2009 template that nilearn's package ships
(1 mm, 197x233x189, with grey- and white-matter maps; no download), put on ClinicaDL's t1-linear grid
(169x208x179 at 1 mm, or the same field of view in fewer, larger voxels for fast tests), each subject made by a
smooth random deformation, a smooth intensity bias, a global scale and noise.

One class ("AD") carries a planted atrophy at anatomical places: both hippocampi darkened towards the intensity
of cerebrospinal fluid (tissue loss), and the lateral ventricles enlarged (a shell of tissue around them turned
to fluid). `planted_mask` is that region on the grid: what a map of a model that learned the difference should
point at (the figures show it; evaluation measures against it).

The grid: t1-linear registers to MNI152NLin2009cSym (1 mm, 193x229x193, TemplateFlow's origin -96, -132, -78)
and crops it to 169x208x179 around the brain. The crop is taken centred here (offsets 12, 10, 7 voxels), which
puts the template's brain where t1-linear's images have theirs; the voxel-to-world affine says where each voxel
is, so every map of these images is placed in MNI millimetres.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

T1_LINEAR_SHAPE = (169, 208, 179)
T1_LINEAR_ORIGIN = (-84.0, -122.0, -71.0)  # MNI mm of the crop's first voxel: -96 + 12, -132 + 10, -78 + 7
TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"  # {}: t1, gm, wm
HIPPOCAMPI = ((-27.0, -23.0, -13.0), (27.0, -23.0, -13.0))  # MNI mm, centres of the ellipsoids planted in
HIPPOCAMPUS_RADII = (7.0, 16.0, 8.0)  # mm along x, y, z
VENTRICLE_BOX = ((-24.0, 24.0), (-45.0, 25.0), (-2.0, 30.0))  # MNI mm: where fluid is lateral ventricle
VENTRICLE_GROWTH = 4  # mm of tissue around the ventricles that the atrophy turns to fluid
CSF_LEVEL = 0.12  # fluid's intensity on the template's 0..1 scale


def grid_affine(shape: Sequence[int]) -> np.ndarray:
    """Voxel-to-world affine (MNI mm) of a grid over t1-linear's field of view: 1 mm voxels for
    169x208x179, larger ones for smaller shapes (the field of view's edges kept)."""
    affine = np.eye(4)
    for axis, (n, full) in enumerate(zip(shape, T1_LINEAR_SHAPE)):
        size = full / n
        affine[axis, axis] = size
        affine[axis, 3] = T1_LINEAR_ORIGIN[axis] - 0.5 + size / 2  # the first voxel's centre
    return affine


def template_path(name: str) -> Path:
    try:
        import nilearn
    except ImportError:
        raise RuntimeError("the synthetic anatomy needs nilearn's MNI template: pip install nilearn") from None
    path = Path(nilearn.__file__).parent / "datasets" / "data" / TEMPLATE.format(name)
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: this nilearn ({nilearn.__version__}) does not ship the MNI ICBM152 "
                           "2009 template; install nilearn>=0.10")
    return path


@functools.lru_cache(maxsize=2)
def _template_1mm() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The template's T1 (0..1) and tissue maps (probabilities), with the two planted regions' weights."""
    import nibabel as nib

    images = {name: nib.load(str(template_path(name))) for name in ("t1", "gm", "wm")}
    affine = images["t1"].affine
    volumes = {name: np.asarray(image.dataobj, dtype=np.float32) / 255.0 for name, image in images.items()}
    volumes["hippocampus"], volumes["ventricle_shell"] = _planted_regions(volumes, affine)
    return volumes, affine


def _world(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """(3, *shape) world coordinates of every voxel."""
    index = np.indices(tuple(shape), dtype=np.float32).reshape(3, -1)
    return (affine[:3, :3] @ index + affine[:3, 3:4]).reshape(3, *shape).astype(np.float32)


def _planted_regions(volumes: dict[str, np.ndarray], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hippocampi: grey matter inside ellipsoids at the hippocampi's MNI coordinates, weighted by its
    probability. Ventricles: fluid (neither grey nor white matter) in the deep box around the lateral
    ventricles; the shell VENTRICLE_GROWTH mm around them is what enlarging them takes."""
    from scipy import ndimage

    x, y, z = _world(volumes["t1"].shape, affine)
    inside = np.zeros(x.shape, dtype=bool)
    for cx, cy, cz in HIPPOCAMPI:
        rx, ry, rz = HIPPOCAMPUS_RADII
        inside |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1
    hippocampus = np.where(inside, volumes["gm"], 0).astype(np.float32)
    (x0, x1), (y0, y1), (z0, z1) = VENTRICLE_BOX
    box = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (z >= z0) & (z <= z1) & (np.abs(x) >= 2)
    fluid = box & (volumes["gm"] + volumes["wm"] < 0.3)
    ventricles = ndimage.binary_opening(fluid, iterations=1)  # the specks of the box's edges go
    grown = ndimage.binary_dilation(ventricles, iterations=VENTRICLE_GROWTH)
    shell = (grown & ~ventricles & (volumes["gm"] + volumes["wm"] > 0.5)).astype(np.float32)
    return hippocampus, ndimage.gaussian_filter(shell, 0.7).astype(np.float32)


def _resample(volume: np.ndarray, source_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """`volume` (1 mm voxels) on the grid (shape, affine), linearly interpolated after a Gaussian blur as wide as
    the grid's voxels (no aliasing on coarse grids)."""
    from scipy import ndimage

    sizes = np.abs(np.diag(affine)[:3])
    sigma = [np.sqrt(max(s ** 2 - 1, 0)) / 2.355 for s in sizes]
    smooth = ndimage.gaussian_filter(volume, sigma) if max(sigma) > 0 else volume
    index = np.linalg.inv(source_affine) @ affine
    coords = (index[:3, :3] @ np.indices(tuple(shape)).reshape(3, -1) + index[:3, 3:4])
    return ndimage.map_coordinates(smooth, coords, order=1, mode="constant").reshape(tuple(shape)).astype(np.float32)


@dataclass(frozen=True)
class Anatomy:
    """The template on one grid: T1 (0..1), the tissue maps, and the planted regions' weights (0..1)."""

    shape: tuple
    affine: np.ndarray
    t1: torch.Tensor
    hippocampus: torch.Tensor
    ventricle_shell: torch.Tensor

    @property
    def atrophy(self) -> torch.Tensor:
        return (0.9 * self.hippocampus + 1.0 * self.ventricle_shell).clamp(max=1.0)


@functools.lru_cache(maxsize=8)
def on_grid(shape: tuple) -> Anatomy:
    volumes, source = _template_1mm()
    affine = grid_affine(shape)
    grid = {name: torch.from_numpy(_resample(volumes[name], source, shape, affine))
            for name in ("t1", "hippocampus", "ventricle_shell")}
    return Anatomy(tuple(shape), affine, grid["t1"].clamp(0, 1), grid["hippocampus"].clamp(0, 1),
                   grid["ventricle_shell"].clamp(0, 1))


def planted_mask(shape: Sequence[int], threshold: float = 0.2) -> np.ndarray:
    """The planted atrophy on the grid, as a binary mask (uint8): the voxels whose intensity the atrophy changes
    by more than `threshold` of its largest change."""
    atrophy = on_grid(tuple(shape)).atrophy
    return (atrophy > threshold * float(atrophy.max())).numpy().astype(np.uint8)


def _smooth_field(shape: Sequence[int], control: Sequence[int], scale: float, channels: int,
                  generator: torch.Generator) -> torch.Tensor:
    """(channels, *shape): Gaussian values at a coarse control grid, interpolated (smooth everywhere)."""
    coarse = scale * torch.randn((1, channels, *control), generator=generator)
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0]


def subject(shape: Sequence[int], diagnosis: str, generator: torch.Generator,
            deformation_mm: float = 2.5, bias: float = 0.08, noise: float = 0.03) -> torch.Tensor:
    """(1, *shape) float32 image of one subject: the template, atrophied for AD (severity 0.7 to 1), deformed by
    a smooth random field of about `deformation_mm` mm, times a smooth bias field and a global scale (50 to 150),
    plus Gaussian noise (`noise` of the scale)."""
    shape = tuple(shape)
    anatomy = on_grid(shape)
    image = anatomy.t1
    severity = 0.7 + 0.3 * torch.rand((), generator=generator)
    if diagnosis == "AD":
        image = image - severity * anatomy.atrophy * (image - CSF_LEVEL)
    sizes = torch.tensor(np.abs(np.diag(anatomy.affine)[:3]), dtype=torch.float32)
    displacement = _smooth_field(shape, (5, 6, 5), deformation_mm, 3, generator) / sizes.view(3, 1, 1, 1)
    index = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    where = index + displacement
    normalised = torch.stack([2 * where[axis] / max(n - 1, 1) - 1 for axis, n in enumerate(shape)], dim=-1)
    # grid_sample's last axis is (x, y, z) = (W, H, D): the reverse of the volume's axes
    image = F.grid_sample(image[None, None], normalised.flip(-1)[None], mode="bilinear", padding_mode="zeros",
                          align_corners=True)[0, 0]
    image = image * torch.exp(_smooth_field(shape, (3, 3, 3), bias, 1, generator)[0])
    scale = 50 + 100 * torch.rand((), generator=generator)
    image = scale * (image + noise * torch.randn(shape, generator=generator))
    return image.unsqueeze(0).float()
