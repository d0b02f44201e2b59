"""End to end against the real ClinicaDL 2.0.0 (../shared/fixtures/clinicadl-2.0.0): its two training outputs
(a CNN classifier with one logit on RAS images, a ResNet regressor on LAS images reoriented by ToCanonical),
interpreted from the CLI and the in-memory API, give the gradient maps 2.0's own pipeline gives (reference/,
within 1e-5 of each map's largest value); the output stays readable by 2.0 itself; every 2.0-specific refusal
is one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from helpers import assert_close_to_reference, fixture2_root

ROOT = fixture2_root()
pytestmark = pytest.mark.skipif(ROOT is None, reason="ClinicaDL 2.0.0 fixture not found (../shared/fixtures)")
CASES = {"maps_cnn_image_cls": "data", "maps_resnet_image_reg": "data_las"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """A writable copy of both outputs and their data, laid out as the fixture (relative CAPS paths)."""
    root = tmp_path_factory.mktemp("clinicadl2")
    for maps, data in CASES.items():
        shutil.copytree(ROOT / maps, root / maps, ignore=shutil.ignore_patterns("reference"))
        shutil.copytree(ROOT / data, root / data)
    return root


def references(maps: str) -> pd.DataFrame:
    return pd.read_csv(ROOT / maps / "reference" / "index.tsv", sep="\t")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maps_interpret", *args], cwd=cwd, capture_output=True, text=True)


def interpret(maps_dir: Path, group: str, name: str, **options):
    from maps_interpret import InterpretConfig
    from maps_interpret import run as run_api

    return run_api(InterpretConfig(input_maps_directory=maps_dir, data_group=group, name=name, gpu=False,
                                   **options))


def result_dir(maps_dir: Path, group: str, checkpoint: str, name: str, split: int = 0) -> Path:
    if group in ("train", "validation"):
        return maps_dir / "training" / "data" / group / f"split-{split}" / "results" / checkpoint / f"interpret-{name}"
    return maps_dir / "test" / f"group-{group}" / "results" / f"split-{split}" / checkpoint / f"interpret-{name}"


@pytest.mark.parametrize("maps", sorted(CASES))
def test_every_reference_map_from_the_cli(outputs: Path, maps: str) -> None:
    """Each group and checkpoint of reference/index.tsv, through the command as a user types it."""
    index = references(maps)
    for (group, checkpoint), rows in index.groupby(["group", "checkpoint"]):
        metric = checkpoint.removeprefix("best-")
        name = f"ref-{metric}"
        done = run([maps, group, name, "gradients", "--selection_metrics", metric, "--save_individual",
                    "--no-gpu"], cwd=outputs)
        assert done.returncode == 0, done.stderr[-2000:]
        folder = result_dir(outputs / maps, group, checkpoint, name)
        for row in rows.itertuples():
            ours = torch.load(folder / f"{row.participant_id}_{row.session_id}_image-0_map.pt", weights_only=True)
            reference = torch.load(ROOT / maps / "reference" / row.file, weights_only=True)
            assert_close_to_reference(ours, reference, f"{maps} {group} {checkpoint} {row.participant_id} "
                                                       f"{row.session_id}")
        mean = torch.load(ROOT / maps / "reference" / Path(rows.iloc[0].file).parent / "mean_image-0_map.pt",
                          weights_only=True)
        assert_close_to_reference(torch.load(folder / "mean_image-0_map.pt", weights_only=True), mean,
                                  f"{maps} {group} {checkpoint} mean")



def test_in_memory_api_gives_the_reference_maps() -> None:
    """Interpreter.from_maps on a 2.0 output, fed what the group's preprocessing makes of each NIfTI."""
    from maps_interpret import Interpreter
    from maps_interpret.data.clinicadl2 import Pipeline2

    maps = ROOT / "maps_resnet_image_reg"
    dataset = json.loads((maps / "test" / "group-test" / "dataset.json").read_text())
    pipeline = Pipeline2.from_transforms(dataset["transforms"], "dataset.json")
    interpreter = Interpreter.from_maps(maps, split=0, selection_metric="mae")
    rows = references("maps_resnet_image_reg").query("group == 'test' and checkpoint == 'best-mae'")
    caps = ROOT / "data_las" / "caps_test" / "subjects"
    batch = torch.stack([pipeline.image(next((caps / r.participant_id / r.session_id / "t1_linear").glob("*.nii.gz")))
                         for r in rows.itertuples()])
    maps_ = interpreter.attribute(batch, method="gradients", target=0)
    for map_, row in zip(maps_, rows.itertuples()):
        reference = torch.load(ROOT / "maps_resnet_image_reg" / "reference" / row.file, weights_only=True)
        assert_close_to_reference(map_, reference, f"API {row.participant_id} {row.session_id}")


def test_nifti_maps_lie_in_the_network_input_space(outputs: Path) -> None:
    """LAS files reoriented by ToCanonical: the NIfTI map carries the canonical affine, so each voxel of the
    map lies at the world position of the input voxel it explains."""
    maps = outputs / "maps_resnet_image_reg"
    interpret(maps, "test", "space", selection_metrics=["loss"], save_individual=True, save_nifti=True)
    folder = result_dir(maps, "test", "best-loss", "space")
    image = nib.load(next((outputs / "data_las" / "caps_test" / "subjects" / "sub-TE02" / "ses-M000").rglob("*.nii.gz")))
    written = nib.load(folder / "sub-TE02_ses-M000_image-0_map.nii.gz")
    canonical = nib.as_closest_canonical(image)
    assert np.allclose(written.affine, canonical.affine)
    assert not np.allclose(written.affine, image.affine)  # the file is LAS: its own affine would mirror the map
    pt = torch.load(folder / "sub-TE02_ses-M000_image-0_map.pt", weights_only=True)
    assert np.allclose(np.asarray(written.dataobj), pt[0].numpy())


def test_a_new_group_from_a_tsv_and_a_caps(outputs: Path) -> None:
    """--participants_tsv/--caps_directory define a test group with the training data's preprocessing: its maps
    are the `test` group's (same sessions); the group is written as 2.0 lays one out, and 2.0 reads it."""
    maps = outputs / "maps_cnn_image_cls"
    interpret(maps, "mine", "g", selection_metrics=["loss"], participants_tsv=outputs / "data" / "tsv" / "test.tsv",
              caps_directory=outputs / "data" / "caps_test", save_individual=True)
    interpret(maps, "test", "g", selection_metrics=["loss"], save_individual=True)
    for split in (0, 1):
        ours = result_dir(maps, "mine", "best-loss", "g", split)
        theirs = result_dir(maps, "test", "best-loss", "g", split)
        for file in sorted(theirs.glob("*_map.pt")):
            assert torch.equal(torch.load(ours / file.name, weights_only=True),
                               torch.load(file, weights_only=True)), file.name
    group = maps / "test" / "group-mine"
    assert (group / "maps_interpret.json").is_file()
    dataset = json.loads((group / "dataset.json").read_text())
    assert dataset["data"]["participant_id"]["0"] == "sub-TE01"
    assert Path(dataset["bids"]["path"]).is_absolute()


def test_the_output_stays_readable_by_clinicadl2(outputs: Path) -> None:
    """ClinicaDL 2.0's own reader and trainer still open the output after maps-interpret wrote into it."""
    from clinicadl2_oracle import import_clinicadl2

    import_clinicadl2()
    from clinicadl.io.maps.maps import Maps
    from clinicadl.train.trainer import Trainer

    maps = outputs / "maps_cnn_image_cls"
    interpret(maps, "test", "readable", selection_metrics=["loss"], save_figures=True)  # with its report
    interpret(maps, "validation", "readable", selection_metrics=["loss"])
    assert (maps / "reports" / "test" / "interpret-readable.html").is_file()
    Maps(maps).read()
    Trainer.from_maps(maps)


def test_refusals_are_one_line(outputs: Path) -> None:
    maps = "maps_cnn_image_cls"
    cases = [
        ([maps, "test", "x", "gradients", "--target_node", "label", "--no-gpu"], "single logit"),
        ([maps, "test", "x", "gradients", "--group_by", "predicted", "--no-gpu"], "single logit"),
        ([maps, "train", "x", "gradients", "--participants_tsv", "data/tsv/test.tsv", "--no-gpu"],
         "defined by the training"),
        ([maps, "leak", "x", "gradients", "--participants_tsv", "data/tsv/labels.tsv", "--caps_directory",
          "data/caps", "--no-gpu"], "data leakage"),
        ([maps, "test", "x", "gradients", "--overwrite", "--participants_tsv", "data/tsv/test.tsv",
          "--caps_directory", "data/caps_test", "--no-gpu"], "written by ClinicaDL 2.0 itself"),
        (["maps_resnet_image_reg", "test", "x", "gradients", "--target_node", "label", "--no-gpu"],
         "regressor"),
    ]
    for args, expected in cases:
        done = run(args, cwd=outputs)
        assert done.returncode != 0 and expected in done.stderr, (args, done.stderr[-800:])
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_moved_output_finds_its_caps_with_caps_directory(outputs: Path, tmp_path: Path) -> None:
    """2.0 records the CAPS as an absolute path of the training machine: where it does not exist, the error
    says to give --caps_directory, which then points the existing group at the CAPS."""
    moved = tmp_path / "elsewhere" / "maps_cnn_image_cls"
    shutil.copytree(outputs / "maps_cnn_image_cls", moved)
    dataset_json = moved / "test" / "group-test" / "dataset.json"
    dataset = json.loads(dataset_json.read_text())
    dataset["bids"]["path"] = "/home/someone/projects/adni/caps_test"
    dataset_json.write_text(json.dumps(dataset))
    done = run([str(moved), "test", "m", "gradients", "--selection_metrics", "loss", "--no-gpu"], cwd=tmp_path)
    assert done.returncode != 0 and "--caps_directory" in done.stderr, done.stderr
    interpret(moved, "test", "m", selection_metrics=["loss"], caps_directory=outputs / "data" / "caps_test")
    assert (result_dir(moved, "test", "best-loss", "m") / "mean_image-0_map.pt").is_file()


@pytest.mark.parametrize("maps", sorted(CASES))
def test_grad_cam_statistics_group_by_and_sanity_check(outputs: Path, maps: str) -> None:
    """The features of 1.6.1 MAPS run on 2.0 outputs: Grad-CAM at each network's cut point, statistics,
    --group_by a column of the group, figures, NIfTI, the sanity check."""
    summary = interpret(outputs / maps, "test", "features", method="grad-cam", selection_metrics=["loss"],
                        statistics=True, group_by="sex", save_figures=True, save_nifti=True, sanity_check=True)
    folder = result_dir(outputs / maps, "test", "best-loss", "features")
    names = {p.name for p in folder.iterdir()}
    assert {"mean_image-0_map.pt", "statistics.tsv", "interpret.json"} <= names, names
    assert any(name.startswith("mean_sex-F") for name in names), names
    mean = torch.load(folder / "mean_image-0_map.pt", weights_only=True)
    assert mean.shape == (1, 40, 48, 40) and mean.abs().sum() > 0
    assert summary is not None


def test_compare_between_the_splits(outputs: Path) -> None:
    maps = outputs / "maps_cnn_image_cls"
    interpret(maps, "test", "cmp", selection_metrics=["loss"])
    from maps_interpret import CompareConfig, compare

    compare(CompareConfig(input_maps_directory=maps, data_group="test", name="cmp"))
    table = next(maps.rglob("agreement.tsv"))
    rows = pd.read_csv(table, sep="\t")
    assert len(rows) >= 1


def test_preprocessing_on_the_device_path_and_parts(outputs: Path) -> None:
    """--preprocess_on device (the GPU's data path: the intensity transforms run on the batch, here on the CPU)
    and a run in two parts merged give the reference maps too."""
    maps = outputs / "maps_resnet_image_reg"
    rows = references("maps_resnet_image_reg").query("group == 'test' and checkpoint == 'best-loss'")
    interpret(maps, "test", "dev", selection_metrics=["loss"], save_individual=True, preprocess_on="device")
    for part in (0, 1):
        interpret(maps, "test", "parts", selection_metrics=["loss"], save_individual=True, num_parts=2, part_id=part)
    interpret(maps, "test", "parts", selection_metrics=["loss"], save_individual=True, num_parts=2, merge_parts=True)
    for name in ("dev", "parts"):
        folder = result_dir(maps, "test", "best-loss", name)
        for row in rows.itertuples():
            ours = torch.load(folder / f"{row.participant_id}_{row.session_id}_image-0_map.pt", weights_only=True)
            reference = torch.load(ROOT / "maps_resnet_image_reg" / "reference" / row.file, weights_only=True)
            assert_close_to_reference(ours, reference, f"{name} {row.participant_id} {row.session_id}")


def test_the_demo_output_is_read_by_clinicadl2(tmp_path: Path) -> None:
    """`make demo`'s ClinicaDL 2.0 output (synthetic2.py) is one that 2.0's own reader and network take."""
    from clinicadl2_oracle import import_clinicadl2, network

    from maps_interpret.synthetic import build_demo

    out = build_demo(tmp_path / "demo", n_train=8, n_test=3, seconds=0.2, trained=False,
                     clinicadl2=True)["clinicadl2"]
    import_clinicadl2()
    from clinicadl.io.maps.maps import Maps

    Maps(out).read()
    model = network(json.loads((out / "model.json").read_text())["network"])
    state = torch.load(out / "training" / "split-0" / "models" / "best_models" / "best-loss" / "model.pt",
                       weights_only=True)
    model.load_state_dict({k.removeprefix("network."): v for k, v in state.items()}, strict=True)
    interpret(out, "test", "demo", save_individual=True)
    assert len(list(result_dir(out, "test", "best-loss", "demo").glob("sub-*_image-0_map.pt"))) == 4
