"""The command line: ClinicaDL's spellings, usage errors (status 2), one-line errors (status 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maps_interpret.runner import run as runner
from maps_interpret.cli import build_parser, main
from maps_interpret.config import InterpretConfig
from maps_interpret.errors import MapsInterpretError


def parse(*argv: str) -> InterpretConfig:
    return build_parser().parse_args(list(argv))


def test_clinicadl_command_lines_parse_unchanged():
    config = parse("maps", "test", "grads", "gradients", "--participants_tsv", "t.tsv", "--caps_directory", "caps",
                   "--selection_metrics", "loss", "--selection_metrics", "accuracy", "--save_individual",
                   "--save_nifti", "--no-gpu", "-np", "1", "--batch_size", "3", "-d", "AD", "-d", "CN",
                   "--target_node", "1", "-o", "-on", "--level_grad_cam", "4")
    assert config == InterpretConfig(
        input_maps_directory=Path("maps"), data_group="test", name="grads", method="gradients",
        participants_tsv=Path("t.tsv"), caps_directory=Path("caps"), selection_metrics=["loss", "accuracy"],
        save_individual=True, save_nifti=True, gpu=False, n_proc=1, batch_size=3, diagnoses=["AD", "CN"],
        target_node=1, overwrite=True, overwrite_name=True, level_grad_cam=4)


def test_defaults():
    config = parse("maps", "test", "name")
    assert (config.method, config.selection_metrics, config.gpu, config.amp, config.batch_size, config.n_proc,
            config.target_node, config.diagnoses) == ("gradients", ["loss"], True, False, 2, 2, 0, [])
    assert parse("maps", "test", "name", "--overwrite_name").overwrite_name
    assert parse("maps", "test", "name", "--gpu", "--amp").amp


def test_help_is_quick_and_lists_the_options():
    code = "import sys, maps_interpret.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    result = subprocess.run([sys.executable, "-m", "maps_interpret", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("INPUT_MAPS_DIRECTORY", "DATA_GROUP", "NAME", "METHOD", "--selection_metrics",
                   "--participants_tsv", "--caps_directory", "--multi_cohort", "--diagnoses", "--target_node",
                   "--save_individual", "--n_proc", "--no-gpu", "--amp", "--batch_size", "--overwrite_name",
                   "--save_nifti", "--level_grad_cam", "Exit status"):
        assert option in result.stdout, option


@pytest.mark.parametrize("argv,message", [
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--amp", "--no-gpu"], "--amp needs the GPU"),
    (["occlusion", "--amp"], "occlusion with --amp: its map is the difference of two outputs"),
    (["--target_node", "-1"], "--target_node must be 0 or more"),
    (["-np", "-2"], "-np/--n_proc must be 0"),
    (["--level_grad_cam", "0"], "--level_grad_cam must be at least 1"),
    (["--selection_metrics", "../x"], "--selection_metrics '../x' cannot be used as a file name"),
])
def test_usage_errors_exit_2(tmp_path, capsys, argv, message):
    assert main([str(tmp_path), "test", "name", *argv]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("group,name", [("../evil", "x"), ("test", "a/b"), ("test", ".."), ("te st", "x")])
def test_names_that_are_not_one_folder_are_refused(tmp_path, capsys, group, name):
    assert main([str(tmp_path), group, name, "--no-gpu"]) == 2
    assert "cannot be used as a file name" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-sm", "loss"], ["deconvolution"], ["--batch_size", "two"]])
def test_argparse_rejections_exit_2(tmp_path, argv):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "test", "name", *argv])
    assert exit_.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_gpu_is_the_default_and_fails_clearly_without_one(demo, capsys):
    assert main(["maps", "test", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps"]) == 1
    assert capsys.readouterr().err.strip() == "maps-interpret: error: no GPU is available: add --no-gpu to run on the CPU"
    assert not (demo / "maps" / "groups" / "test").exists()


def test_not_a_maps(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "test", "x", "--no-gpu"]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert main([str(tmp_path), "test", "x", "--no-gpu"]) == 1
    assert "maps.json does not exist: INPUT_MAPS_DIRECTORY must be a MAPS folder" in capsys.readouterr().err


def test_unexpected_errors_are_one_line_unless_verbose(tmp_path, capsys, monkeypatch):
    def broken(config):
        raise ValueError("something deep\nwith a second line")

    monkeypatch.setattr(runner, "run", broken)
    assert main([str(tmp_path), "test", "x", "--no-gpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["maps-interpret: error: ValueError: something deep (rerun with --verbose for the traceback)"]
    with pytest.raises(ValueError):
        main([str(tmp_path), "test", "x", "--no-gpu", "--verbose"])


def test_interrupt_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    assert main([str(tmp_path), "test", "x", "--no-gpu"]) == 130


def test_user_errors_print_one_line(tmp_path, capsys, monkeypatch):
    def refused(config):
        raise MapsInterpretError("what, where, how to fix")

    monkeypatch.setattr(runner, "run", refused)
    assert main([str(tmp_path), "test", "x", "--no-gpu"]) == 1
    assert capsys.readouterr().err == "maps-interpret: error: what, where, how to fix\n"


def test_stdout_lists_the_output_folders(demo, capsys):
    assert main(["maps", "test", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                 "--no-gpu", "-np", "0"]) == 0
    assert capsys.readouterr().out.splitlines() == ["maps/split-0/best-loss/test/interpret-x",
                                                    "maps/split-1/best-loss/test/interpret-x"]


def test_python_api_runs_without_argv(demo):
    from maps_interpret import run

    summary = run(InterpretConfig(input_maps_directory=Path("maps"), data_group="train", name="api", gpu=False,
                                  n_proc=0, selection_metrics=["loss", "accuracy"]))
    assert len(summary.outputs) == 4 and summary.maps > 0 and summary.seconds > 0
    assert all((folder / "mean_image-0_map.pt").is_file() for folder in summary.outputs)


@pytest.mark.parametrize("status,expected", [(0, 120), (2, 2)])
def test_entry_reports_a_failed_flush_of_the_results(status, expected):
    """The console command exits without interpreter teardown; a stdout that cannot be flushed (closed pipe,
    full disk) still fails the run, as Python itself reports it (120), unless it already failed."""
    code = ("import io, sys\n"
            "from maps_interpret.cli import interpret as cli\n"
            f"cli.main = lambda: (print('/maps/split-0/best-loss/test/interpret-x'), {status})[1]\n"
            "class Full(io.StringIO):\n"
            "    def flush(self): raise OSError(28, 'No space left on device')\n"
            "sys.stdout = Full()\n"
            "cli.entry()\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == expected


def test_readers_threads_processes_and_small_shared_memory_give_the_same_maps(demo, monkeypatch, caplog):
    """-np 2 in threads (default), in processes, and in processes where /dev/shm is too small for them (a
    default container: threads instead): the maps of -np 0."""
    from maps_interpret.data import readers as caps

    new_group = ["--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps"]
    common = ["--no-gpu", "--save_individual", "--batch_size", "3"]
    assert main(["maps", "test", "x", *new_group, *common, "-np", "0"]) == 0
    assert main(["maps", "test", "threads", *common, "-np", "2"]) == 0
    assert main(["maps", "test", "processes", *common, "-np", "2", "--reader", "processes"]) == 0
    assert "thread(s) instead" not in caplog.text
    monkeypatch.setattr(caps, "shared_memory_free", lambda: 1024)
    with caplog.at_level("INFO", logger="maps_interpret"):
        assert main(["maps", "test", "y", *common, "-np", "2", "--reader", "processes"]) == 0
    assert "reading in 2 thread(s) instead" in caplog.text
    for split in (0, 1):
        ours = demo / "maps" / f"split-{split}" / "best-loss" / "test"
        files = sorted(p.name for p in (ours / "interpret-x").glob("*.pt"))
        assert len(files) == 5
        for run in ("threads", "processes", "y"):
            assert files == sorted(p.name for p in (ours / f"interpret-{run}").glob("*.pt"))
            for name in files:
                assert torch.equal(torch.load(ours / "interpret-x" / name, weights_only=True),
                                   torch.load(ours / f"interpret-{run}" / name, weights_only=True)), (run, name)


@pytest.mark.parametrize("argv,message", [
    (["deconvolution"], "argument METHOD: invalid choice: 'deconvolution' (choose from 'gradients', 'grad-cam'"),
    (["--target_node", "first"], "argument --target_node: expected an output node (0, 1, ...), label or predicted"),
    (["--num_parts", "2"], "--num_parts 2 needs --part_id I (0..1): which part this job computes"),
    (["--num_parts", "2", "--part_id", "1", "--merge_parts"], "--merge_parts combines every part: remove --part_id"),
])
def test_usage_errors_are_one_line_with_a_hint(tmp_path, argv, message):
    """argparse's own errors too: one line and where to look, not the whole usage block."""
    result = subprocess.run([sys.executable, "-m", "maps_interpret", str(tmp_path), "test", "x", *argv, "--no-gpu"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("maps-interpret: error: "), lines
    assert "usage:" not in result.stderr and list(tmp_path.iterdir()) == []


def test_diagnoses_without_a_tsv_are_refused(demo, capsys):
    """-d filters the rows of --participants_tsv: on an existing group without a TSV it would be ignored."""
    assert main(["maps", "test", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                 "--no-gpu", "-np", "0"]) == 0
    capsys.readouterr()
    assert main(["maps", "test", "y", "-d", "AD", "--no-gpu"]) == 2
    assert "-d/--diagnoses filters the rows of --participants_tsv, which is not given (data group test is already " \
           "defined" in capsys.readouterr().err
    assert not (demo / "maps/split-0/best-loss/test/interpret-y").exists()


def test_a_mean_map_of_zeros_is_reported(demo, monkeypatch, caplog):
    from maps_interpret.engine import Engine

    real = Engine.state

    def zeroed(self, subsets=False):
        state = real(self, subsets)
        if state:
            state["sums"] = state["sums"].zero_()
        return state

    monkeypatch.setattr(Engine, "state", zeroed)
    with caplog.at_level("WARNING", logger="maps_interpret"):
        assert main(["maps", "test", "z", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                     "--no-gpu", "-np", "0"]) == 0
    assert "split-1/best-loss/test/interpret-z: the mean map of 1 image(s) (image-0) is 0 everywhere (grad-cam: " \
           "every channel weight negative" in caplog.text
