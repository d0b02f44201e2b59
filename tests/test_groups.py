"""Data-group decisions, case by case (ClinicaDL 1.6.1's table, facts §3), with their messages; a refused
command leaves the MAPS byte for byte as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import tree_digest
from maps_interpret.cli import main
from maps_interpret.tables import read_table

MAPS = Path("maps")


def interpret(*args: str) -> int:
    return main(["maps", *args, "--no-gpu", "-np", "0"])


def create_test_group(tsv: str = "data/test.tsv", name: str = "first") -> None:
    assert interpret("test", name, "--participants_tsv", tsv, "--caps_directory", "data/caps") == 0


def refused(capsys, args: list[str], status: int, message: str) -> str:
    """Runs a command that must fail: its status, its one-line message, and an untouched MAPS."""
    before = tree_digest(MAPS)
    assert interpret(*args) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert err and message in err[-1], err
    assert err[-1].startswith("maps-interpret: error: ")
    assert tree_digest(MAPS) == before, "a refused command changed the MAPS"
    return err[-1]


def group_sessions(group: str = "test") -> list[tuple[str, str]]:
    table = read_table(MAPS / "groups" / group / "data.tsv")
    return [(row["participant_id"], row["session_id"]) for row in table.rows]


def write_tsv(path: str, rows: list[tuple[str, str, str]]) -> str:
    Path(path).write_text("participant_id\tsession_id\tdiagnosis\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def test_new_group_is_written_like_clinicadl(demo):
    create_test_group()
    data = (MAPS / "groups" / "test" / "data.tsv").read_text().splitlines()
    assert data[0] == "participant_id\tsession_id\tcohort\tdiagnosis"
    assert data[1] == "sub-TE01\tses-M000\tsingle\tAD"
    assert json.loads((MAPS / "groups" / "test" / "maps.json").read_text()) == {
        "caps_directory": "data/caps", "multi_cohort": False}
    for split in (0, 1):
        folder = MAPS / f"split-{split}" / "best-loss" / "test" / "interpret-first"
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["interpret.json", "mean_image-0_map.pt"]
    assert not (MAPS / "split-0" / "best-accuracy" / "test").exists()  # default selection metric: loss only


def test_existing_group_is_reused(demo):
    create_test_group()
    assert interpret("test", "second") == 0
    assert (MAPS / "split-0" / "best-loss" / "test" / "interpret-second" / "mean_image-0_map.pt").is_file()


def test_training_groups_are_read_per_split(demo):
    assert interpret("train", "tr", "--save_individual") == 0
    for split in (0, 1):
        expected = group_sessions(f"train/split-{split}")
        folder = MAPS / f"split-{split}" / "best-loss" / "train" / "interpret-tr"
        written = sorted(p.name for p in folder.glob("sub-*.pt"))
        assert written == sorted(f"{p}_{s}_image-0_map.pt" for p, s in expected)


def test_existing_group_refuses_new_definition_without_overwrite(demo, capsys):
    create_test_group()
    refused(capsys, ["test", "x", "--participants_tsv", "data/test.tsv"], 2,
            "data group test is already defined")
    refused(capsys, ["train", "x", "--caps_directory", "data/caps"], 2, "data group train is already defined")


@pytest.mark.parametrize("given", [[], ["--participants_tsv", "data/test.tsv"], ["--caps_directory", "data/caps"]])
def test_missing_group_needs_tsv_and_caps(demo, capsys, given):
    missing = [option for option in ("--participants_tsv", "--caps_directory") if option not in given]
    message = refused(capsys, ["newgroup", "x", *given], 2, "data group newgroup does not exist")
    assert message.endswith(f"give {' and '.join(missing)} to create it")


@pytest.mark.parametrize("group", ["train", "validation"])
def test_training_groups_cannot_be_overwritten(demo, capsys, group):
    refused(capsys, [group, "x", "--overwrite"], 2, f"--overwrite cannot be used on the {group} data group")


def test_leaking_participants_are_refused(demo, capsys):
    tsv = write_tsv("leak.tsv", [("sub-TE01", "ses-M000", "AD"), ("sub-TR03", "ses-M000", "AD")])
    refused(capsys, ["leaky", "x", "--participants_tsv", tsv, "--caps_directory", "data/caps"], 1,
            "data leakage: 1 participant(s) of the new data group leaky were used in training (sub-TR03")


def test_overwrite_redefines_the_group_and_erases_its_results(demo):
    create_test_group()
    other = MAPS / "split-0" / "best-accuracy" / "test" / "interpret-first"
    assert interpret("test", "first", "--selection_metrics", "accuracy") == 0 and other.is_dir()
    tsv = write_tsv("two.tsv", [("sub-TE02", "ses-M000", "CN"), ("sub-TE03", "ses-M000", "AD")])
    assert interpret("test", "new", "--participants_tsv", tsv, "--caps_directory", "data/caps", "--overwrite",
                     "--save_individual") == 0
    assert group_sessions() == [("sub-TE02", "ses-M000"), ("sub-TE03", "ses-M000")]  # ClinicaDL kept the old ones
    assert not other.exists() and not (MAPS / "split-0" / "best-loss" / "test" / "interpret-first").exists()
    new = MAPS / "split-0" / "best-loss" / "test" / "interpret-new"
    assert sorted(p.name for p in new.glob("sub-*")) == ["sub-TE02_ses-M000_image-0_map.pt",
                                                         "sub-TE03_ses-M000_image-0_map.pt"]


def test_overwrite_with_only_a_tsv_keeps_the_caps(demo):
    create_test_group()
    tsv = write_tsv("one.tsv", [("sub-TE02", "ses-M000", "CN")])
    assert interpret("test", "new", "--participants_tsv", tsv, "--overwrite") == 0
    assert group_sessions() == [("sub-TE02", "ses-M000")]
    assert json.loads((MAPS / "groups" / "test" / "maps.json").read_text())["caps_directory"] == "data/caps"


def test_overwrite_alone_erases_results_and_keeps_definition(demo):
    create_test_group()
    before = (MAPS / "groups" / "test" / "data.tsv").read_text()
    assert interpret("test", "again", "--overwrite") == 0
    assert (MAPS / "groups" / "test" / "data.tsv").read_text() == before
    assert not (MAPS / "split-0" / "best-loss" / "test" / "interpret-first").exists()
    assert (MAPS / "split-0" / "best-loss" / "test" / "interpret-again").is_dir()


def test_existing_name_is_refused_then_replaced_with_overwrite_name(demo, capsys):
    create_test_group()
    refused(capsys, ["test", "first"], 1, "interpret-first already exists: choose another NAME, or add --overwrite_name")
    mean = MAPS / "split-0" / "best-loss" / "test" / "interpret-first" / "mean_image-0_map.pt"
    old = torch.load(mean, weights_only=True)
    assert interpret("test", "first", "--overwrite_name", "--target_node", "1", "--save_individual") == 0
    assert not torch.equal(torch.load(mean, weights_only=True), old)
    assert len(list(mean.parent.glob("sub-*.pt"))) == 4


def test_unknown_selection_metric_creates_nothing(demo, capsys):
    create_test_group()
    refused(capsys, ["test", "x", "--selection_metrics", "loss", "--selection_metrics", "sensitivity"], 1,
            "split-0 has no model for selection metric 'sensitivity'")
    assert not (MAPS / "split-0" / "best-sensitivity").exists()  # ClinicaDL leaves an empty best-X/ behind


def test_diagnosis_filter_and_its_errors(demo, capsys):
    assert interpret("ad", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                     "-d", "AD") == 0
    assert {row for row in group_sessions("ad")} == {("sub-TE01", "ses-M000"), ("sub-TE01", "ses-M012"),
                                                      ("sub-TE03", "ses-M000")}
    refused(capsys, ["mci", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                     "-d", "MCI"], 1, "no row of data/test.tsv has a diagnosis in ['MCI']")
    Path("nodx.tsv").write_text("participant_id\tsession_id\nsub-TE01\tses-M000\n")
    refused(capsys, ["nodx", "x", "--participants_tsv", "nodx.tsv", "--caps_directory", "data/caps"], 1,
            "nodx.tsv lacks the column(s) diagnosis")


def test_duplicate_and_unsafe_ids_are_refused(demo, capsys):
    tsv = write_tsv("dup.tsv", [("sub-TE01", "ses-M000", "AD"), ("sub-TE01", "ses-M000", "AD")])
    refused(capsys, ["dup", "x", "--participants_tsv", tsv, "--caps_directory", "data/caps"], 1,
            "lists sub-TE01 ses-M000 more than once")
    tsv = write_tsv("evil.tsv", [("../../etc", "ses-M000", "AD")])
    refused(capsys, ["evil", "x", "--participants_tsv", tsv, "--caps_directory", "data/caps"], 1,
            "participant_id '../../etc' cannot be used as a file name")


def test_missing_tensor_is_refused_before_anything_is_written(demo, capsys):
    tsv = write_tsv("ghost.tsv", [("sub-TE01", "ses-M000", "AD"), ("sub-TE09", "ses-M000", "CN")])
    refused(capsys, ["ghost", "x", "--participants_tsv", tsv, "--caps_directory", "data/caps"], 1,
            "no image of sub-TE09 ses-M000 in ")


def test_a_new_groups_data_tsv_reads_back_in_clinicadl_unchanged(tmp_path, monkeypatch):
    """ClinicaDL 1.6.1 reads a group's data.tsv with pd.read_csv(sep="\t"): the same columns (no index column),
    the same rows, as it writes them (to_csv(sep="\t", index=False))."""
    import pandas as pd

    from maps_interpret.cli import main
    from maps_interpret.synthetic import build_demo

    root = tmp_path / "demo"
    build_demo(root, shape=(12, 14, 12), n_train=4, n_test=3, trained=False)
    monkeypatch.chdir(root)
    assert main(["maps", "new", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                 "--no-gpu", "-np", "0"]) == 0
    written = pd.read_csv(root / "maps" / "groups" / "new" / "data.tsv", sep="\t")
    given = pd.read_csv(root / "data" / "test.tsv", sep="\t")
    assert list(written.columns) == ["participant_id", "session_id", "cohort", "diagnosis"]
    assert written.equals(given[list(written.columns)])
