"""ClinicaDL 2.0.0's preprocessing of a session: its `dataset.json` "transforms" record read once into a
picklable `Pipeline2` that turns a NIfTI file into exactly the tensor 2.0 feeds its network.

What 2.0 does (clinicadl/data/datasets/utils.py, transforms/handlers): torchio reads the file (voxels as stored:
2.0 never reorients unless `ToCanonical` is listed), applies `image_transforms` in list order, extracts the
sample (Image/Patch/Slice, see clinicadl2_extraction.py), applies `sample_transforms` to it, and applies
`augmentations` only when the dataset is in training mode: the Trainer puts validation and test datasets in
eval mode, so evaluation never augments, and neither do we (maps explain the evaluation image).

Here the transforms run in two stages, in 2.0's order: `read_spatial` (CPU, loader workers) reads the file with
nibabel and applies the spatial transforms that come before the first intensity transform; `intensity` applies
the rest (intensity transforms, and any crop or pad listed after one) on whatever device its batch is on. The
arithmetic is in clinicadl2_ops.py. Transforms we cannot reproduce exactly are refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import MapsInterpretError
from . import clinicadl2_ops as ops
from .clinicadl2_extraction import layout_for_extraction

__all__ = ["Pipeline2", "layout_for_extraction"]

# Transforms that cannot be reproduced, and why (what 2.0 would do with them at evaluation).
REFUSED = {
    "Resample": "SimpleITK interpolation, which maps-interpret does not reproduce bit for bit",
    "Resize": "SimpleITK interpolation, which maps-interpret does not reproduce bit for bit",
    "OneOf": "a random choice, drawn again at every read: the network input is not reproducible",
}
LABEL_ONLY = ("RemapLabels", "OneHot")  # torchio label-map transforms: they never touch the (scalar) image
FIELD_ONLY = ("Format", "MergeFields")  # 2.0 transforms of non-image fields (labels, metadata)
FIX = "apply it to the images beforehand (a CAPS given with --caps_directory) and remove it from that file"
RANDOM_FIX = "a randomly transformed input has no exact map: remove it from that file to explain the plain input"


@dataclass(frozen=True)
class Canonical:
    """ToCanonical: nibabel's closest canonical (RAS+) voxel order, as torchio's ToOrientation computes it."""

    name: str = "ToCanonical"


@dataclass(frozen=True)
class Bounds:
    """Crop, Pad, CropOrPad and EnsureShapeMultiple: crops and pads whose sizes follow from the shape."""

    name: str
    kind: str  # "crop", "pad", "crop_or_pad" or "multiple"
    value: tuple  # six bounds, the target shape or the multiple
    padding_mode: object = 0  # a number or a numpy mode (ops.PAD_BY_INDEX, ops.PAD_BY_VALUE)
    method: str = "pad"  # EnsureShapeMultiple's

    def steps(self, shape: tuple) -> list[tuple[str, tuple]]:
        """[("pad" | "crop", six bounds)] for an image of spatial `shape`, in torchio's order (pad, then crop)."""
        if self.kind in ("crop", "pad"):
            return [(self.kind, self.value)]
        target = self.value if self.kind == "crop_or_pad" else ops.multiple_target(shape, self.value, self.method)
        padding, cropping = ops.crop_or_pad_bounds(shape, target)
        return [(kind, b) for kind, b in (("pad", padding), ("crop", cropping)) if b is not None]


@dataclass(frozen=True)
class Intensity:
    """RescaleIntensity, ZNormalization, Clamp or Mask with their parsed arguments."""

    name: str
    args: tuple

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fn = {"RescaleIntensity": ops.rescale, "ZNormalization": ops.znormalize, "Clamp": ops.clamp,
              "Mask": ops.mask}[self.name]
        return fn(x, *self.args)

    @property
    def casts_to_float(self) -> bool:
        """Whether torchio leaves a float tensor (integer images stay integer until then)."""
        return self.name != "Mask"

    @property
    def masked(self) -> bool:
        """Whether its statistics or its effect depend on a region of the grid (masking_method)."""
        return self.name != "Clamp" and self.args[3 if self.name == "RescaleIntensity" else 0] is not None

    @property
    def order_free(self) -> bool:
        """Whether it commutes exactly with a permutation of the voxels (ToCanonical may move before it)."""
        return self.name in ("Clamp", "RescaleIntensity", "Mask") and not self.masked


def _pair(value, percentiles: bool = False) -> tuple[float, float]:
    """torchio's range of one number d: (-d, d), but (d, d) for percentiles (its min_constraint quirk)."""
    if isinstance(value, (int, float)):
        return (value, value) if percentiles else (-value, value)
    low, high = value
    return low, high


def _triple(value) -> tuple[int, int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3


def _touches_image(t: dict) -> bool:
    """torchio's include/exclude: whether the transform applies to the datapoint's "image"."""
    include, exclude = t.get("include"), t.get("exclude")
    return (include is None or "image" in include) and (exclude is None or "image" not in exclude)


def _parse(t: dict):
    """The op of one transform record, None when it leaves the image alone; ValueError (why) when refused."""
    name = t.get("name_")
    if name in LABEL_ONLY:
        return None
    if name in FIELD_ONLY:
        if name == "MergeFields" and t.get("output_key") != "image" or name == "Format" and not _touches_image(t):
            return None
        raise ValueError("it reformats the image field itself, which maps-interpret does not reproduce")
    if not _touches_image(t):
        return None
    if name in REFUSED:
        raise ValueError(REFUSED[name])
    if name == "ToCanonical":
        return Canonical()
    if name in ("Crop", "Pad"):
        bounds = ops.six_bounds(t["cropping" if name == "Crop" else "padding"])
        return Bounds(name, name.lower(), bounds, _padding_mode(t.get("padding_mode", 0)))
    if name == "CropOrPad":
        if t.get("mask_name") is not None:
            raise ValueError("mask_name needs the dataset's masks, which maps-interpret does not read")
        return Bounds(name, "crop_or_pad", _triple(t["target_shape"]), _padding_mode(t.get("padding_mode", 0)))
    if name == "EnsureShapeMultiple":
        return Bounds(name, "multiple", _triple(t["target_multiple"]), 0, t.get("method", "pad"))
    if name == "RescaleIntensity":
        in_min_max = t.get("in_min_max")
        return Intensity(name, (_pair(t.get("out_min_max", (0, 1))),
                                _pair(t.get("percentiles", (0, 100)), percentiles=True),
                                None if in_min_max is None else _pair(in_min_max),
                                ops.masking_method(t.get("masking_method"))))
    if name == "ZNormalization":
        return Intensity(name, (ops.masking_method(t.get("masking_method")),))
    if name == "Clamp":
        if t.get("out_min") is None and t.get("out_max") is None:
            raise ValueError("Clamp needs out_min or out_max")
        return Intensity(name, (t.get("out_min"), t.get("out_max")))
    if name == "Mask":
        return Intensity(name, (ops.masking_method(t.get("masking_method")), float(t.get("outside_value", 0.0))))
    if isinstance(name, str) and name.startswith("Random"):
        raise ValueError("a random transform outside `augmentations` is drawn again at every read, evaluation "
                         "included: the network input is not reproducible")
    raise ValueError("not a ClinicaDL 2.0.0 image transform that maps-interpret reproduces")


def _padding_mode(mode):
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        return float(mode)
    if mode in ops.PAD_BY_INDEX or mode in ops.PAD_BY_VALUE:
        return mode
    if mode == "mean":  # a float32 sum whose rounding depends on torch's thread count and memory layout
        raise ValueError("padding_mode 'mean' (a float32 mean whose last bit depends on how torch sums) is not "
                         "reproduced exactly")
    raise ValueError(f"padding_mode {mode!r} (numpy's linear ramp) is not reproduced exactly")


def _integer_hazards(ops_in_order) -> tuple:
    """Constants written into the image while torchio keeps an integer file's integer dtype (before the first
    intensity transform that makes it float): numpy and torch truncate them there, so an integer file is
    refused when one is not an integer of its range. None stands for a value computed from the image."""
    hazards = []
    for op in ops_in_order:
        if isinstance(op, Intensity) and op.casts_to_float:
            break
        if isinstance(op, Intensity):
            hazards.append((op.name, op.args[1]))
        elif isinstance(op, Bounds) and op.kind != "crop":
            mode = op.padding_mode
            hazards.append((op.name, None if mode == "median" else mode if isinstance(mode, float) else 0.0))
    return tuple(hazards)


@dataclass(frozen=True)
class Pipeline2:
    """2.0's evaluation preprocessing of one dataset.json (see the module docstring)."""

    where: str
    spatial: tuple = ()  # read_spatial's ops, on the CPU
    device: tuple = ()  # intensity's ops, on the batch's device
    sample: tuple = ()  # value-only ops 2.0 applies to each patch or slice (sample_transforms)
    hazards: tuple = field(default=(), repr=False)

    @classmethod
    def from_transforms(cls, transforms: dict, where: str) -> "Pipeline2":
        """From a dataset.json "transforms" dict; MapsInterpretError (one line) for what cannot be reproduced."""
        extraction = (transforms.get("extraction") or {}).get("name_", "Image")
        parsed = {}
        for key in ("image_transforms", "sample_transforms"):
            parsed[key] = []
            for index, record in enumerate(transforms.get(key) or []):
                name = record.get("name_") if isinstance(record, dict) else record
                try:
                    op = _parse(record) if isinstance(record, dict) else _parse({"name_": name})
                except (ValueError, KeyError, TypeError) as why:
                    reason = f"lacks {why}" if isinstance(why, KeyError) else str(why)
                    fix = RANDOM_FIX if "random" in reason else FIX
                    raise MapsInterpretError(f"{where}: transforms.{key}[{index}] {name}: {reason}; {fix}") from None
                if op is not None:
                    parsed[key].append((index, op))
        image = [op for _, op in parsed["image_transforms"]]
        sample = []
        if extraction == "Image":  # the sample is the image: its transforms simply follow
            image += [op for _, op in parsed["sample_transforms"]]
        else:
            for index, op in parsed["sample_transforms"]:
                if not (isinstance(op, Intensity) and not op.masked):
                    raise MapsInterpretError(
                        f"{where}: transforms.sample_transforms[{index}] {op.name}: only RescaleIntensity, "
                        "ZNormalization, Clamp and Mask without masking_method are reproduced on each "
                        f"{extraction.lower()} (a spatial or masked one changes or depends on its grid); {FIX}")
                sample.append(op)
        image = _hoist_canonical(image, where)
        first = next((i for i, op in enumerate(image) if isinstance(op, Intensity)), len(image))
        return cls(where, tuple(image[:first]), tuple(image[first:]), tuple(sample), _integer_hazards(image))

    @property
    def names(self) -> list[str]:
        """The transforms applied, in order (provenance)."""
        return [op.name for op in self.spatial + self.device]

    def read_spatial(self, path) -> tuple[torch.Tensor, np.ndarray]:
        """(C, D, H, W) float32 CPU tensor after the spatial transforms before the first intensity one, and the
        4x4 voxel-to-world affine of the network input's grid (every spatial transform, `intensity`'s too)."""
        import nibabel as nib

        image = nib.load(str(path))
        affine = self.input_grid(image)[0]  # also refuses what is not a 3D image
        self._check_dtype(image, path)
        array = image.get_fdata(dtype=np.float32)
        if not np.isfinite(array).all():  # torchio reads with SimpleITK (2.5.7, ITK 5.4): NaN and +-inf read as 0
            array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
        x = torch.from_numpy(array)[None, None]
        orientation = np.asarray(image.affine, dtype=np.float64)  # crops and pads only move its origin
        for op in self.spatial:
            if isinstance(op, Canonical):
                x, orientation = _to_canonical(x, orientation)
            else:
                x = _apply_bounds(op, x)
        return x[0].contiguous(), affine

    def intensity(self, x: torch.Tensor) -> torch.Tensor:
        """The remaining transforms of (C, *spatial) or a batch (N, C, *spatial), each image with its own
        statistics, on x's device (see clinicadl2_ops.py for the exactness on each device)."""
        single = x.dim() == 4
        batch = (x[None] if single else x).float()
        try:
            for op in self.device:
                batch = _apply_bounds(op, batch) if isinstance(op, Bounds) else op(batch)
        except ops.ZeroStd as error:
            raise MapsInterpretError(f"image {error.image} of the batch: ZNormalization of values with standard "
                                     f"deviation 0 ({self.where}; ClinicaDL 2.0 fails on it too)") from None
        batch = batch.contiguous()
        return batch[0] if single else batch

    def read(self, path) -> tuple[torch.Tensor, np.ndarray]:
        """The network input of a file and its affine, on the CPU: `intensity(read_spatial(path))`."""
        x, affine = self.read_spatial(path)
        try:
            return self.intensity(x), affine
        except MapsInterpretError as error:
            raise MapsInterpretError(f"{path}: {error}") from None

    def image(self, path) -> torch.Tensor:
        """The network input of a file (`read` without the affine): what the loaders hand over."""
        return self.read(path)[0]

    def spatial_image(self, path) -> torch.Tensor:
        """The file after the spatial transforms only (`intensity` then runs on the compute device)."""
        return self.read_spatial(path)[0]

    def input_affine(self, image) -> np.ndarray:
        """The affine `read_spatial` gives for a nibabel image, from its header alone (no voxel is read)."""
        return self.input_grid(image)[0]

    def input_grid(self, image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The affine and spatial shape of the network input made from a nibabel image (after every spatial
        transform, `intensity`'s crops and pads too), from its header alone (no voxel is read)."""
        from nibabel import orientations

        if len(image.shape) != 3:
            raise MapsInterpretError(f"{image.get_filename()}: shape {image.shape}; ClinicaDL 2.0 images here are "
                                     "3D NIfTI files")
        affine, shape = np.asarray(image.affine, dtype=np.float64), tuple(image.shape)
        for op in self.spatial + self.device:
            if isinstance(op, Canonical):
                if "".join(orientations.aff2axcodes(affine)) != "RAS":
                    transform = orientations.ornt_transform(orientations.io_orientation(affine),
                                                            orientations.axcodes2ornt(("R", "A", "S")))
                    affine = affine @ orientations.inv_ornt_aff(transform, shape)
                    moved = [0, 0, 0]
                    for axis, (target, _) in enumerate(transform):
                        moved[int(target)] = shape[axis]
                    shape = tuple(moved)
            elif isinstance(op, Bounds):
                affine = _bounds_affine(op, affine, shape)
                shape = _bounds_shape(op, shape)
        return affine, shape

    def sample_intensity(self, elements: torch.Tensor) -> torch.Tensor:
        """2.0's sample_transforms of patches or slices (N, C, *spatial), each element with its own statistics."""
        for op in self.sample:
            try:
                elements = op(elements)
            except ops.ZeroStd as error:
                raise MapsInterpretError(f"element {error.image}: ZNormalization of values with standard deviation "
                                         f"0 ({self.where}; ClinicaDL 2.0 fails on it too)") from None
        return elements

    def _check_dtype(self, image, path) -> None:
        """Refuse an integer file when torchio would truncate a constant into it (see `_integer_hazards`)."""
        dtype = image.get_data_dtype()
        scaled = getattr(image.dataobj, "slope", 1.0) != 1.0 or getattr(image.dataobj, "inter", 0.0) != 0.0
        if dtype.kind not in "iu" or scaled:
            return
        info = np.iinfo(dtype)
        for name, value in self.hazards:
            if value is None or not float(value).is_integer() or not info.min <= value <= info.max:
                raise MapsInterpretError(
                    f"{path}: stored as {dtype}, where ClinicaDL 2.0 writes {name}'s "
                    f"{'median' if value is None else value} truncated to an integer ({self.where}); "
                    "not reproduced: convert the images to float32")


def _hoist_canonical(image: list, where: str) -> list:
    """ToCanonical listed after intensity transforms moves before them when each commutes exactly with a
    permutation of the voxels; otherwise it is refused (its permutation depends on each file's affine)."""
    out: list = []
    for op in image:
        if isinstance(op, Canonical):
            first = next((i for i, o in enumerate(out) if isinstance(o, Intensity)), len(out))
            if not all(isinstance(o, Intensity) and o.order_free for o in out[first:]):
                raise MapsInterpretError(
                    f"{where}: transforms.image_transforms ToCanonical after {', '.join(o.name for o in out[first:])}: "
                    "reorienting after a masked or statistical intensity transform or a crop/pad that follows one "
                    f"is not reproduced exactly; {FIX}")
            out.insert(first, op)
        else:
            out.append(op)
    return out


def _to_canonical(x: torch.Tensor, affine: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """torchio ToOrientation("RAS") of a (1, C, *3D) tensor: nibabel's io_orientation of the affine."""
    from nibabel import orientations

    if "".join(orientations.aff2axcodes(affine)) == "RAS":
        return x, affine
    transform = orientations.ornt_transform(orientations.io_orientation(affine),
                                            orientations.axcodes2ornt(("R", "A", "S")))
    shape = tuple(x.shape[2:])
    array = orientations.apply_orientation(x[0].permute(1, 2, 3, 0).numpy(), transform)
    out = torch.from_numpy(np.ascontiguousarray(array)).permute(3, 0, 1, 2)[None]
    return out, affine @ orientations.inv_ornt_aff(transform, shape)


def _apply_bounds(op: Bounds, x: torch.Tensor) -> torch.Tensor:
    for kind, bounds in op.steps(tuple(x.shape[2:])):
        x = ops.crop(x, bounds) if kind == "crop" else ops.pad(x, bounds, op.padding_mode)
    return x


def _bounds_shape(op: Bounds, shape: tuple) -> tuple:
    for kind, bounds in op.steps(shape):
        sign = -1 if kind == "crop" else 1
        shape = tuple(s + sign * (bounds[2 * a] + bounds[2 * a + 1]) for a, s in enumerate(shape))
    return shape


def _bounds_affine(op: Bounds, affine: np.ndarray, shape: tuple) -> np.ndarray:
    """torchio's affine update: the origin moves to the first kept voxel (crop) or the first added one (pad)."""
    from nibabel.affines import apply_affine

    for kind, bounds in op.steps(shape):
        low = np.array(bounds[::2], dtype=np.float64)
        affine = affine.copy()
        affine[:3, 3] = apply_affine(affine, low if kind == "crop" else -low)
        shape = _bounds_shape(Bounds(op.name, kind, bounds, op.padding_mode), shape)
    return affine


