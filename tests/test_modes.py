"""Patch, slice and ROI modes end to end on synthetic MAPS/CAPS made by our own code: element ids and
file names as ClinicaDL names them, every map equal to the pure-PyTorch twin run on elements extracted
here independently (ClinicaDL's formulas, facts §5), means by default and with --compat clinicadl."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import assert_close_to_reference
from maps_interpret.cli import main
from maps_interpret.maps import open_maps
from maps_interpret.models import load_model
from reference import ReferenceEngine
from maps_interpret.output.space import IMAGE_SPACE, to_image
from maps_interpret.synthetic import PATTERN, build_demo, tensor_path

SHAPE = (20, 22, 18)
REGIONS = {"left": (slice(2, 10), slice(3, 11), slice(4, 12)), "right": (slice(9, 17), slice(10, 18), slice(5, 13))}
BATCH = 3


def prep(mode: str, **options) -> dict:
    return {"preprocessing": "t1-linear", "mode": mode, "use_uncropped_image": False,
            "file_type": {"pattern": PATTERN, "description": "t1-linear", "needed_pipeline": "t1-linear"}, **options}


CASES = {
    "patch": (prep("patch", patch_size=8, stride_size=6, prepare_dl=False), (1, 8, 8, 8)),
    "patch-files": (prep("patch", patch_size=8, stride_size=6, prepare_dl=True), (1, 8, 8, 8)),
    "slice-rgb-discarded": (prep("slice", slice_direction=1, slice_mode="rgb", discarded_slices=[2, 3],
                                 prepare_dl=False), (3, 20, 18)),
    "slice-single-files": (prep("slice", slice_direction=2, slice_mode="single", discarded_slices=4, num_slices=6,
                                prepare_dl=True), (1, 20, 22)),
    "roi": (prep("roi", roi_list=["left", "right"], uncropped_roi=False, prepare_dl=False), (1, 8, 8, 8)),
    "roi-uncropped-files": (prep("roi", roi_list=["right", "left"], uncropped_roi=True, prepare_dl=True),
                            (1, *SHAPE)),
}


@pytest.fixture(scope="module", params=list(CASES))
def mode_maps(request, tmp_path_factory):
    preprocessing, input_size = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param) / "demo"
    build_demo(root, shape=SHAPE, n_train=4, n_test=3, trained=False, preprocessing=preprocessing,
               input_size=input_size, regions=REGIONS)
    return request.param, root


def independent_elements(case: str, image: torch.Tensor) -> dict[int, torch.Tensor]:
    """The elements of one image, by ClinicaDL's formulas (not the package's code)."""
    p = CASES[case][0]
    if p["mode"] == "patch":
        ps, st = p["patch_size"], p["stride_size"]
        patches = image.unfold(1, ps, st).unfold(2, ps, st).unfold(3, ps, st).contiguous().view(-1, ps, ps, ps)
        return {k: patches[k].unsqueeze(0) for k in range(patches.shape[0])}
    if p["mode"] == "slice":
        d = p["slice_direction"]
        begin, end = (p["discarded_slices"] * 2)[:2] if isinstance(p["discarded_slices"], list) else \
            (p["discarded_slices"],) * 2
        count = p.get("num_slices", image.shape[d + 1] - begin - end)
        out = {}
        for k in range(begin, begin + count):
            plane = image.select(d + 1, k)
            out[k] = torch.cat([plane] * 3) if p["slice_mode"] == "rgb" else plane
        return out
    out = {}
    for k, name in enumerate(p["roi_list"]):
        mask = torch.zeros(SHAPE)
        mask[REGIONS[name]] = 1
        region = image * mask
        if not p["uncropped_roi"]:
            region = region[(slice(None), *REGIONS[name])]
        out[k] = region
    return out


def min_max(x):
    return (x - x.min()) / (x.max() - x.min())


def expected_maps(root: Path, case: str, method: str, level=None, variant="published"):
    """Per (participant, session, element) maps of the twin, batched as the CLI batches (session-major)."""
    maps = open_maps(root / "maps")
    model = load_model(maps, maps.model_path(0, "loss"))
    twin = ReferenceEngine(model, method=method, level=level, cam_variant=variant)
    rows = [line.split("\t")[:2] for line in (root / "data" / "test.tsv").read_text().splitlines()[1:]]
    flat = []
    for participant, session in rows:
        image = torch.load(tensor_path(root / "data" / "caps", participant, session), weights_only=True)
        for element, x in independent_elements(case, image).items():
            flat.append(((participant, session, element), min_max(x)))
    out = {}
    for start in range(0, len(flat), BATCH):
        chunk = flat[start:start + BATCH]
        maps_ = twin.accumulate(torch.stack([x for _, x in chunk]), [key[2] for key, _ in chunk], return_maps=True)
        out.update({key: m for (key, _), m in zip(chunk, maps_)})
    return out


@pytest.mark.parametrize("method", ["gradients", "grad-cam"])
def test_maps_names_and_means(mode_maps, tmp_path, monkeypatch, method):
    case, source = mode_maps
    root = tmp_path / "demo"
    shutil.copytree(source, root)
    monkeypatch.chdir(root)
    mode = CASES[case][0]["mode"]
    common = ["maps", "test", "x", method, "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
              "--no-gpu", "-np", "1", "--batch_size", str(BATCH)]
    assert main(common + ["--save_individual"]) == 0
    assert main(["maps", "test", "compat", method, "--no-gpu", "-np", "0", "--batch_size", str(BATCH),
                 "--compat", "clinicadl"]) == 0

    expected = expected_maps(root, case, method)
    folder = root / "maps" / "split-0" / "best-loss" / "test" / "interpret-x"
    elements = sorted({key[2] for key in expected})
    sessions = sorted({key[:2] for key in expected})
    names = {f"{p}_{s}_{mode}-{e}_map.pt" for (p, s, e) in expected} | {f"mean_{mode}-{e}_map.pt" for e in elements}
    # Patch, slice and roi maps are also put back into the image grid (space.py), per session and the mean.
    whole = {f"{p}_{s}_{IMAGE_SPACE}_map.pt" for p, s in sessions} | {f"mean_{IMAGE_SPACE}_map.pt"}
    assert {p.name for p in folder.iterdir()} == names | whole | {"interpret.json"}
    layout = open_plan_layout(root)
    means = {e: torch.load(folder / f"mean_{mode}-{e}_map.pt", weights_only=True) for e in elements}
    assert torch.equal(torch.load(folder / f"mean_{IMAGE_SPACE}_map.pt", weights_only=True),
                       to_image(layout, means, (1, *SHAPE)))
    # --compat clinicadl divides its element means again; the image-space map (no ClinicaDL file) stays the mean
    # (compat Grad-CAM is another method: its maps differ).
    compat_whole = root / "maps" / "split-0" / "best-loss" / "test" / "interpret-compat" / f"mean_{IMAGE_SPACE}_map.pt"
    if method == "gradients":
        assert_close_to_reference(torch.load(compat_whole, weights_only=True),
                                  torch.load(folder / f"mean_{IMAGE_SPACE}_map.pt", weights_only=True),
                                  "compat image space")
    for (participant, session, element), reference in expected.items():
        ours = torch.load(folder / f"{participant}_{session}_{mode}-{element}_map.pt", weights_only=True)
        assert_close_to_reference(ours, reference, f"{case} {participant} {session} {mode}-{element}")
    compat = root / "maps" / "split-0" / "best-loss" / "test" / "interpret-compat"
    for element in elements:
        total = sum(expected[(p, s, element)] for p, s in sessions)
        mean = torch.load(folder / f"mean_{mode}-{element}_map.pt", weights_only=True)
        assert_close_to_reference(mean, total / len(sessions), f"mean {mode}-{element}")
        clinicadl = torch.load(compat / f"mean_{mode}-{element}_map.pt", weights_only=True)
        if method == "gradients":  # compat Grad-CAM is another method: compared in test_clinicadl_fixture
            assert_close_to_reference(clinicadl, total / (len(sessions) * len(elements)), f"compat {mode}-{element}")


def open_plan_layout(root: Path):
    from maps_interpret.data.elements import layout_for

    maps = open_maps(root / "maps")
    return layout_for(maps.params["preprocessing_dict"], root / "data" / "caps")


def test_preprocessing_on_the_device_gives_the_loaders_maps(mode_maps, tmp_path, monkeypatch):
    """GPU runs cut and normalise on the device (--preprocess_on auto); here the same path runs on the CPU."""
    case, source = mode_maps
    root = tmp_path / "demo"
    shutil.copytree(source, root)
    monkeypatch.chdir(root)
    group = ["--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps"]  # a new group, then existing
    options = ["--no-gpu", "--batch_size", "4", "--save_individual", "-np", "1"]
    assert main(["maps", "test", "loader", "gradients", *group, *options]) == 0
    assert main(["maps", "test", "device", "gradients", *options, "--preprocess_on", "device"]) == 0
    base = root / "maps" / "split-0" / "best-loss" / "test"
    loader = sorted(p.name for p in (base / "interpret-loader").glob("*.pt"))
    assert loader == sorted(p.name for p in (base / "interpret-device").glob("*.pt")) and len(loader) > 2
    for name in loader:
        assert torch.equal(torch.load(base / "interpret-loader" / name, weights_only=True),
                           torch.load(base / "interpret-device" / name, weights_only=True)), name


def test_element_file_names_follow_clinicadl(tmp_path):
    from maps_interpret.data.elements import PatchLayout, RoiLayout, SliceLayout

    image = Path("caps/subjects/sub-01/ses-M000/deeplearning_prepare_data/image_based/t1_linear/"
                 "sub-01_ses-M000_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.pt")
    based = "caps/subjects/sub-01/ses-M000/deeplearning_prepare_data/{}_based/t1_linear/"
    assert str(PatchLayout(18, 10).element_file(image, 3)) == based.format("patch") + \
        "sub-01_ses-M000_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_patchsize-18_stride-10_patch-3_T1w.pt"
    assert str(SliceLayout(1, "single").element_file(image, 42)) == based.format("slice") + \
        "sub-01_ses-M000_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_axis-cor_channel-single_slice-42_T1w.pt"
    mask = Path("tpl-MNI152NLin2009cSym_desc-Crop_res-1x1x1_roi-hippocampus_mask.nii.gz")
    roi = RoiLayout((), (mask,), uncropped=False)
    assert str(roi.element_file(image, 0)) == based.format("roi") + \
        "sub-01_ses-M000_space-MNI152NLin2009cSym_desc-CropRoi_res-1x1x1_roi-hippocampus_T1w.pt"
    assert RoiLayout((), (mask,), uncropped=True).element_file(image, 0).name == \
        "sub-01_ses-M000_space-MNI152NLin2009cSym_desc-CropImage_res-1x1x1_roi-hippocampus_T1w.pt"


def test_missing_mask_and_element_file_are_clear(tmp_path, monkeypatch, capsys):
    preprocessing, input_size = CASES["patch-files"]
    root = tmp_path / "demo"
    build_demo(root, shape=SHAPE, n_train=4, n_test=2, trained=False, preprocessing=preprocessing,
               input_size=input_size)
    monkeypatch.chdir(root)
    next(root.glob("data/caps/subjects/sub-TE02/*/deeplearning_prepare_data/patch_based/*/*patch-5_T1w.pt")).unlink()
    assert main(["maps", "test", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                 "--no-gpu", "-np", "0"]) == 1
    assert "patch-5_T1w.pt does not exist (maps.json says prepare_dl: true)" in capsys.readouterr().err
    assert not (root / "maps" / "groups" / "test").exists()

    preprocessing, input_size = CASES["roi"]
    root = tmp_path / "roi"
    build_demo(root, shape=SHAPE, n_train=4, n_test=2, trained=False, preprocessing=preprocessing,
               input_size=input_size, regions={"left": REGIONS["left"]})
    monkeypatch.chdir(root)
    assert main(["maps", "test", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                 "--no-gpu", "-np", "0"]) == 1
    assert "roi mode: no mask for region 'right'" in capsys.readouterr().err
