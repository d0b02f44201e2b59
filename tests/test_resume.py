"""--continue: a run killed (SIGKILL, no warning) or stopped (SIGTERM/SIGUSR1, as SLURM does before a time
limit) resumes from its checkpoint and ends with the maps of an uninterrupted run; a resume with other
options is refused and changes nothing.

Everything equal bit for bit: a resumed run makes the batches the uninterrupted one makes, and continues the
checkpoint's running sums (Engine.restore) in the same order."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import tree_digest
from maps_interpret.synthetic import build_demo
from maps_interpret.output.staging import STAGING_DIRNAME

pytestmark = pytest.mark.slow
OPTIONS = ["--no-gpu", "-np", "0", "--batch_size", "2", "--save_individual", "--checkpoint_every", "2"]


def command(name: str, *extra: str) -> list[str]:
    """The run `name`; `extra` may begin with a METHOD (it then follows NAME), its options come after OPTIONS."""
    method = list(extra[:1]) if extra and not extra[0].startswith("-") else []
    return [sys.executable, "-m", "maps_interpret", "maps", "test", name, *method, *OPTIONS, *extra[len(method):]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    """60 test sessions (30 participants x 2; their group defined) and the maps of an uninterrupted run, `ref`."""
    root = tmp_path_factory.mktemp("resume") / "demo"
    build_demo(root, shape=(24, 28, 24), n_train=4, n_test=30, trained=False)
    result = subprocess.run(command("ref", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps"),
                            cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root, outputs(root, "ref")


def outputs(root: Path, name: str) -> dict[str, torch.Tensor]:
    return {str(p.relative_to(root / "maps")).replace(f"interpret-{name}", "interpret-X"): torch.load(p)
            for p in sorted((root / "maps").glob(f"split-*/best-*/test/interpret-{name}/*.pt"))}


def assert_same_maps(ours: dict, reference: dict) -> None:
    assert sorted(ours) == sorted(reference) and reference
    for key, value in reference.items():
        assert torch.equal(ours[key], value), key


def checkpointed(root: Path, name: str) -> int:
    """Elements the run's checkpoint counts (0 while there is none)."""
    path = root / "maps" / STAGING_DIRNAME / f"test-{name}" / "checkpoint-0.json"
    try:
        return json.loads(path.read_text())["passes"]["0"]["done"]
    except (OSError, ValueError, KeyError):
        return 0


def start_and_stop(root: Path, name: str, signum: int, after: int = 6) -> subprocess.CompletedProcess:
    """Starts a run, and sends `signum` once its checkpoint counts `after` elements or more."""
    process = subprocess.Popen(command(name), cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while checkpointed(root, name) < after:
        assert process.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, "no checkpoint in 120 s"
        time.sleep(0.005)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def resume(root: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(name, *extra, "--continue"), cwd=root, capture_output=True, text=True)


def outside_staging(root: Path) -> dict:
    return {k: v for k, v in tree_digest(root / "maps").items() if not k.startswith(STAGING_DIRNAME)}


def test_sigkill_then_continue_gives_the_uninterrupted_maps(demo):
    root, reference = demo
    before = outside_staging(root)
    killed = start_and_stop(root, "killed", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert outside_staging(root) == before  # only the staging folder, with its checkpoint
    done = checkpointed(root, "killed")
    assert 0 < done < 60
    result = resume(root, "killed")
    assert result.returncode == 0, result.stderr
    assert "were done before the interruption" in result.stderr
    assert_same_maps(outputs(root, "killed"), reference)
    assert not (root / "maps" / STAGING_DIRNAME).exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_checkpoints_and_continue_finishes(demo, signum):
    root, reference = demo
    name = f"stopped{signum}"
    before = outside_staging(root)
    stopped = start_and_stop(root, name, signum)
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert f"stopped by {signal.Signals(signum).name}; the progress was checkpointed" in stopped.stderr
    assert "run the same command with --continue to resume" in stopped.stderr
    assert outside_staging(root) == before

    refused = subprocess.run(command(name), cwd=root, capture_output=True, text=True)  # no --continue
    assert refused.returncode == 1
    assert "add --continue to resume it, or --overwrite_name to discard it" in refused.stderr

    staged = tree_digest(root / "maps")
    other = resume(root, name, "--batch_size", "3")
    assert other.returncode == 1
    assert "--continue: this run differs from the interrupted one in --batch_size (was 2, now 3)" in other.stderr
    assert tree_digest(root / "maps") == staged  # refused: nothing changed, the checkpoint kept

    result = resume(root, name)
    assert result.returncode == 0, result.stderr
    assert_same_maps(outputs(root, name), reference)
    assert not (root / "maps" / STAGING_DIRNAME).exists()


def test_continue_without_a_checkpoint_runs_from_the_start(demo):
    root, reference = demo
    result = resume(root, "fresh")
    assert result.returncode == 0, result.stderr
    assert "no checkpoint of an interrupted run" in result.stderr
    assert_same_maps(outputs(root, "fresh"), reference)
    finished = tree_digest(root / "maps")
    again = resume(root, "fresh")  # finished: a script that always passes --continue (a requeued job) succeeds
    assert again.returncode == 0, again.stderr
    assert "interpret-fresh: already complete (every folder holds this run's maps); nothing to do" in again.stderr
    assert again.stdout.splitlines() == ["maps/split-0/best-loss/test/interpret-fresh",
                                         "maps/split-1/best-loss/test/interpret-fresh"]
    assert tree_digest(root / "maps") == finished  # nothing rewritten
    other = resume(root, "fresh", "--save_nifti")  # another run of the same NAME: refused, as without --continue
    assert other.returncode == 1 and "interpret-fresh already exists" in other.stderr


def test_overwrite_name_discards_a_checkpoint(demo):
    root, reference = demo
    start_and_stop(root, "discarded", signal.SIGTERM)
    result = subprocess.run(command("discarded", "--overwrite_name"), cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "discarding the checkpoint of an interrupted run" in result.stderr
    assert_same_maps(outputs(root, "discarded"), reference)


def reference_then_killed_and_resumed(root: Path, reference: str, killed: str, *extra: str) -> None:
    """An uninterrupted run `reference`, then `killed` SIGKILLed once its checkpoint counts 6 elements and resumed
    with --continue, both with the options `extra`."""
    result = subprocess.run(command(reference, *extra), cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    process = subprocess.Popen(command(killed, *extra), cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while checkpointed(root, killed) < 6:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    process.kill()
    process.communicate()
    resumed = resume(root, killed, *extra)
    assert resumed.returncode == 0, resumed.stderr


def test_group_statistics_resume_after_sigkill(demo):
    """A checkpoint holds Welford's state too; the resumed run merges it with the rest (partials.merge)."""
    root, _ = demo
    stats = ("--statistics", "--group_by", "diagnosis")
    reference_then_killed_and_resumed(root, "refstats", "killstats", *stats)
    assert_same_maps(outputs(root, "killstats"), outputs(root, "refstats"))
    folder = root / "maps" / "split-0" / "best-loss" / "test"
    assert (folder / "interpret-killstats" / "subsets.tsv").read_text() == \
        (folder / "interpret-refstats" / "subsets.tsv").read_text()  # the checkpoint kept the listing so far


def test_evaluation_resume_after_sigkill(demo):
    """--evaluate's rows are kept in the checkpoint with the sums: the resumed run writes the tables of a run
    that never stopped (the curves of the maps before the kill included)."""
    root, _ = demo
    evaluate = ("--evaluate", "--evaluation_steps", "3")
    reference_then_killed_and_resumed(root, "refeval", "killeval", *evaluate)
    folder = root / "maps" / "split-0" / "best-loss" / "test"
    for table in ("evaluation.tsv", "evaluation_curves.tsv", "evaluation_summary.tsv"):
        ours = (folder / "interpret-killeval" / table).read_text()
        assert ours == (folder / "interpret-refeval" / table).read_text(), table
    sessions = (root / "data" / "test.tsv").read_text().splitlines()  # a header and one line per session, as it
    assert len((folder / "interpret-killeval" / "evaluation.tsv").read_text().splitlines()) == len(sessions)


@pytest.mark.parametrize("method", [["occlusion", "--occlusion_size", "8", "--chunk_size", "16"], ["grad-cam++"],
                                    ["lrp", "--lrp_composite", "epsilon-gamma-box"]],
                         ids=["occlusion", "grad-cam++", "lrp"])
def test_the_newer_methods_resume_after_sigkill(demo, method):
    """Occlusion (the staged network's crops), Grad-CAM++ and LRP (their own exports) give after --continue the
    maps of a run that never stopped."""
    root, _ = demo
    name = {"occlusion": "oc", "grad-cam++": "gp", "lrp": "lr"}[method[0]]
    reference_then_killed_and_resumed(root, f"ref{name}", f"kill{name}", *method)
    assert_same_maps(outputs(root, f"kill{name}"), outputs(root, f"ref{name}"))
