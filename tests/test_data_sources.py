"""Where sessions and models come from: multi-cohort groups, participants given as folders, old
`fold-<k>` MAPS, and custom architectures given as TorchScript files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from maps_interpret.cli import main
from maps_interpret.maps import open_maps
from maps_interpret.models import load_model
from maps_interpret.models.export import to_torchscript
from maps_interpret.tables import read_table

TEST_ROWS = ["sub-TE01\tses-M000\tAD", "sub-TE01\tses-M012\tAD", "sub-TE02\tses-M000\tCN", "sub-TE03\tses-M000\tAD"]


def run(*args: str) -> int:
    return main(["maps", *args, "--no-gpu", "-np", "0"])


def maps_of(folder: Path) -> dict[str, torch.Tensor]:
    return {p.name: torch.load(p, weights_only=True) for p in sorted(folder.glob("*.pt"))}


def result(group: str, name: str, split: str = "split-0") -> Path:
    return Path("maps") / split / "best-loss" / group / f"interpret-{name}"


def test_multi_cohort_group(demo):
    shutil.copytree("data/caps", "data/caps_b")
    Path("a.tsv").write_text("participant_id\tsession_id\tdiagnosis\n" + "\n".join(TEST_ROWS[:3]) + "\n")
    Path("b.tsv").write_text("participant_id\tsession_id\tdiagnosis\n" + TEST_ROWS[3] + "\n")
    Path("cohorts.tsv").write_text("cohort\tdiagnoses\tpath\nA\tAD,CN\ta.tsv\nB\tAD\tb.tsv\n")
    Path("caps.tsv").write_text("cohort\tpath\nA\tdata/caps\nB\tdata/caps_b\n")
    assert run("multi", "m", "--participants_tsv", "cohorts.tsv", "--caps_directory", "caps.tsv", "--multi_cohort",
               "--save_individual") == 0
    group = read_table(Path("maps/groups/multi/data.tsv"))
    assert [(r["participant_id"], r["cohort"]) for r in group.rows] == [
        ("sub-TE01", "A"), ("sub-TE01", "A"), ("sub-TE02", "A"), ("sub-TE03", "B")]
    assert json.loads(Path("maps/groups/multi/maps.json").read_text()) == {"caps_directory": "caps.tsv",
                                                                           "multi_cohort": True}
    # The same images through a single-cohort group give the same maps.
    Path("single.tsv").write_text("participant_id\tsession_id\tdiagnosis\n" + "\n".join(TEST_ROWS) + "\n")
    assert run("single", "s", "--participants_tsv", "single.tsv", "--caps_directory", "data/caps",
               "--save_individual") == 0
    multi, single = maps_of(result("multi", "m")), maps_of(result("single", "s"))
    assert multi.keys() == single.keys() and len(multi) == 5
    assert all(torch.allclose(multi[k], single[k], rtol=0, atol=1e-6 * single[k].abs().max()) for k in multi)


def test_multi_cohort_errors(demo, capsys):
    Path("cohorts.tsv").write_text("cohort\tdiagnoses\tpath\nA\tAD\tdata/test.tsv\n")
    Path("caps.tsv").write_text("cohort\tpath\nA\tdata/caps\n")
    assert run("multi", "m", "--participants_tsv", "cohorts.tsv", "--caps_directory", "caps.tsv",
               "--multi_cohort") == 1
    assert "the cohorts list diagnoses ['AD'], not all of ['AD', 'CN']" in capsys.readouterr().err
    assert run("multi", "m", "--participants_tsv", "cohorts.tsv", "--caps_directory", "caps.tsv") == 1
    assert "lists cohorts (columns 'cohort' and 'path'): add --multi_cohort" in capsys.readouterr().err


def test_participants_as_split_folder_and_per_diagnosis_folder(demo):
    Path("split").mkdir()
    Path("split/labels.tsv").write_text("participant_id\tsession_id\tdiagnosis\tage\n"
                                        + "\n".join(row + "\t70" for row in TEST_ROWS) + "\n")
    assert run("fromsplit", "x", "--participants_tsv", "split", "--caps_directory", "data/caps") == 0
    assert [r["session_id"] for r in read_table(Path("maps/groups/fromsplit/data.tsv")).rows] == \
        ["ses-M000", "ses-M012", "ses-M000", "ses-M000"]

    Path("bydx").mkdir()
    Path("bydx/AD.tsv").write_text("participant_id\tsession_id\nsub-TE01\tses-M000\nsub-TE03\tses-M000\n")
    Path("bydx/CN.tsv").write_text("participant_id\tsession_id\nsub-TE02\tses-M000\n")
    assert run("bydx", "x", "--participants_tsv", "bydx", "--caps_directory", "data/caps", "-d", "CN", "-d", "AD") == 0
    rows = read_table(Path("maps/groups/bydx/data.tsv")).rows
    assert [(r["participant_id"], r["diagnosis"]) for r in rows] == [
        ("sub-TE02", "CN"), ("sub-TE01", "AD"), ("sub-TE03", "AD")]


def test_old_fold_maps(demo):
    for folder in [Path("maps"), Path("maps/groups/train"), Path("maps/groups/validation")]:
        for split in (0, 1):
            shutil.move(folder / f"split-{split}", folder / f"fold-{split}")
    assert run("train", "x", "--save_individual") == 0
    for split in (0, 1):
        expected = {f"{r['participant_id']}_{r['session_id']}_image-0_map.pt"
                    for r in read_table(Path(f"maps/groups/train/fold-{split}/data.tsv")).rows}
        written = {p.name for p in result("train", "x", f"fold-{split}").glob("sub-*.pt")}
        assert written == expected


@pytest.mark.parametrize("method", ["gradients", "grad-cam"])
def test_custom_architecture_as_torchscript(demo, method):
    assert run("test", "native", method, "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps") == 0
    maps = open_maps(Path("maps"))
    for split in (0, 1):
        for metric in ("loss", "accuracy"):
            model = load_model(maps, maps.model_path(split, metric))
            to_torchscript(model).save(str(maps.split_dir(split) / f"best-{metric}" / "model.torchscript.pt"))
    params = json.loads(Path("maps/maps.json").read_text())
    params["architecture"] = "MyOwnNet"
    Path("maps/maps.json").write_text(json.dumps(params))
    assert run("test", "scripted", method) == 0
    native, scripted = maps_of(result("test", "native")), maps_of(result("test", "scripted"))
    assert native.keys() == scripted.keys()
    for key in native:  # a user's TorchScript file runs as given, without the rewrite of models/fast.py
        assert (native[key] - scripted[key]).abs().max() <= 1e-5 * native[key].abs().max()


def test_custom_architecture_without_torchscript_file(demo, capsys):
    params = json.loads(Path("maps/maps.json").read_text())
    params["architecture"] = "MyOwnNet"
    Path("maps/maps.json").write_text(json.dumps(params))
    assert run("train", "x") == 1
    assert "model.torchscript.pt does not exist: architecture 'MyOwnNet' cannot be rebuilt" in capsys.readouterr().err
