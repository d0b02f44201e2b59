"""Every bad input gets a one-line error naming the file or option, the right exit status, and leaves the
MAPS exactly as it was (issue 5's list, case by case)."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import tree_digest
from maps_interpret.cli import main
from maps_interpret.synthetic import tensor_path

NEW_GROUP = ["--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps"]
MARKER = Path("/tmp/maps-interpret-pickle-ran")


class Payload:
    """Unpickling this would create MARKER: the file must be refused before that can happen."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def maps_json(root: Path, **changes) -> None:
    path = root / "maps" / "maps.json"
    params = json.loads(path.read_text())
    params.update(changes)
    path.write_text(json.dumps(params))


def first_tensor(root: Path) -> Path:
    return tensor_path(root / "data" / "caps", "sub-TE01", "ses-M000")


def model(root: Path) -> Path:
    return root / "maps" / "split-0" / "best-loss" / "model.pth.tar"


CASES = {
    "maps.json missing": (lambda r: (r / "maps" / "maps.json").unlink(), [], 1, "maps.json does not exist"),
    "maps.json unreadable": (lambda r: ((r / "maps" / "maps.json").unlink(), (r / "maps" / "maps.json").mkdir()),
                             [], 1, "cannot read maps/maps.json"),
    "invalid JSON": (lambda r: (r / "maps" / "maps.json").write_text("{"), [], 1, "is not valid JSON"),
    "unknown architecture": (lambda r: maps_json(r, architecture="Unet3D"), [], 1,
                             "model.torchscript.pt does not exist: architecture 'Unet3D' cannot be rebuilt"),
    "model missing": (lambda r: model(r).unlink(), [], 1, "model.pth.tar does not exist"),
    "model truncated": (lambda r: model(r).write_bytes(model(r).read_bytes()[:5000]), [], 1,
                        "truncated, corrupt, or holds more than plain tensors"),
    "wrong architecture": (lambda r: maps_json(r, architecture="Conv4_FC3"), [], 1,
                           "does not fit the architecture in maps.json (wrong shape fc.2.weight"),
    "pickle payload": (lambda r: model(r).write_bytes(pickle.dumps({"model": Payload()})), [], 1,
                       "refused for safety"),
    "unknown selection metric": (lambda r: None, ["--selection_metrics", "f1"], 1,
                                 "split-0 has no model for selection metric 'f1'"),
    "missing split": (lambda r: [shutil.rmtree(p) for p in (r / "maps").glob("split-*")], [], 1,
                      "has no split-<k> folder: no model was trained"),
    "tensor missing": (lambda r: first_tensor(r).unlink(), [], 1, "no image of sub-TE01 ses-M000"),
    "two tensors match": (lambda r: shutil.copy(first_tensor(r), first_tensor(r).parent.parent /
                                                first_tensor(r).name), [], 1, "2 tensors match"),
    "tensor of wrong shape": (lambda r: torch.save(torch.rand(1, 5, 5, 5), first_tensor(r)), [], 1,
                              "has shape (1, 5, 5, 5) but the model was trained on (1, 12, 14, 10)"),
    "tensor of wrong dtype": (lambda r: torch.save(torch.zeros(1, 12, 14, 10, dtype=torch.int16), first_tensor(r)),
                              [], 1, "holds torch.int16 values; expected floating-point"),
    "constant image": (lambda r: torch.save(torch.ones(1, 12, 14, 10), first_tensor(r)), [], 1,
                       "a constant image cannot be min-max normalised"),
    "infinite values": (lambda r: torch.save(torch.rand(1, 12, 14, 10).index_fill_(1, torch.tensor([0]), float("inf")),
                                             first_tensor(r)), [], 1, "holds NaN or infinite values"),
    "target node out of range": (lambda r: None, ["--target_node", "2"], 2,
                                 "--target_node 2 is out of range: the network of maps has 2 output node(s)"),
    "amp on the CPU": (lambda r: None, ["--amp"], 2, "--amp needs the GPU"),
    "TSV without session_id": (lambda r: (r / "data" / "test.tsv").write_text(
        "participant_id\tdiagnosis\nsub-TE01\tAD\n"), [], 1, "lacks the column(s) session_id"),
    "TSV with ragged rows": (lambda r: (r / "data" / "test.tsv").write_text(
        "participant_id\tsession_id\tdiagnosis\nsub-TE01\tses-M000\n"), [], 1, "line 2: 2 tab-separated values"),
    "empty TSV": (lambda r: (r / "data" / "test.tsv").write_text(""), [], 1, "is empty"),
    "label_code null in a classification MAPS": (lambda r: maps_json(r, label_code=None), [], 1,
                                                 "label_code must be an object (null only in a regression MAPS)"),
    "reconstruction MAPS": (lambda r: maps_json(r, network_task="reconstruction", label=None, label_code=None,
                                                output_size=[1, 12, 14, 10]), [], 1,
                            "network_task 'reconstruction' is not supported"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(demo, capsys, case):
    setup, extra, status, message = CASES[case]
    MARKER.unlink(missing_ok=True)
    setup(demo)
    before = tree_digest(demo / "maps") if (demo / "maps").exists() else None
    assert main(["maps", "test", "x", *NEW_GROUP, "--no-gpu", "-np", "0", *extra]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert err and message in err[-1] and err[-1].startswith("maps-interpret: error: "), err
    assert "Traceback" not in "\n".join(err)
    if before is not None:
        assert tree_digest(demo / "maps") == before
    assert not MARKER.exists(), "a model file ran code"


def test_nan_values_become_zero_as_in_clinicadl(demo):
    """NaN (and, with NaN present, +-inf) are replaced before min-max normalisation: the map is finite."""
    image = torch.rand(1, 12, 14, 10)
    image[0, 0, 0, 0] = float("nan")
    image[0, 1, 1, 1] = float("inf")
    torch.save(image, first_tensor(demo))
    assert main(["maps", "test", "x", *NEW_GROUP, "--no-gpu", "-np", "0", "--save_individual"]) == 0
    result = torch.load(demo / "maps" / "split-0" / "best-loss" / "test" / "interpret-x" /
                        "sub-TE01_ses-M000_image-0_map.pt", weights_only=True)
    assert torch.isfinite(result).all()


def test_verbose_shows_the_traceback(demo):
    (demo / "maps" / "maps.json").write_text("{")
    command = [sys.executable, "-m", "maps_interpret", "maps", "test", "x", *NEW_GROUP, "--no-gpu"]
    quiet = subprocess.run(command, capture_output=True, text=True)
    verbose = subprocess.run(command + ["--verbose"], capture_output=True, text=True)
    assert quiet.returncode == verbose.returncode == 1
    assert "Traceback" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1
    assert "Traceback" in verbose.stderr and "is not valid JSON" in verbose.stderr.splitlines()[-1]


def test_disk_full_while_writing(demo, capsys, monkeypatch):
    """A write that fails (ENOSPC) stops the run with one line naming the file; without a checkpoint nothing
    partial stays in the MAPS; with one, it is kept and --continue finishes the run once there is space."""
    from maps_interpret.output import writers

    calls = {"n": 0, "full": True, "after": 3}
    real = writers.save_tensor

    def filling_up(tensor, path):
        calls["n"] += 1
        if calls["n"] > calls["after"] and calls["full"]:
            raise OSError(28, "No space left on device", str(path))
        real(tensor, path)

    monkeypatch.setattr(writers, "save_tensor", filling_up)
    before = tree_digest(demo / "maps")
    assert main(["maps", "test", "x", *NEW_GROUP, "--no-gpu", "-np", "0", "--save_individual"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "_image-0_map.pt failed (No space left on device): free space or fix permissions" in err
    assert err.startswith("maps-interpret: error: writing maps/.maps-interpret-staging/test-x/pass-0-job-")
    assert tree_digest(demo / "maps") == before

    calls["n"], calls["after"] = 0, 5  # the first batch's 4 maps and checkpoint written, then the disk is full
    assert main(["maps", "test", "y", *NEW_GROUP, "--no-gpu", "-np", "0", "--save_individual",
                 "--checkpoint_every", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "free space or fix permissions; the progress is kept in maps/.maps-interpret-staging/test-y: then run " \
           "the same command with --continue" in err
    calls["full"] = False
    assert main(["maps", "test", "y", *NEW_GROUP, "--no-gpu", "-np", "0", "--save_individual",
                 "--checkpoint_every", "1", "--continue"]) == 0
    assert len(list((demo / "maps/split-0/best-loss/test/interpret-y").glob("sub-*.pt"))) == 4


def test_out_of_memory_names_the_model_and_the_fix(demo, capsys, monkeypatch):
    """An allocation failure in the core (GPU memory, most often) is one line naming the model and
    --batch_size; nothing is left in the MAPS."""
    from maps_interpret.engine import Engine, EngineError

    def out_of_memory(self, *args, **kwargs):
        raise EngineError("CUDA out of memory. Tried to allocate 1.56 GiB (GPU 0; 79.1 GiB total capacity)")

    monkeypatch.setattr(Engine, "accumulate", out_of_memory)
    before = tree_digest(demo / "maps")
    assert main(["maps", "test", "x", *NEW_GROUP, "--no-gpu", "-np", "0", "--batch_size", "4"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("maps-interpret: error: maps/split-0/best-loss/model.pth.tar: CUDA out")
    assert err[-1].endswith("; lower --batch_size (now 4)")
    assert tree_digest(demo / "maps") == before


def header_only_group(root: Path, name: str) -> Path:
    folder = root / "maps" / "groups" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.tsv").write_text("participant_id\tsession_id\tcohort\tdiagnosis\n")
    (folder / "maps.json").write_text(json.dumps({"caps_directory": "data/caps", "multi_cohort": False}))
    return folder


@pytest.mark.parametrize("extra", [[], ["--overwrite", "--caps_directory", "data/caps"]])
def test_existing_group_without_rows(demo, capsys, extra):
    """A data.tsv with a header and no rows (kept by --overwrite when no new TSV is given): the usual
    one-line error naming the group, and nothing changes."""
    header_only_group(demo, "empty")
    before = tree_digest(demo / "maps")
    assert main(["maps", "empty", "x", "--no-gpu", "-np", "0", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("maps-interpret: error: data group empty has no session: "
                              "maps/groups/empty/data.tsv has a header but no rows; redefine it with --overwrite")
    assert tree_digest(demo / "maps") == before


def test_training_group_without_rows(demo, capsys):
    (demo / "maps" / "groups" / "validation" / "split-1" / "data.tsv").write_text("\tparticipant_id\tsession_id\n")
    before = tree_digest(demo / "maps")
    assert main(["maps", "validation", "x", "--no-gpu", "-np", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("maps-interpret: error: data group validation has no session for split-1: "
                       "maps/groups/validation/split-1/data.tsv has a header but no rows; this MAPS cannot be "
                       "interpreted on its training data")
    assert tree_digest(demo / "maps") == before
