"""Maps in the space of their images (space.py): element maps placed in the image grid with known answers,
affines checked against the voxels they claim to index, and NIfTI files read back with nibabel."""

from __future__ import annotations

import itertools
import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from maps_interpret.cli import main
from maps_interpret.data.elements import ImageLayout, PatchLayout, RoiLayout, SliceLayout
from maps_interpret.output.space import IMAGE_SPACE, Placement, Reference, to_image, to_image_voxels
from maps_interpret.anatomy import grid_affine as source_affine
from maps_interpret.synthetic import PATTERN, build_demo, nifti_path
from maps_interpret.data.transforms import size_reduction

SHAPE = (20, 22, 18)


def test_patches_are_averaged_where_they_overlap():
    layout = PatchLayout(size=8, stride=6)
    image_shape = (1, *SHAPE)
    ids = layout.element_ids(image_shape)
    maps = {k: torch.full((1, 8, 8, 8), float(k + 1)) for k in ids}
    got = to_image(layout, maps, image_shape)[0]
    grid = layout.grid(image_shape)
    for voxel in [(0, 0, 0), (6, 6, 6), (7, 7, 7), (13, 13, 13), (19, 21, 17), (5, 13, 9)]:
        # Which patches cover the voxel, from the grid's definition: start = index x stride, size 8.
        covering = [k for k, position in enumerate(itertools.product(*[range(g) for g in grid]))
                    if all(6 * p <= v < 6 * p + 8 for p, v in zip(position, voxel))]
        expected = float(np.mean([k + 1 for k in covering])) if covering else 0.0
        assert got[voxel].item() == pytest.approx(expected), voxel
    assert got.shape == SHAPE


def test_rgb_slices_sum_their_channels_at_their_index():
    layout = SliceLayout(direction=1, slice_mode="rgb", discarded=(2, 3))
    image_shape = (1, *SHAPE)
    ids = layout.element_ids(image_shape)
    plane = torch.rand(SHAPE[0], SHAPE[2])
    maps = {k: torch.stack([plane * 1, plane * 2, plane * 3]) * k for k in ids}
    got = to_image(layout, maps, image_shape)[0]
    for k in range(SHAPE[1]):
        expected = 6 * k * plane if k in ids else torch.zeros_like(plane)
        assert torch.allclose(got[:, k, :], expected), k


@pytest.mark.parametrize("gap", [False, True])
def test_regions_go_back_to_their_crop_times_their_mask(gap):
    mask = np.zeros(SHAPE, dtype=np.float32)
    mask[3:9, 4:10, 5:8] = 1
    if gap:  # a second blob: along x the kept indices are not contiguous
        mask[12:14, 5:7, 6:7] = 1
    layout = RoiLayout((mask,), (nifti_path,), uncropped=False)
    image = torch.rand(1, *SHAPE)
    element = layout.extract(image, 0)
    got = to_image(layout, {0: element}, (1, *SHAPE))
    # The region's map is the element itself: back in place it is image x mask, 0 elsewhere.
    assert torch.allclose(got, image * torch.from_numpy(mask))


def test_a_region_with_gaps_is_written_on_the_image_grid():
    """Two blobs in one mask: the crop skips the voxels between them, which no affine can express; the NIfTI is
    then the whole image grid holding image x mask (the element's map here is the element itself)."""
    mask = np.zeros(SHAPE, dtype=np.float32)
    mask[3:6, 4:10, 5:8] = 1
    mask[12:14, 5:7, 6:7] = 1
    layout = RoiLayout((mask,), (nifti_path,), uncropped=False)
    image = torch.rand(1, *SHAPE)
    affine = source_affine(SHAPE)
    volume, got_affine = Placement(layout, 0, (1, *SHAPE), None, Reference(None, affine)).nifti(
        layout.extract(image, 0))
    assert np.array_equal(got_affine, affine)
    assert np.allclose(volume, (image[0] * torch.from_numpy(mask)).numpy())


def test_size_reduction_affine_indexes_the_voxels_it_kept():
    full = (169, 208, 179)
    index = torch.arange(np.prod(full), dtype=torch.float64).reshape(1, *full)
    affine = source_affine(full)
    inverse = np.linalg.inv(affine)
    for factor in (2, 3, 4, 5):
        reduced = size_reduction(index, factor)
        placement = Placement(ImageLayout(), 0, (1, *full), factor, Reference(None, affine))
        _, map_affine = placement.nifti(reduced.float())
        for voxel in [(0, 0, 0), (1, 2, 3), tuple(s - 1 for s in reduced.shape[1:])]:
            source_voxel = inverse @ map_affine @ np.array([*voxel, 1.0])
            assert np.allclose(source_voxel, np.round(source_voxel))
            assert index[(0, *np.round(source_voxel[:3]).astype(int))] == reduced[(0, *voxel)], (factor, voxel)


def test_element_offsets():
    layout = PatchLayout(size=8, stride=6)
    assert to_image_voxels(layout, 5, (1, *SHAPE), None)[:3, 3].tolist() == [0, 12, 6]  # grid (3, 3, 2): (0, 2, 1)
    assert to_image_voxels(SliceLayout(2), 7, (1, *SHAPE), None)[:3, 3].tolist() == [0, 0, 7]


def prep(mode: str, **options) -> dict:
    return {"preprocessing": "t1-linear", "mode": mode, "use_uncropped_image": False,
            "file_type": {"pattern": PATTERN, "description": "t1-linear", "needed_pipeline": "t1-linear"}, **options}


CASES = {
    "image": (None, None),
    "patch": (prep("patch", patch_size=8, stride_size=6, prepare_dl=False), (1, 8, 8, 8)),
    "slice": (prep("slice", slice_direction=1, slice_mode="rgb", discarded_slices=[2, 3], prepare_dl=False),
              (3, 20, 18)),
    "roi": (prep("roi", roi_list=["left"], uncropped_roi=False, prepare_dl=False), (1, 6, 7, 8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_nifti_maps_overlay_their_source_image(tmp_path, monkeypatch, case):
    preprocessing, input_size = CASES[case]
    build_demo(tmp_path, shape=SHAPE, n_train=4, n_test=2, trained=False, preprocessing=preprocessing,
               input_size=input_size, regions={"left": (slice(3, 9), slice(4, 11), slice(5, 13))})
    monkeypatch.chdir(tmp_path)
    assert main(["maps", "test", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                 "--save_individual", "--save_nifti", "--no-gpu", "-np", "0", "--batch_size", "3"]) == 0
    folder = tmp_path / "maps" / "split-0" / "best-loss" / "test" / "interpret-x"
    source = nib.load(nifti_path(tmp_path / "data" / "caps", "sub-TE01", "ses-M000"))
    assert not np.allclose(source.affine, np.eye(4))  # the check below would prove nothing otherwise
    mode = "image" if preprocessing is None else preprocessing["mode"]
    layout = {"image": ImageLayout(), "patch": PatchLayout(8, 6), "slice": SliceLayout(1, "rgb", (2, 3)),
              "roi": None}[mode]
    element_files = sorted(folder.glob(f"sub-TE01_ses-M000_{mode}-*_map.nii.gz"))
    assert element_files
    source_data = source.get_fdata(dtype="float32")
    for path in element_files:
        element = int(path.name.split(f"{mode}-")[1].split("_")[0])
        image = nib.load(path)
        pt = torch.load(str(path).replace(".nii.gz", ".pt"), weights_only=True)
        assert image.get_data_dtype() == np.float32
        # The element's first voxel, through its affine and back through the source's, is where the element
        # starts in the image (known independently of the code under test).
        start = {"image": lambda: (0, 0, 0), "roi": lambda: (3, 4, 5), "slice": lambda: (0, element, 0),
                 "patch": lambda: tuple(6 * int(p) for p in np.unravel_index(element, (3, 3, 2)))}[mode]()
        origin = np.linalg.inv(source.affine) @ image.affine @ np.array([0, 0, 0, 1.0])
        assert np.allclose(origin[:3], start), (path.name, origin)
        assert np.allclose(image.affine[:3, :3], source.affine[:3, :3])
        data = image.get_fdata(dtype="float32")
        if mode == "slice":  # (H, 1, W, 3): the plane at its index, the rgb channels on the 4th axis
            assert data.shape == (SHAPE[0], 1, SHAPE[2], 3)
            assert np.array_equal(data[:, 0], pt.permute(1, 2, 0).numpy())
        else:
            assert np.array_equal(data, pt[0].numpy())
    whole = [folder / f"sub-TE01_ses-M000_{IMAGE_SPACE}_map.nii.gz", folder / f"mean_{IMAGE_SPACE}_map.nii.gz"]
    if mode == "image":
        assert not any(p.exists() for p in whole)
        mean = nib.load(folder / "mean_image-0_map.nii.gz")
        assert np.allclose(mean.affine, source.affine) and mean.shape == source.shape
        return
    for path in whole:
        image = nib.load(path)
        assert np.allclose(image.affine, source.affine) and image.shape == source_data.shape, path.name
        assert np.array_equal(image.get_fdata(dtype="float32"),
                              torch.load(str(path).replace(".nii.gz", ".pt"), weights_only=True)[0].numpy())
    if layout is not None:  # the individual image-space map is made of that session's element maps
        elements = {int(p.name.split(f"{mode}-")[1].split("_")[0]): torch.load(p, weights_only=True)
                    for p in folder.glob(f"sub-TE01_ses-M000_{mode}-*_map.pt")}
        assert torch.equal(torch.load(whole[0].with_suffix("").with_suffix(".pt"), weights_only=True),
                           to_image(layout, elements, (1, *SHAPE)))


def test_without_source_nifti_a_warning_then_identity(tmp_path, monkeypatch, caplog):
    build_demo(tmp_path, shape=SHAPE, n_train=4, n_test=2, trained=False, nifti=False)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="maps_interpret"):
        assert main(["maps", "test", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                     "--save_nifti", "--no-gpu", "-np", "0"]) == 0
    assert "3 of 3 session(s) have no NIfTI image beside their tensor" in caplog.text
    mean = nib.load(tmp_path / "maps" / "split-0" / "best-loss" / "test" / "interpret-x" / "mean_image-0_map.nii.gz")
    assert np.array_equal(mean.affine, np.eye(4)) and mean.shape == SHAPE
