"""ClinicaDL 2.0.0's preprocessing (data/clinicadl2*.py) against 2.0 itself: every session of the 2.0 fixture,
then each supported transform and extraction on small synthetic images with odd values and orientations, read
by 2.0's own `get_dataset_from_json` (torchio, SimpleITK) and by our nibabel + torch pipeline."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from clinicadl2_oracle import import_clinicadl2
from helpers import DEVICES, fixture2_root
from maps_interpret.data import clinicadl2_ops as ops
from maps_interpret.data.clinicadl2 import Pipeline2, layout_for_extraction
from maps_interpret.data.clinicadl2_extraction import Patch2Layout, Slice2Layout
from maps_interpret.data.elements import ImageLayout, PatchLayout, SliceLayout
from maps_interpret.errors import MapsInterpretError

IMAGE = "t1_linear/{0}_{1}_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz"
FILE_TYPE = {"suffix": "T1w", "data_type": "t1_linear", "extension": ".nii.*", "with_entities": {
    "space": "MNI152NLin2009cSym", "desc": "Crop", "res": "1x1x1"}, "without_entities": {}, "description": "t1"}
SHAPE = (9, 10, 11)
# torchio's Pad hands numpy.pad a torch scalar as the constant (maximum, minimum, median modes): numpy 2 warns.
NP_PAD_WARNING = "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"


@pytest.fixture(scope="module")
def cdl2():
    import_clinicadl2()
    import clinicadl.transforms.config as config
    from clinicadl.data.datasets.factory import get_dataset_from_json
    from clinicadl.transforms import TransformsHandler
    from clinicadl.transforms.extraction import Image, Patch, Slice

    return SimpleNamespace(C=config, Handler=TransformsHandler, Image=Image, Patch=Patch, Slice=Slice,
                           load=get_dataset_from_json)


def rotation(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def affine_of(linear: np.ndarray, origin=(-4.0, 7.5, 2.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, origin
    return affine


# RAS, LAS, LPS (anisotropic), PSL (permuted axes), an oblique one with anisotropic voxels.
AFFINES = {
    "ras": affine_of(np.eye(3)),
    "las": affine_of(np.diag([-1.0, 1.0, 1.0])),
    "lps": affine_of(np.diag([-1.0, -0.8, 1.2])),
    "psl": affine_of(np.array([[0, 0, -1.0], [-1.0, 0, 0], [0, -1.0, 0]])),
    "oblique": affine_of(rotation(25) @ np.diag([1.2, 0.9, 1.5])),
}
# Not orthonormal: SimpleITK refuses it, and 2.0 with it (it reads the image information first); we read it.
SHEARED = affine_of(rotation(25) @ np.diag([1.2, 0.9, 1.5]) @ rotation(-10).T)


def odd_values(seed: int) -> np.ndarray:
    """Negative and positive values, a constant slab, repeated values, a large outlier."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=SHAPE) * 150 - 30).astype(np.float32)
    x[:, :3] = -7.25
    x[2, 4, 5] = 4e4
    x[5:, 6:, :2] = np.round(x[5:, 6:, :2] / 50) * 50
    return x


def write_caps(root: Path, images: dict) -> Path:
    """A CAPS holding `images` {(participant, session): Nifti1Image}, as 2.0's Bids reader wants it."""
    caps = root / "caps"
    caps.mkdir(parents=True)
    (caps / "dataset_description.json").write_text(json.dumps(
        {"Name": "synthetic", "BIDSVersion": "1.9.0", "DatasetType": "derivative", "CAPSVersion": "1.0.0"}))
    for (participant, visit), image in images.items():
        path = session_file(caps, participant, visit)
        path.parent.mkdir(parents=True)
        nib.save(image, path)
    return caps


@pytest.fixture(scope="module")
def caps(tmp_path_factory) -> Path:
    images = {(f"sub-{name}", "ses-M000"): nib.Nifti1Image(odd_values(seed), affine)
              for seed, (name, affine) in enumerate(AFFINES.items())}
    return write_caps(tmp_path_factory.mktemp("cdl2"), images)


def session_file(caps: Path, participant: str, visit: str = "ses-M000") -> Path:
    return caps / "subjects" / participant / visit / IMAGE.format(participant, visit)


def dataset_json(caps: Path, transforms: dict, path: Path) -> Path:
    """A 2.0 dataset.json over every session of `caps` (2.0 counts the samples itself)."""
    sessions = sorted((p.parent.parent.parent.name, p.parent.parent.name) for p in caps.rglob("*_T1w.nii.gz"))
    data = {"participant_id": {str(i): s[0] for i, s in enumerate(sessions)},
            "session_id": {str(i): s[1] for i, s in enumerate(sessions)}}
    path.write_text(json.dumps({"name_": "BidsDataset", "data": data, "transforms": transforms, "columns": None,
                                "bids": {"name_": "Bids", "path": str(caps)}, "file_type": FILE_TYPE,
                                "masks": None}))
    return path


def handler_dict(cdl2, image=(), sample=(), extraction=None, augmentations=()) -> dict:
    """A "transforms" record exactly as 2.0 writes it, from its own config classes."""
    handler = cdl2.Handler(extraction=extraction or cdl2.Image(), image_transforms=list(image),
                           sample_transforms=list(sample), augmentations=list(augmentations))
    return json.loads(json.dumps(handler.config.to_dict()))


def oracle(cdl2, caps: Path, transforms: dict, tmp_path: Path):
    """2.0's dataset in evaluation mode (what its Trainer validates and tests with)."""
    dataset = cdl2.load(dataset_json(caps, transforms, tmp_path / "dataset.json"))
    dataset.eval()
    return dataset


def image_path(sample) -> Path:
    path = sample["image_path"]
    return Path(path[0] if isinstance(path, (list, tuple)) else path)


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """Bit for bit, NaN where NaN."""
    theirs = theirs.float()
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape, f"{what}: {ours.shape} vs {theirs.shape}"
    nan = torch.isnan(theirs)
    assert torch.equal(torch.isnan(ours), nan), f"{what}: NaN in other places"
    assert torch.equal(ours[~nan], theirs[~nan]), f"{what}: max |diff| {(ours - theirs)[~nan].abs().max():.3g}"


def compare_images(cdl2, caps: Path, transforms: dict, tmp_path: Path) -> None:
    pipeline = Pipeline2.from_transforms(transforms, "dataset.json")
    dataset = oracle(cdl2, caps, transforms, tmp_path)
    assert len(dataset) == len(list(caps.rglob("*_T1w.nii.gz")))
    for index in range(len(dataset)):
        sample = dataset[index]
        ours, affine = pipeline.read(image_path(sample))
        names = [t["name_"] for t in transforms["image_transforms"]]
        assert_same(ours, sample.image.data, f"{sample.participant_id} {names}")
        assert np.allclose(affine, sample.image.affine, atol=1e-4), f"{sample.participant_id}: affine"


# --- The fixture: every session of both MAPS, test/train/validation groups, against 2.0's own dataset.

def fixture_dataset_jsons() -> list:
    root = fixture2_root()
    if root is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason="ClinicaDL 2.0.0 fixture not found"))]
    return sorted(str(p.relative_to(root)) for p in root.glob("maps_*/**/dataset.json"))


@pytest.fixture(scope="module")
def fixture_copy(tmp_path_factory) -> Path:
    """The fixture's CAPS copied (2.0 resolves dataset.json's relative bids path; the fixture stays untouched)."""
    root, copy = fixture2_root(), tmp_path_factory.mktemp("fixture2")
    for data in ("data", "data_las"):
        shutil.copytree(root / data, copy / data, ignore=shutil.ignore_patterns("tsv"))
    return copy


@pytest.mark.parametrize("relative", fixture_dataset_jsons())
def test_fixture_sessions_are_what_clinicadl2_feeds(cdl2, fixture_copy, relative, tmp_path):
    record = json.loads((fixture2_root() / relative).read_text())
    record["bids"]["path"] = str(fixture_copy / record["bids"]["path"])
    (tmp_path / "dataset.json").write_text(json.dumps(record))
    pipeline = Pipeline2.from_transforms(record["transforms"], relative)
    assert layout_for_extraction(record["transforms"]["extraction"], relative) == ImageLayout()
    dataset = cdl2.load(tmp_path / "dataset.json")
    dataset.eval()
    assert len(dataset) == len(record["data"]["participant_id"]) >= 4
    for index in range(len(dataset)):
        sample = dataset[index]
        ours, affine = pipeline.read(image_path(sample))
        assert_same(ours, sample.image.data, f"{relative} {sample.participant_id} {sample.session_id}")
        assert np.allclose(affine, sample.image.affine, atol=1e-5)
        assert nib.aff2axcodes(affine) == ("R", "A", "S")  # LAS files after ToCanonical, RAS files as stored


# --- Each transform against 2.0 on synthetic images.

def transform_cases(C):
    # (2.0.0 cannot build CropOrPadConfig or PadConfig with their default padding_mode 0: a float is given)
    R, Z = C.RescaleIntensityConfig, C.ZNormalizationConfig
    return {
        "rescale": [R()],
        "rescale-percentiles": [R(out_min_max=(-1.0, 1.0), percentiles=(1.0, 99.0))],
        "rescale-odd": [R(out_min_max=(-3.3, 255.7), percentiles=(2.5, 97.3))],
        "rescale-in-range": [R(out_min_max=(0.0, 10.0), in_min_max=(-50.0, 300.0))],
        "rescale-in-range-percentiles": [R(in_min_max=(-20.5, 120.0), percentiles=(5.0, 95.0))],
        "rescale-one-number": [R(out_min_max=2.0, percentiles=(0.5, 99.5))],
        "rescale-left": [R(masking_method="Left", percentiles=(1.0, 99.0))],
        "rescale-anterior": [R(masking_method="anterior")],
        "rescale-bounds": [R(masking_method=(1, 2, 3), percentiles=(10.0, 90.0))],
        "rescale-six-bounds": [R(masking_method=(0, 1, 2, 3, 4, 0))],
        "znorm": [Z()],
        "znorm-superior": [Z(masking_method="Superior")],
        "znorm-bounds": [Z(masking_method=2)],
        "clamp": [C.ClampConfig(out_min=-20.5, out_max=100.25)],
        "clamp-low": [C.ClampConfig(out_min=0.0)],
        "mask": [C.MaskConfig(masking_method=(1, 2, 0, 1, 3, 2), outside_value=-3.5)],
        "mask-right": [C.MaskConfig(masking_method="Right")],
        "canonical": [C.ToCanonicalConfig(), R(percentiles=(1.0, 99.0))],
        "crop": [C.CropConfig(cropping=(1, 2, 3)), R()],
        "crop-six": [C.CropConfig(cropping=(0, 1, 2, 3, 1, 0))],
        "pad-constant": [C.PadConfig(padding=(1, 2, 3), padding_mode=2.5)],
        "pad-edge": [C.PadConfig(padding=(0, 2, 1, 0, 3, 1), padding_mode="edge")],
        "pad-reflect-wide": [C.PadConfig(padding=(12, 3, 0, 11, 25, 1), padding_mode="reflect")],
        "pad-symmetric": [C.PadConfig(padding=(10, 1, 2, 13, 0, 4), padding_mode="symmetric")],
        "pad-wrap": [C.PadConfig(padding=(9, 2, 1, 21, 3, 0), padding_mode="wrap")],
        "pad-maximum": [C.PadConfig(padding=1, padding_mode="maximum")],
        "pad-minimum": [C.PadConfig(padding=(2, 0, 1), padding_mode="minimum")],
        "pad-median": [C.PadConfig(padding=(1, 2, 3), padding_mode="median")],
        "crop-or-pad": [C.CropOrPadConfig(target_shape=(6, 13, 12), padding_mode=0.0), R()],
        "crop-or-pad-edge": [C.CropOrPadConfig(target_shape=(12, 7, 11), padding_mode="edge")],
        "multiple-pad": [C.EnsureShapeMultipleConfig(target_multiple=4)],
        "multiple-crop": [C.EnsureShapeMultipleConfig(target_multiple=(2, 3, 4), method="crop")],
        "canonical-crop-znorm": [C.ToCanonicalConfig(), C.CropOrPadConfig(target_shape=(8, 8, 8), padding_mode=0.0),
                                 Z()],
        # intensity first, then a crop/pad run by `intensity` and ToCanonical moved before the clamp and rescale
        "rescale-then-crop": [R(percentiles=(1.0, 99.0)), C.CropConfig(cropping=(1, 0, 2))],
        "znorm-then-pad-median": [Z(), C.PadConfig(padding=2, padding_mode="median"), C.ClampConfig(out_max=1.5)],
        "clamp-rescale-canonical": [C.ClampConfig(out_min=-100.0), R(), C.ToCanonicalConfig(),
                                    C.MaskConfig(masking_method=(2, 1, 1))],
        "everything": [C.ToCanonicalConfig(), C.CropConfig(cropping=1), C.ClampConfig(out_max=500.0),
                       R(out_min_max=(-1.0, 1.0), percentiles=(0.5, 99.5)),
                       C.CropOrPadConfig(target_shape=8, padding_mode=-0.5),
                       Z(masking_method="Posterior"), C.MaskConfig(masking_method="Inferior", outside_value=0.5)],
    }


CASES = ["rescale", "rescale-percentiles", "rescale-odd", "rescale-in-range", "rescale-in-range-percentiles",
         "rescale-one-number", "rescale-left", "rescale-anterior", "rescale-bounds", "rescale-six-bounds", "znorm",
         "znorm-superior", "znorm-bounds", "clamp", "clamp-low", "mask", "mask-right", "canonical", "crop",
         "crop-six", "pad-constant", "pad-edge", "pad-reflect-wide", "pad-symmetric", "pad-wrap", "pad-maximum",
         "pad-minimum", "pad-median", "crop-or-pad", "crop-or-pad-edge", "multiple-pad", "multiple-crop",
         "canonical-crop-znorm", "rescale-then-crop", "znorm-then-pad-median", "clamp-rescale-canonical",
         "everything"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.filterwarnings(NP_PAD_WARNING)
def test_transform_matches_clinicadl2(cdl2, caps, case, tmp_path):
    cases = transform_cases(cdl2.C)
    assert sorted(cases) == sorted(CASES)
    compare_images(cdl2, caps, handler_dict(cdl2, image=cases[case]), tmp_path)


def test_sample_transforms_of_an_image_follow_its_transforms(cdl2, caps, tmp_path):
    C = cdl2.C
    transforms = handler_dict(cdl2, image=[C.ToCanonicalConfig()], sample=[C.CropConfig(cropping=1),
                                                                            C.RescaleIntensityConfig()])
    compare_images(cdl2, caps, transforms, tmp_path)


def test_augmentations_never_apply_at_evaluation(cdl2, caps, tmp_path):
    C = cdl2.C
    transforms = handler_dict(cdl2, image=[C.ZNormalizationConfig()],
                              augmentations=[C.RandomNoiseConfig(std=(5.0, 6.0)), C.RandomGammaConfig()])
    assert Pipeline2.from_transforms(transforms, "x").names == ["ZNormalization"]
    compare_images(cdl2, caps, transforms, tmp_path)


@pytest.mark.filterwarnings("ignore:Rescaling image .* not possible:RuntimeWarning")  # torchio's, on 2.0's side
@pytest.mark.filterwarnings(NP_PAD_WARNING)
def test_nan_infinite_and_constant_images(cdl2, tmp_path):
    """2.0 reads NaN and infinite voxels as 0 (SimpleITK does); a constant image is left as it is by
    RescaleIntensity and makes ZNormalization fail."""
    base = odd_values(7)
    with_nan, with_inf, constant = base.copy(), base.copy(), np.full(SHAPE, 3.5, np.float32)
    with_nan[1, 2, 3] = np.nan
    with_inf[4, 4, 4] = np.inf
    images = {(f"sub-{name}", "ses-M000"): nib.Nifti1Image(x, AFFINES["las"])
              for name, x in (("nan", with_nan), ("inf", with_inf), ("constant", constant))}
    caps = write_caps(tmp_path / "nan", images)
    C = cdl2.C
    for index, image in enumerate([[C.RescaleIntensityConfig(percentiles=(1.0, 99.0))],
                                   [C.RescaleIntensityConfig(in_min_max=(0.0, 10.0))],
                                   [C.ToCanonicalConfig(), C.ClampConfig(out_min=0.0, out_max=5.0)],
                                   [C.PadConfig(padding=1, padding_mode="median"), C.MaskConfig(masking_method=1)],
                                   [C.RescaleIntensityConfig(percentiles=5.0)]]):  # torchio reads it as (5, 5)
        (tmp_path / str(index)).mkdir()
        compare_images(cdl2, caps, handler_dict(cdl2, image=image), tmp_path / str(index))
    pipeline = Pipeline2.from_transforms(handler_dict(cdl2, image=[C.ZNormalizationConfig()]), "z.json")
    assert torch.isfinite(pipeline.read(session_file(caps, "sub-nan"))[0]).all()
    with pytest.raises(MapsInterpretError, match="sub-constant.*standard deviation 0.*z.json"):
        pipeline.read(session_file(caps, "sub-constant"))


def test_stored_dtypes(cdl2, tmp_path):
    """Integer, scaled and float64 files: 2.0 keeps an integer file's dtype until an intensity transform."""
    x = odd_values(3)
    images = {}
    for name, dtype, slope in (("int16", np.int16, None), ("uint8", np.uint8, None), ("scaled", np.int16, 0.37),
                               ("float64", np.float64, None)):
        values = np.abs(x) % 250 if dtype == np.uint8 else x
        image = nib.Nifti1Image(values.astype(dtype) if slope is None else np.round(values / 0.37 + 8),
                                AFFINES["oblique"])
        image.set_data_dtype(dtype)
        if slope is not None:
            image.header.set_slope_inter(slope, -3.3)
        images[(f"sub-{name}", "ses-M000")] = image
    caps = write_caps(tmp_path / "dtypes", images)
    C = cdl2.C
    for index, image in enumerate([[], [C.PadConfig(padding=2, padding_mode=4.0), C.MaskConfig(masking_method=1)],
                                   [C.ClampConfig(out_min=0.5), C.PadConfig(padding=1, padding_mode=0.25)],
                                   [C.ToCanonicalConfig(), C.RescaleIntensityConfig(percentiles=(1.0, 99.0))]]):
        (tmp_path / str(index)).mkdir()
        compare_images(cdl2, caps, handler_dict(cdl2, image=image), tmp_path / str(index))
    # a fraction written into an integer image: 2.0 truncates it, we refuse that file (floats are fine)
    pipeline = Pipeline2.from_transforms(handler_dict(cdl2, image=[C.MaskConfig(masking_method=1, outside_value=0.5)]),
                                         "m.json")
    with pytest.raises(MapsInterpretError, match=r"sub-int16.*int16.*Mask.*0\.5.*m\.json") as error:
        pipeline.read(session_file(caps, "sub-int16"))
    assert "\n" not in str(error.value)
    pipeline.read(session_file(caps, "sub-float64"))
    pipeline = Pipeline2.from_transforms(handler_dict(cdl2, image=[C.PadConfig(padding=1, padding_mode=-4.0)]),
                                         "p.json")
    with pytest.raises(MapsInterpretError, match=r"sub-uint8.*uint8.*Pad.*-4\.0"):  # 2.0 would wrap it to 252
        pipeline.read(session_file(caps, "sub-uint8"))


# --- The affine, batches, the device path, pickling.

def test_affine_places_every_voxel_where_the_file_has_it(cdl2, tmp_path):
    """Unique values: each voxel of the network input comes from one file voxel; both have the same world
    coordinates (ToCanonical, crops and pads in read_spatial, and a CropOrPad that `intensity` applies)."""
    C = cdl2.C
    transforms = handler_dict(cdl2, image=[C.ToCanonicalConfig(), C.CropConfig(cropping=(1, 0, 2, 1, 0, 3)),
                                           C.PadConfig(padding=(2, 1, 0), padding_mode=-1.0),
                                           C.ClampConfig(out_min=-5.0),
                                           C.CropOrPadConfig(target_shape=(7, 12, 9), padding_mode=-2.0)])
    pipeline = Pipeline2.from_transforms(transforms, "a.json")
    assert [op.name for op in pipeline.device] == ["Clamp", "CropOrPad"]
    values = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    for name, file_affine in [*AFFINES.items(), ("sheared", SHEARED)]:
        path = tmp_path / f"{name}.nii"  # uncompressed: nibabel maps it in memory
        nib.save(nib.Nifti1Image(values, file_affine), path)
        spatial, affine = pipeline.read_spatial(path)
        x = pipeline.intensity(spatial)[0]
        assert x.shape == (7, 12, 9)
        inside = np.argwhere(x.numpy() >= 0)
        assert len(inside) > 100
        source = np.stack(np.unravel_index(x.numpy()[tuple(inside.T)].astype(int), SHAPE), axis=1)
        assert np.allclose(nib.affines.apply_affine(affine, inside),
                           nib.affines.apply_affine(file_affine, source), atol=1e-9), name
        if name not in ("oblique", "sheared"):
            assert nib.aff2axcodes(affine) == ("R", "A", "S")


def test_intensity_of_a_batch_is_that_of_each_image(cdl2, caps):
    C = cdl2.C
    transforms = handler_dict(cdl2, image=[C.RescaleIntensityConfig(percentiles=(2.0, 98.0), masking_method="Left"),
                                           C.CropConfig(cropping=1), C.ZNormalizationConfig(masking_method=(1, 0, 2)),
                                           C.PadConfig(padding=2, padding_mode="median"),
                                           C.MaskConfig(masking_method="Anterior", outside_value=-1.0)])
    pipeline = Pipeline2.from_transforms(transforms, "b.json")
    pipeline = pickle.loads(pickle.dumps(pipeline))  # loader workers get a copy
    batch = torch.stack([pipeline.read_spatial(p)[0] for p in sorted(caps.rglob("*_T1w.nii.gz"))])
    together = pipeline.intensity(batch)
    assert together.shape == (len(AFFINES), 1, 11, 12, 13)
    for index, image in enumerate(batch):
        assert torch.equal(together[index], pipeline.intensity(image))
    assert pipeline.intensity(batch[:0]).shape == (0, 1, 11, 12, 13)


def test_percentile_formula_is_numpys():
    """The percentile route for GPUs (numpy's formula on sorted values) equals numpy, ties and infinities too."""
    rng = np.random.default_rng(0)
    arrays = [(rng.normal(size=n) * 10.0 ** rng.integers(-3, 5)).astype(np.float32) for n in (1, 2, 3, 7, 100, 1001)]
    arrays += [np.round(rng.normal(size=500) * 3).astype(np.float32), np.array([1, 2, np.inf, -3], np.float32),
               np.array([-np.inf, 5, 5, 5], np.float32), np.array([2.0, np.nan, 1.0], np.float32)]
    qs = [(0.0, 100.0), (1.0, 99.0), (2.5, 97.3), (0.5, 99.5), (33.3, 66.6), (49.99, 50.01), (0, 100)]
    for array in arrays:
        for q in qs:
            with np.errstate(invalid="ignore"):
                expected = np.percentile(array, q)
            got = ops.percentiles(torch.from_numpy(array), q, use_numpy=False)
            assert np.array_equal(np.array(got), expected, equal_nan=True), (array[:4], q, got, expected)
    x = torch.from_numpy(np.stack([odd_values(s) for s in range(3)]))[:, None]
    for args in [((0.0, 1.0), (1.0, 99.0), None, None), ((-2.0, 3.5), (0.3, 99.1), None, ops.masking_method((1, 2, 3))),
                 ((0.0, 1.0), (10.0, 90.0), (-5.0, 80.0), "Right")]:
        assert torch.equal(ops.rescale(x, *args, use_numpy=False), ops.rescale(x, *args, use_numpy=True))


@pytest.mark.parametrize("device", DEVICES)
def test_intensity_on_the_device(cdl2, caps, device):
    """On a GPU: RescaleIntensity, crops and pads bit for bit; ZNormalization within float32 summation order."""
    C = cdl2.C
    rescale = Pipeline2.from_transforms(handler_dict(cdl2, image=[C.RescaleIntensityConfig(
        percentiles=(1.0, 99.0), masking_method=(1, 2, 0)), C.PadConfig(padding=1, padding_mode="reflect"),
        C.MaskConfig(masking_method=1, outside_value=0.5), C.ClampConfig(out_max=0.9)]), "d.json")
    znorm = Pipeline2.from_transforms(handler_dict(cdl2, image=[C.ZNormalizationConfig()]), "d.json")
    batch = torch.stack([rescale.read_spatial(p)[0] for p in sorted(caps.rglob("*_T1w.nii.gz"))])
    assert torch.equal(rescale.intensity(batch.to(device)).cpu(), rescale.intensity(batch))
    assert torch.allclose(znorm.intensity(batch.to(device)).cpu(), znorm.intensity(batch), rtol=1e-5, atol=1e-5)


# --- Refusals: one line naming the transform and the dataset.json.

def refused(C):
    return {
        "Resample": [C.ResampleConfig(target=2.0)],
        "Resize": [C.ResizeConfig(target_shape=(4, 4, 4))],
        "OneOf": [C.OneOfConfig(transforms=[C.ZNormalizationConfig(), C.RescaleIntensityConfig()])],
        "RandomNoise": [C.RandomNoiseConfig()],
        "Pad": [C.PadConfig(padding=1, padding_mode="mean")],
        "CropOrPad": [C.CropOrPadConfig(target_shape=4, padding_mode="linear_ramp")],
        "RescaleIntensity": [C.RescaleIntensityConfig(masking_method="brain")],
        "ToCanonical": [C.ZNormalizationConfig(), C.ToCanonicalConfig()],
    }


@pytest.mark.parametrize("name", ["Resample", "Resize", "OneOf", "RandomNoise", "Pad", "CropOrPad",
                                  "RescaleIntensity", "ToCanonical"])
def test_refusals_are_one_line(cdl2, name):
    transforms = handler_dict(cdl2, image=refused(cdl2.C)[name])
    with pytest.raises(MapsInterpretError) as error:
        Pipeline2.from_transforms(transforms, "/maps/test/group-test/dataset.json")
    message = str(error.value)
    assert "\n" not in message and name in message and "/maps/test/group-test/dataset.json" in message, message


def test_other_refusals_and_no_ops(cdl2):
    C, where = cdl2.C, "w.json"
    for record, word in [({"name_": "CropOrPad", "target_shape": 4, "mask_name": "brain"}, "CropOrPad"),
                         ({"name_": "Format", "dtype": "float64"}, "Format"), ({"name_": "Nonsense"}, "Nonsense"),
                         ({"name_": "Crop"}, "cropping")]:
        with pytest.raises(MapsInterpretError, match=word) as error:
            Pipeline2.from_transforms({"extraction": {"name_": "Image"}, "image_transforms": [record]}, where)
        assert "\n" not in str(error.value) and where in str(error.value)
    with pytest.raises(MapsInterpretError, match=r"w\.json.*sample_transforms\[0\] Crop"):
        Pipeline2.from_transforms(handler_dict(cdl2, sample=[C.CropConfig(cropping=1)],
                                               extraction=cdl2.Patch(patch_size=4)), where)
    quiet = [{"name_": "Format", "dtype": "float64", "include": ["label"]},
             {"name_": "MergeFields", "keys": ["age", "sex"], "output_key": "label"},
             {"name_": "RemapLabels", "remapping": {"1": 2}}, {"name_": "ZNormalization", "exclude": ["image"]}]
    assert Pipeline2.from_transforms({"image_transforms": quiet}, where).names == []


# --- Extractions: the same elements, in the same order, as 2.0's samples.

def test_extraction_layouts(cdl2):
    P, S = cdl2.Patch, cdl2.Slice

    def layout(extraction):
        return layout_for_extraction(json.loads(json.dumps(extraction.config.to_dict())), "e.json")

    assert layout(cdl2.Image()) == ImageLayout()
    assert layout(P(patch_size=4, overlap=0.5, pad_mode=None)) == PatchLayout(4, 2)
    assert isinstance(layout(P(patch_size=4)), Patch2Layout)
    assert layout(S(slice_direction=2)) == SliceLayout(2, "single", (0, 0))
    assert layout(S(borders=(2, 3), slice_direction=1)) == SliceLayout(1, "single", (2, 3))
    assert isinstance(layout(S(discarded_slices=[0, 4])), Slice2Layout)
    for extraction, word in [({"name_": "Slice", "tsv_path": "/x.tsv"}, "tsv_path"),
                             ({"name_": "Slice", "squeeze": False}, "squeeze"), ({"name_": "Roi"}, "Roi"),
                             ({"name_": "Patch", "patch_size": 4, "overlap": 0.9}, "overlap")]:
        with pytest.raises(MapsInterpretError, match=word) as error:
            layout_for_extraction(extraction, "e.json")
        assert "\n" not in str(error.value) and "e.json" in str(error.value)


def extraction_cases(cdl2):
    P, S = cdl2.Patch, cdl2.Slice
    return [P(patch_size=4, overlap=0.5, pad_mode=None), P(patch_size=4),
            P(patch_size=(3, 5, 4), overlap=(0.0, 0.4, 0.25)),
            P(patch_size=(5, 4, 6), pad_mode="reflect"), P(patch_size=6, overlap=0.5, pad_mode="replicate"),
            P(patch_size=(4, 4, 5), pad_mode="circular"), P(patch_size=4, pad_value=-2.5),
            S(), S(slice_direction=1, borders=2), S(slice_direction=2, borders=(1, 3)),
            S(slice_direction=0, discarded_slices=[0, 3, 8], borders=(2, 1)), S(slice_direction=2, slices=[7, 2, 2, 9])]


@pytest.mark.parametrize("case", range(12))
@pytest.mark.filterwarnings("ignore:Setting a value on a DataFrame via .at:pandas.errors.Pandas4Warning")  # 2.0's
@pytest.mark.filterwarnings("ignore:Rescaling image .* not possible:RuntimeWarning")  # torchio's: constant slices
def test_extraction_gives_clinicadl2_samples(cdl2, caps, case, tmp_path):
    C = cdl2.C
    extraction = extraction_cases(cdl2)[case]
    transforms = handler_dict(cdl2, image=[C.ToCanonicalConfig(), C.RescaleIntensityConfig()],
                              sample=[C.RescaleIntensityConfig(out_min_max=(-2.0, 2.0), percentiles=(1.0, 99.0)),
                                      C.ClampConfig(out_min=-1.5)], extraction=extraction)
    pipeline = Pipeline2.from_transforms(transforms, "e.json")
    layout = layout_for_extraction(transforms["extraction"], "e.json")
    dataset = oracle(cdl2, caps, transforms, tmp_path)
    ours = []  # (path, element id, element): every image cut on its own (ToCanonical gives them other shapes)
    for path in sorted(caps.rglob("*_T1w.nii.gz")):
        image = pipeline.read(path)[0]
        ids = layout.element_ids(tuple(image.shape))
        elements = pipeline.sample_intensity(layout.cut(image[None]))
        assert elements.shape[0] == len(ids)
        for element, values in zip(ids, elements):
            one = pipeline.sample_intensity(layout.extract(image, element)[None])[0]
            assert torch.equal(one, values)
            ours.append((path, element, values, layout.region(element, image.shape)))
    assert len(dataset) == len(ours)
    slices = layout.mode == "slice"
    for index, (path, element, values, region) in enumerate(ours):
        sample = dataset[index]
        assert image_path(sample) == path
        theirs = sample.get_image_tensor("image") if slices else sample.image.data
        assert_same(values, theirs, f"{type(layout).__name__} sample {index}")
        if slices:
            direction = extraction.config.slice_direction
            assert sample.sample_position == element and region[direction] == slice(element, element + 1)
        else:
            assert tuple(sample.sample_position) == tuple(r.start for r in region)
