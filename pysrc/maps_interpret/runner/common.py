"""What the rooms of a run share: its summary, the run folder's opening, the check of existing outputs, and
how a disk failure or a rank's error is reported."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import MapsInterpretError
from ..output.staging import Staging


@dataclass
class RunSummary:
    outputs: list[Path] = field(default_factory=list)  # one interpret-<NAME> folder per (split, metric)
    sessions: int = 0  # sessions read by this process (each once per pass)
    maps: int = 0  # element maps computed by this process (elements x models)
    seconds: float = 0.0  # the whole run
    loop_seconds: float = 0.0  # the loops over batches (data, compute, individual writes), start-up excluded
    plan_seconds: float = 0.0  # checks of the MAPS, the data group and the models, before any pass
    engine_seconds: float = 0.0  # loading, rewriting and exporting models, creating engines
    first_batch_seconds: float = 0.0  # first batch of each pass: data start-up, cuDNN autotuning, JIT profiling
    resumed_elements: int = 0  # elements an interrupted run had done (--continue)
    pass_seconds: dict = field(default_factory=dict)  # computing each pass (its interpret.json's time)

    @property
    def maps_per_second(self) -> float:
        return self.maps / self.seconds if self.seconds > 0 else 0.0


class WriteFailed(MapsInterpretError):
    """A file could not be written (disk full, quota, permissions): the run keeps its checkpoint, if it has one,
    for --continue once the cause is fixed (runner/run.py says so)."""


def disk_error(error: OSError, plan, summary: RunSummary) -> WriteFailed:
    """Disk full, quota, permissions: one line naming the path."""
    where = error.filename or plan.maps.path
    placed = "; the folders already in place are kept" if summary.outputs else ""
    return WriteFailed(f"writing {where} failed ({error.strerror or error}){placed}: free space or fix permissions")


def attempt(function) -> Optional[BaseException]:
    """`function()`'s error, as a value (for `Context.agree`)."""
    try:
        function()
    except Exception as error:  # noqa: BLE001
        return error
    return None


def open_staging(staging: Staging, plan) -> bool:
    """Takes the run folder; whether it holds an interrupted run's checkpoint (kept with --continue)."""
    try:
        return staging.open(keep_checkpoint=plan.run.resume, discard_checkpoint=plan.run.overwrite_name)
    except FileExistsError as error:
        raise MapsInterpretError(str(error)) from None


def refuse_existing_outputs(plan, published: list[set]) -> None:
    """An output folder may exist only if this run published it (--continue; `published`: per pass, the jobs
    whose folders are in place) or may replace it."""
    for done, data_pass in zip(published, plan.passes):
        for job_index, job in enumerate(data_pass.jobs):
            if (job_index not in done and job.output_dir.exists()
                    and not (plan.output.overwrite_name or plan.group.erase_results)):
                raise MapsInterpretError(f"{job.output_dir} already exists: choose another NAME, or add "
                                         "--overwrite_name to replace it")
