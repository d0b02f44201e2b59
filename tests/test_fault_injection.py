"""Fault injection: a run interrupted again and again (SIGKILL and SIGTERM, chosen by a seed, at points spread over
the whole run: planning, reading and computing batches, writing the results and the sanity check, drawing the
figures, publishing), each time followed by `--continue`, ends with the files of a run that never stopped, bit for
bit, no staging folder left, no session lost or counted twice.

Each attempt's kill point: a phase (the earliest one the run has not passed, with kills left in its budget), found
by its log line on stderr as the run writes it, then a random delay. README's reliability section quotes the
figure this test asserts (INTERRUPTIONS)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from maps_interpret.output.staging import STAGING_DIRNAME
from maps_interpret.synthetic import build_demo

pytestmark = pytest.mark.slow
SEED = 2026
INTERRUPTIONS = 20  # at least this many attempts must end killed or stopped
NAME = "fi"
COMMAND = ["maps", "test", NAME, "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps", "--no-gpu",
           "-np", "1", "--batch_size", "1", "--checkpoint_every", "1", "--save_individual", "--save_nifti",
           "--statistics", "--group_by", "diagnosis", "--save_figures", "--sanity_check", "--sanity_sessions", "2"]
# (phase, the log line that shows the run is in it, kills allowed, the longest delay after it in seconds)
PHASES = [("plan", None, 1, 1.5), ("compute", "session(s) x", 13, 0.3), ("write", "writing the results of", 4, 1.0),
          ("figures", "drawing the figures of", 3, 1.0), ("publish", "INFO figures: ", 1, 0.0)]
TIME_FIELDS = ("elapsed_seconds", "images_per_second", "written", "resumed_elements", "run")  # run: names its CAPS


class Attempt:
    """The command running, its stderr collected line by line as it is written (a thread)."""

    def __init__(self, root: Path, resume: bool):
        command = [sys.executable, "-m", "maps_interpret", *COMMAND, *(["--continue"] if resume else [])]
        self.process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.process.stderr.readline, "")),
                                        daemon=True)
        self._reader.start()

    def wait(self) -> int:
        code = self.process.wait(timeout=600)
        self._reader.join(timeout=10)
        self.process.stderr.close()
        return code

    @property
    def log(self) -> str:
        return "".join(self.lines)


def interrupt(attempt: "Attempt", markers: list, delay: float, signum: int):
    """Waits for the first of `markers` in stderr (None: the process start), then `delay`, then sends `signum`.
    Returns the index of the marker seen (None if the process ended first)."""
    process, deadline, seen = attempt.process, time.monotonic() + 300, None
    while seen is None:
        seen = next((i for i, m in enumerate(markers) if m is None or any(m in line for line in attempt.lines)),
                    None)
        if seen is None:
            if process.poll() is not None:
                return None
            assert time.monotonic() < deadline, "the run stalled"
            time.sleep(0.005)
    time.sleep(delay)
    if process.poll() is not None:
        return None
    process.send_signal(signum)
    return seen


def files(folder: Path) -> dict[str, object]:
    """Every file of a MAPS' results and group, by content (interpret.json and the report without their times)."""
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        key = str(path.relative_to(folder))
        if path.suffix == ".pt":
            out[key] = torch.load(path, weights_only=True)
        elif path.name.endswith(".nii.gz"):
            image = nib.load(str(path))
            out[key] = (np.asarray(image.dataobj).tobytes(), image.affine.tobytes(), image.header.binaryblock)
        elif path.name == "interpret.json":
            record = json.loads(path.read_text())
            record["options"].pop("resume")  # --continue itself
            out[key] = {k: v for k, v in record.items() if k not in TIME_FIELDS}
        elif path.suffix == ".html" and path.parent.parent.name == "reports":  # the run's report: each folder's time
            out[key] = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", "<written>", path.read_text())
        else:
            out[key] = path.read_bytes()
    return out


def test_twenty_interruptions_then_the_maps_of_an_uninterrupted_run(tmp_path):
    base = tmp_path / "demo"
    build_demo(base, shape=(32, 40, 32), n_train=4, n_test=30, trained=False, nifti=True)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    shutil.copytree(base, reference)
    shutil.copytree(base, interrupted)
    run = Attempt(reference, resume=False)
    assert run.wait() == 0, run.log

    rng = random.Random(SEED)
    budget = {phase: kills for phase, _, kills, _ in PHASES}
    reached, history, resume = 0, [], False
    for attempt in range(60):
        candidates = [i for i in range(reached, len(PHASES)) if budget[PHASES[i][0]] > 0]
        run = Attempt(interrupted, resume)
        resume = True
        if not candidates:  # every kill spent: let it finish
            assert run.wait() == 0, run.log
            break
        first = candidates[0]
        signum = rng.choice([signal.SIGKILL, signal.SIGTERM])
        # The chosen phase, or a later one if the run is past it already.
        hit = interrupt(run, [marker for _, marker, _, _ in PHASES[first:]], rng.uniform(0, PHASES[first][3]), signum)
        code = run.wait()
        seen = [i for i, (_, m, _, _) in enumerate(PHASES) if m is not None and m in run.log]
        reached = max([reached, *seen])
        if code == 0:  # it ended before the signal (or ignored one that came once everything was settled)
            break
        # 143: stopped (a checkpoint of every finished batch); -9: killed; -15: stopped before its handlers existed
        assert hit is not None and code in (-signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGTERM), (code, run.log)
        phase = PHASES[first + hit][0]
        budget[phase] = max(0, budget[phase] - 1)
        history.append((phase, signal.Signals(signum).name))
    else:
        pytest.fail(f"the run never finished: {history}")

    interrupted_phases = {phase for phase, _ in history}
    assert len(history) >= INTERRUPTIONS, " ".join(f"{phase}:{name}" for phase, name in history)
    assert {"compute", "write", "figures"} <= interrupted_phases, history
    assert {"SIGKILL", "SIGTERM"} <= {name for _, name in history}, history
    staging = interrupted / "maps" / STAGING_DIRNAME
    assert not staging.exists(), sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
    ours, theirs = files(interrupted / "maps"), files(reference / "maps")
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(ours[key], value), key
        elif isinstance(value, dict):
            assert ours[key] == value, (key, {k: (ours[key].get(k), v) for k, v in value.items()
                                              if ours[key].get(k) != v})
        else:
            assert ours[key] == value, key
