"""The sbatch scripts of examples/slurm run as written, on the CPU, with stand-ins for SLURM's commands
(`srun` runs its command, `scontrol show hostnames` names this host, `sbatch` records its arguments,
`apptainer exec` runs the command after the image): one job to the end, and one stopped by SIGTERM as
SLURM stops a job before its time limit, which checkpoints and submits its follow-up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maps_interpret.synthetic import build_demo
from maps_interpret.output.staging import STAGING_DIRNAME

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SHIMS = {
    "srun": '#!/bin/sh\nexec "$@"\n',
    "scontrol": '#!/bin/sh\necho localhost\n',
    "sbatch": '#!/bin/sh\necho "$@" >> "$SBATCH_LOG"\n',
    # apptainer exec [--nv] [--bind DIR] IMAGE COMMAND...: the command, here
    "apptainer": '#!/bin/sh\nshift\nwhile [ "${1#--}" != "$1" ]; do [ "$1" = --bind ] && shift; shift; done\n'
                 'shift\nexec "$@"\n',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("slurm")
    shims = root / "bin"
    shims.mkdir()
    for name, text in SHIMS.items():
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    study = root / "study"
    build_demo(study, shape=(20, 24, 20), n_train=4, n_test=20, trained=False)
    result = subprocess.run([sys.executable, "-m", "maps_interpret", str(study / "maps"), "test", "one",
                             "--participants_tsv", str(study / "data/test.tsv"), "--caps_directory",
                             str(study / "data/caps"), "--no-gpu", "-np", "0", "--batch_size", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return {"root": root, "shims": shims, "study": study}


def environment(cluster: dict, name: str, **extra: str) -> dict:
    return {**os.environ, "PATH": f"{cluster['shims']}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "MAPS": str(cluster["study"] / "maps"), "GROUP": "test", "NAME": name,
            "OPTIONS": "gradients --no-gpu -np 0 --batch_size 2", "GPUS": "2", "OMP_NUM_THREADS": "1",
            "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "4242", "SLURM_NNODES": "1",
            "SLURM_JOB_NODELIST": "localhost", "RDZV_PORT": str(free_port()),
            "SBATCH_LOG": str(cluster["root"] / f"{name}.sbatch.log"), **extra}


def job_step(shell: int) -> list[int]:
    """The processes under the batch script (torchrun's agent and its ranks)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    found, todo = [], [shell]
    while todo:
        parent = todo.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        todo += children
    return found


def mean(cluster: dict, name: str) -> torch.Tensor:
    return torch.load(cluster["study"] / "maps/split-0/best-loss/test" / f"interpret-{name}/mean_image-0_map.pt")


@pytest.mark.parametrize("script", ["single_node.sbatch", "multi_node.sbatch", "single_node_apptainer.sbatch",
                                    "multi_node_apptainer.sbatch"])
def test_script_runs_two_ranks_to_the_end(cluster, script):
    name = script.split(".")[0]
    result = subprocess.run(["bash", str(REPO / "examples/slurm" / script)], env=environment(cluster, name),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = mean(cluster, "one")
    assert (mean(cluster, name) - reference).abs().max() <= 1e-6 * reference.abs().max()
    assert not (cluster["root"] / f"{name}.sbatch.log").exists()  # finished: no follow-up job


def test_time_limit_checkpoints_and_submits_the_follow_up(cluster):
    env = environment(cluster, "limited", OPTIONS="gradients --no-gpu -np 0 --batch_size 2 --checkpoint_every 1")
    process = subprocess.Popen(["bash", str(REPO / "examples/slurm/single_node.sbatch")], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = cluster["study"] / "maps" / STAGING_DIRNAME / "test-limited"
    deadline = time.monotonic() + 300
    while not list(staging.glob("checkpoint-*.json")):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for pid in job_step(process.pid):  # as SLURM's --signal: every process of the step, not the batch shell
        os.kill(pid, signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert "submitting follow-up job 2" in out, out + err[-3000:]
    submitted = (cluster["root"] / "limited.sbatch.log").read_text().split()
    assert submitted[:2] == ["--dependency=afterany:4242", "--export=ALL,JOB_COUNT=2"]
    assert submitted[2].endswith("single_node.sbatch")
    follow_up = subprocess.run(["bash", submitted[2]], env={**env, "JOB_COUNT": "2"}, capture_output=True,
                               text=True, timeout=600)
    assert follow_up.returncode == 0, follow_up.stderr[-3000:]
    assert "were done before the interruption" in follow_up.stderr
    reference = mean(cluster, "one")
    assert (mean(cluster, "limited") - reference).abs().max() <= 1e-6 * reference.abs().max()
