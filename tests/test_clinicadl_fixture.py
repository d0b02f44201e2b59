"""End to end against the real ClinicaDL 1.6.1 (../shared/fixtures/clinicadl-1.6.1): every `interpret`
command of its three MAPS (image classification, slice regression, pre-extracted patch classification),
run with maps-interpret instead of `clinicadl interpret`, writes the same files with ClinicaDL's maps:

- `compat`: every command with `--compat clinicadl`: every map is ClinicaDL's;
- `default`: every command as typed: gradients maps are ClinicaDL's, but for the mean maps of patch/slice
  modes, which are ClinicaDL's times the number of elements per image (ClinicaDL divides them again by it);
  Grad-CAM maps are the published method's, equal to the pure-PyTorch twin on the same elements;
- `avx2`: the `compat` commands with oneDNN and ATen limited to AVX2, on a CPU that has more: every map is
  within 1e-5 of one of ClinicaDL's CPU kinds, no flip allowed (so the flips of the native run are the
  kernels' rounding, not a defect);
- `device`: the `compat` commands with `--preprocess_on device` (the GPU's data path, run on the CPU): judged
  as `compat`;
- `cuda`: the `compat` commands on a GPU (cuDNN is judged as one more kind: the flip criterion).

Maps are judged by the rules of parity.py (same-kind reference within 1e-5, or another kind's, or the flip
criterion); the rule each map passed by is summarised at the end of the run."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch

from helpers import assert_close_to_reference, fixture_root
from maps_interpret.output.space import IMAGE_SPACE
from parity import AVX2_EMULATION, cpu_capability, cpu_kind, judge, record, reference_files, reference_sets

pytestmark = pytest.mark.slow
ROOT = fixture_root()
MAPS_LOGS = {"maps_image_cls": "commands.log", "maps_slice_reg": "commands_more.log",
             "maps_patch_cls": "commands_more.log"}
COMPAT_RUNS = ("compat", "avx2", "device", "cuda")


def fixture_commands(maps_name: str) -> list[list[str]]:
    """`clinicadl interpret` argument lists for one MAPS, in the order they were run (the first one creates
    the data group the others use)."""
    commands = []
    for line in (ROOT / MAPS_LOGS[maps_name]).read_text().splitlines():
        words = shlex.split(line)
        if words[:2] == ["clinicadl", "interpret"] and words[2] == maps_name:
            commands.append(words[2:])
    return commands


def method_of(maps_name: str, name: str) -> str:
    return next(args[3] for args in fixture_commands(maps_name) if args[2] == name)


def reference_folders() -> list[tuple[str, str]]:
    if ROOT is None:
        return []
    return [(maps_name, str(p.relative_to(ROOT / maps_name))) for maps_name in MAPS_LOGS
            for p in sorted((ROOT / maps_name).glob("split-*/best-*/*/interpret-*"))]


def run_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maps_interpret", *args], cwd=cwd, capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})


def needs(run: str) -> list:
    if run == "cuda":
        return [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
    if run == "avx2":
        return [pytest.mark.skipif(cpu_capability() != "AVX512", reason="AVX2 emulation needs an AVX-512 CPU")]
    return []


RUNS = [pytest.param(run, marks=needs(run)) for run in ("compat", "default", "avx2", "device", "cuda")]
FOLDERS = reference_folders() or [pytest.param("", "", marks=pytest.mark.skip(reason="ClinicaDL fixture not found"))]


@pytest.fixture(scope="session")
def fixture_runs(clinicadl_fixture, tmp_path_factory):
    """(MAPS, run) -> the working folder after that run's commands; each run is made once, when first asked."""
    done: dict[tuple[str, str], Path] = {}

    def get(maps_name: str, run: str) -> Path:
        if (maps_name, run) not in done:
            work = tmp_path_factory.mktemp(f"{maps_name}-{run}")
            shutil.copytree(clinicadl_fixture / "data", work / "data")
            shutil.copytree(clinicadl_fixture / f"{maps_name}_clean", work / maps_name)
            for args in fixture_commands(maps_name):
                if run in COMPAT_RUNS:
                    args = args + ["--compat", "clinicadl"]
                if run == "cuda":
                    args = ["--gpu" if word == "--no-gpu" else word for word in args]
                if run == "device":
                    args = args + ["--preprocess_on", "device"]
                result = run_cli(args, work, AVX2_EMULATION if run == "avx2" else None)
                assert result.returncode == 0, f"{shlex.join(args)}\n{result.stderr}"
                assert f"on {'cuda' if run == 'cuda' else 'cpu'}" in result.stderr
            done[maps_name, run] = work
        return done[maps_name, run]

    return get


def running_kind(run: str) -> str:
    return {"avx2": "AVX2-emulated", "cuda": "CUDA"}.get(run, cpu_kind())


def load(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("maps_name,folder", FOLDERS)
def test_same_files_and_maps_as_clinicadl(fixture_runs, clinicadl_fixture, maps_name, folder, run):
    sets = reference_sets(clinicadl_fixture, maps_name)
    primary = sets[next(iter(sets))] / folder
    ours = fixture_runs(maps_name, run) / maps_name / folder
    assert ours.is_dir(), f"{folder} was not written"
    # Ours adds the provenance and, in patch/slice/roi mode, the maps put back into the image grid.
    assert sorted(p.name for p in ours.iterdir() if p.name != "interpret.json" and IMAGE_SPACE not in p.name) == \
        sorted(p.name for p in primary.iterdir())
    assert (ours / "interpret.json").is_file()
    method = method_of(maps_name, folder.rsplit("interpret-", 1)[1])
    if run == "default" and method == "grad-cam":
        return  # the published method, not ClinicaDL's: test_default_grad_cam_is_the_published_method
    means = sorted(primary.glob("mean_*.pt"))
    for ref_file in sorted(primary.glob("*.pt")):
        our_map = load(ours / ref_file.name)
        assert our_map.dtype == torch.float32 and not our_map.requires_grad
        assert our_map.untyped_storage().nbytes() == our_map.numel() * 4, "a .pt must hold only its own map"
        references = {kind: load(path) for kind, path in reference_files(sets, f"{folder}/{ref_file.name}").items()}
        if run == "default" and ref_file in means:
            # ClinicaDL divides the sum over sessions by sessions x elements per image; we by sessions.
            references = {kind: ref * len(means) for kind, ref in references.items()}
        record(judge(f"{maps_name}/{folder}/{ref_file.name} ({run})", our_map, references, running_kind(run),
                     allow_flip=run != "avx2"))
    for nifti in sorted(ours.glob("*.nii.gz")):
        image = nib.load(nifti)
        # Ours is the 3-D volume (ClinicaDL writes a 4-D (1, D, H, W) image, its x axis being the channel).
        volume = torch.from_numpy(image.get_fdata(dtype="float32"))
        assert image.get_data_dtype() == "float32" and volume.dim() == 3
        assert torch.equal(volume, load(ours / nifti.name.replace(".nii.gz", ".pt"))[0])


@pytest.mark.parametrize("maps_name,folder", [
    (maps_name, folder) for maps_name, folder in reference_folders()
    if method_of(maps_name, folder.rsplit("interpret-", 1)[1]) == "grad-cam"] or [
    pytest.param("", "", marks=pytest.mark.skip(reason="ClinicaDL fixture not found"))])
def test_default_grad_cam_is_the_published_method(fixture_runs, maps_name, folder):
    """Without --compat, Grad-CAM is Selvaraju et al.'s (all spatial axes pooled, weighted sum, ReLU,
    align_corners=False): each map equals the pure-PyTorch twin on the same elements, the mean is the mean
    over sessions, and both differ from ClinicaDL's variant."""
    from maps_interpret.data.dataset import SessionDataset
    from maps_interpret.cli import build_parser
    from maps_interpret.models import load_model
    from maps_interpret.plan import make_plan
    from reference import reference_grad_cam
    from maps_interpret.data.transforms import Preprocess

    work = fixture_runs(maps_name, "default")
    split, metric, group, name = folder.replace("interpret-", "").split("/")
    args = next(a for a in fixture_commands(maps_name) if a[2] == name)
    config = build_parser().parse_args(args)
    config.selection_metrics, config.overwrite_name = [metric.removeprefix("best-")], True
    config.participants_tsv = config.caps_directory = None  # the group exists now
    cwd = Path.cwd()
    os.chdir(work)  # relative CAPS paths in the MAPS
    try:
        plan = make_plan(config)
    finally:
        os.chdir(cwd)
    (data_pass,) = plan.passes
    dataset = SessionDataset(data_pass.sessions, data_pass.layout, Preprocess.from_params(plan.maps.params),
                             plan.maps.input_size, data_pass.element_ids)
    model = load_model(plan.maps, work / maps_name / split / metric / "model.pth.tar")
    ours_dir = work / maps_name / folder
    sums: dict[int, torch.Tensor] = {}
    for index, session in enumerate(data_pass.sessions):
        elements = dataset[index].elements
        twin = reference_grad_cam(model, elements, config.target_node, config.level_grad_cam, "published")
        clinicadl = reference_grad_cam(model, elements, config.target_node, config.level_grad_cam, "clinicadl")
        for element, twin_map, their_map in zip(data_pass.element_ids, twin, clinicadl):
            sums[element] = sums.get(element, 0) + twin_map
            file = ours_dir / f"{session.participant_id}_{session.session_id}_{plan.maps.mode}-{element}_map.pt"
            if config.save_individual:
                ours = load(file)
                assert_close_to_reference(ours, twin_map, file.name)
                assert (ours >= 0).all()  # ReLU
                assert (ours - their_map).abs().max() > 1e-3 * their_map.abs().max(), "ClinicaDL's variant"
    for element, total in sums.items():
        ours = load(ours_dir / f"mean_{plan.maps.mode}-{element}_map.pt")
        assert_close_to_reference(ours, total / len(data_pass.sessions), f"mean of {plan.maps.mode} {element}")


@pytest.mark.parametrize("maps_name", list(MAPS_LOGS) if ROOT else [pytest.param("", marks=pytest.mark.skip(
    reason="ClinicaDL fixture not found"))])
def test_group_created_as_clinicadl_does(fixture_runs, clinicadl_fixture, maps_name):
    for name in ("data.tsv", "maps.json"):
        ours = (fixture_runs(maps_name, "compat") / maps_name / "groups" / "test" / name).read_text()
        theirs = (clinicadl_fixture / maps_name / "groups" / "test" / name).read_text()
        if name.endswith(".json"):
            assert json.loads(ours) == json.loads(theirs)
        else:
            assert ours.splitlines() == theirs.splitlines()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batch_size_does_not_change_the_maps(fixture_workdir, clinicadl_fixture, batch_size):
    from maps_interpret.cli import main

    args = ["maps_image_cls", "test", "gradients_test", "gradients", "--participants_tsv", "data/tsv/test.tsv",
            "--caps_directory", "data/caps_test", "--save_individual", "--no-gpu", "-np", "0",
            "--batch_size", str(batch_size)]
    assert main(args) == 0
    folder = "split-0/best-loss/test/interpret-gradients_test"
    for ref_file in sorted((clinicadl_fixture / "maps_image_cls" / folder).glob("*.pt")):
        ours = load(fixture_workdir / "maps_image_cls" / folder / ref_file.name)
        assert_close_to_reference(ours, load(ref_file), f"batch {batch_size}: {ref_file.name}")


def test_regression_from_the_cli(clinicadl_fixture, tmp_path, monkeypatch):
    """A regression MAPS (label_code null in maps.json) end to end through the CLI entry point: the one
    output node is the target, a wrong one is refused."""
    from maps_interpret.cli import main

    shutil.copytree(clinicadl_fixture / "data", tmp_path / "data")
    shutil.copytree(clinicadl_fixture / "maps_slice_reg_clean", tmp_path / "maps")
    monkeypatch.chdir(tmp_path)
    assert json.loads((tmp_path / "maps" / "maps.json").read_text())["label_code"] is None
    base = ["maps", "test", "age", "--participants_tsv", "data/tsv/test.tsv", "--caps_directory", "data/caps_test",
            "--no-gpu", "-np", "0"]
    assert main(base + ["--target_node", "1"]) == 2
    assert not (tmp_path / "maps" / "groups" / "test").exists()
    assert main(base) == 0
    folder = tmp_path / "maps" / "split-0" / "best-loss" / "test" / "interpret-age"
    assert sorted(p.name for p in folder.glob("*.pt")) == sorted(
        [f"mean_slice-{k}_map.pt" for k in range(28)] + [f"mean_{IMAGE_SPACE}_map.pt"])
    assert "age" in (tmp_path / "maps" / "groups" / "test" / "data.tsv").read_text().splitlines()[0]
