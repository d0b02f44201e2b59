"""A run killed by SIGKILL before its first checkpoint leaves only its staging folder, which the next run
removes. (Stops with a checkpoint, and --continue: tests/test_resume.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import tree_digest
from maps_interpret.synthetic import build_demo
from maps_interpret.output.staging import STAGING_DIRNAME

pytestmark = pytest.mark.slow
COMMAND = ["maps", "test", "x", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
           "--no-gpu", "-np", "0", "--batch_size", "1", "--save_individual"]


@pytest.fixture(scope="module")
def long_demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signals") / "demo"
    build_demo(root, shape=(24, 28, 24), n_train=4, n_test=60, trained=False)
    return root


def start_and_stop(root: Path, signum: int) -> subprocess.CompletedProcess:
    """Starts a run and sends `signum` once it has written maps into its staging folder."""
    process = subprocess.Popen([sys.executable, "-m", "maps_interpret", *COMMAND], cwd=root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any((root / "maps" / STAGING_DIRNAME).glob("*/pass-*-job-*/*.pt")):
        assert process.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, "no map was written in 120 s"
        time.sleep(0.01)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_sigkill_leaves_only_the_staging_folder_which_the_next_run_removes(long_demo):
    before = tree_digest(long_demo / "maps")
    result = start_and_stop(long_demo, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    after = tree_digest(long_demo / "maps")
    assert {k: v for k, v in after.items() if not k.startswith(STAGING_DIRNAME)} == before
    assert any(k.startswith(STAGING_DIRNAME + "/") for k in after)
    rerun = subprocess.run([sys.executable, "-m", "maps_interpret", *COMMAND], cwd=long_demo, capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "left by a run that was killed" in rerun.stderr
    assert not (long_demo / "maps" / STAGING_DIRNAME).exists()
    assert (long_demo / "maps" / "split-0" / "best-loss" / "test" / "interpret-x" / "mean_image-0_map.pt").is_file()

