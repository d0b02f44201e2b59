"""Rank 0, every pass computed: each folder's files written in staging (the means, output/results.py; the sanity
check; interpret.json), the figures drawn there, then the data group and the folders moved into place one by one.
Each step is recorded in the checkpoint as it ends, so a run stopped (or killed) at any step resumes from the next
one with --continue; a stop signal is honoured between steps (`signals.check`). `--merge_parts` does the same
from finished parts."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from .. import signals
from ..engine.partials import Partial, merge_all
from ..errors import MapsInterpretError
from ..output import provenance, results, writers
from ..output.groups import commit_group
from ..output.staging import STAGING_DIRNAME, Staging
from . import checkpoints
from .common import RunSummary, disk_error, open_staging, refuse_existing_outputs

log = logging.getLogger("maps_interpret")
FIGURES = "figures"  # the checkpoint's step once the figures are drawn


def run_digest(fingerprint: dict) -> str:
    """What identifies a run's results (its fingerprint: result options, sessions, models), recorded in each
    folder's interpret.json: --continue on a run whose every folder holds it has nothing to do."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def complete(plan, fingerprint: dict) -> bool:
    """Whether every folder of the run is in place with this very run's results (--continue after success)."""
    digest = run_digest(fingerprint)
    for job in plan.jobs:
        try:
            record = json.loads((job.output_dir / provenance.FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict) or record.get("run") != digest:
            return False
    return True


def write_pass(plan, index: int, data_pass, staging: Staging, checkpoint: checkpoints.Checkpoint,
               merged: Optional[list[Partial]], summary: RunSummary, seconds: float, ranks: int) -> None:
    """A computed pass (its sums `merged`, or None to read them from the checkpoint): every job's files in
    staging, then the pass recorded "written"."""
    try:
        if merged is None:
            merged = checkpoint.partials(index, len(data_pass.jobs))
        for job_index, (job, partial) in enumerate(zip(data_pass.jobs, merged)):
            signals.check()
            folder = staging.job_dir(index, job_index)
            results.write_means(plan, data_pass, job, partial, folder)
            _evaluation(plan, data_pass, job, partial, folder)
            results.write_individual_image_space(plan, data_pass, folder)
            _sanity_check(plan, data_pass, job, partial, folder)
            _provenance(plan, data_pass, job, folder, seconds, ranks, summary.resumed_elements, checkpoint)
        checkpoint.mark(index, "written")
    except OSError as error:
        raise disk_error(error, plan, summary) from None


def draw_figures(plan, folders: list[tuple]) -> None:
    """--save_figures, once every folder of the run is written, before any is published (output/figures.py):
    (data pass, job, folder) each."""
    from ..output import figures

    try:
        figures.draw_run(plan, folders)
    except OSError as error:
        raise MapsInterpretError(f"drawing the figures into {error.filename or plan.maps.path} failed "
                                 f"({error.strerror or error}); nothing was published: free space or fix "
                                 "permissions, then run again with --continue") from None


def write_report(plan) -> None:
    """--save_figures, every folder published: the run's report over them (report/)."""
    from ..report.run_report import write_report as write

    try:
        write(plan)
    except OSError as error:
        raise MapsInterpretError(f"writing the report into {error.filename or plan.maps.path} failed "
                                 f"({error.strerror or error}); the maps are in place: free space or fix "
                                 "permissions, then run again with --continue") from None


def staged_folders(plan, staging: Staging, published: list[set]) -> list[tuple]:
    """(data pass, job, staged folder) of every job whose folder is not published yet."""
    return [(data_pass, job, staging.job_dir(i, j)) for i, data_pass in enumerate(plan.passes)
            for j, job in enumerate(data_pass.jobs) if j not in published[i]]


def publish_jobs(plan, staging: Staging, checkpoint: checkpoints.Checkpoint, summary: RunSummary,
                 published: list[set]) -> None:
    """The data group (with the first results), then each job's folder moved into place, each recorded as it is;
    `published`: per pass, the jobs an earlier attempt published."""
    try:
        if not any(published):
            commit_group(plan.maps, plan.group)
        for index, data_pass in enumerate(plan.passes):
            for job_index, job in enumerate(data_pass.jobs):
                if job_index not in published[index]:
                    signals.check()
                    staged = staging.job_dir(index, job_index)
                    writers.remove_temporaries(staged)  # what writers killed by an earlier SIGKILL left
                    Staging.publish(staged, job.output_dir, replace=plan.output.overwrite_name)
                    checkpoint.mark_published(index, job_index)
                    log.info("wrote %s", job.output_dir)
                summary.outputs.append(job.output_dir)
    except OSError as error:
        raise disk_error(error, plan, summary) from None


def _provenance(plan, data_pass, job, folder: Path, seconds: float, ranks: int, resumed: int,
                checkpoint: checkpoints.Checkpoint) -> None:
    record = provenance.provenance(plan, data_pass, job, folder, seconds, ranks, resumed)
    record["run"] = run_digest(checkpoint.fingerprint)
    writers.write_json(folder / provenance.FILE, record)


def _evaluation(plan, data_pass, job, partial: Partial, folder: Path) -> None:
    """--evaluate: the rows the run kept, as tables, curves and a summary (output/evaluation.py)."""
    if not plan.evaluation.enabled:
        return
    import math

    from ..output.evaluation import has_probability, write_evaluation

    summary = write_evaluation(plan, data_pass, folder, partial.evaluations, math.prod(partial.sums.shape[2:]))
    regression = not has_probability(plan.maps)  # areas under the output, not a probability
    suffix = "_auc_output" if regression else "_auc"
    aucs = ", ".join(f"{name[len('deletion_'):-len(suffix)]} {mean:.3f}" for name, (_, mean, _) in summary.items()
                     if name.startswith("deletion") and name.endswith(suffix))
    log.info("%s: evaluation of %d map(s): deletion AUC%s by order %s (lower: more faithful)%s",
             results.where(plan, job), len(partial.evaluations), " of the output" if regression else "", aucs,
             f"; relevance mass in the mask {summary['relevance_mass'][1]:.3f} (by chance "
             f"{summary['mask_fraction'][1]:.3f})" if "relevance_mass" in summary else "")


def _sanity_check(plan, data_pass, job, partial: Partial, folder: Path) -> None:
    """--sanity_check: the cascading randomisation's files, into the folder before its provenance lists it."""
    if plan.sanity.enabled:
        from ..analysis.sanity import sanity_check

        sanity_check(plan, data_pass, job, partial, folder)


def link(source: Path, destination: Path) -> None:
    """A part's map into the merged folder: a hard link (no copy), or a copy where the file system has none."""
    try:
        os.link(source, destination)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        shutil.copyfile(source, destination)


def merge_parts(plan, summary: RunSummary) -> None:
    """--merge_parts: the parts' individual maps linked into the staged folders (the parts stay intact until
    everything is in place), their partial sums added in part order and written as a run's are, then the
    figures, the data group and the folders, as one uninterrupted run would leave them; finally the parts'
    folders are removed."""
    settings = plan.run
    fingerprint = checkpoints.fingerprint(plan)
    root = plan.maps.path / STAGING_DIRNAME
    parts = []
    for part in range(settings.num_parts):
        run_dir = root / settings.key(part_id=part)
        parts.append((run_dir, checkpoints.read_part(run_dir, fingerprint, part, settings.num_parts)))
    none = [set() for _ in plan.passes]
    refuse_existing_outputs(plan, none)
    staging = Staging(plan.maps.path, f"{settings.data_group}-{settings.name}-merge")
    open_staging(staging, plan)
    checkpoint = checkpoints.Checkpoint(staging.run_dir, 0, 1, fingerprint, persist=False)
    started = time.perf_counter()  # the merge's own time: each part's is in its log
    done = False
    try:
        for index, data_pass in enumerate(plan.passes):
            for job_index in range(len(data_pass.jobs)):
                folder = staging.job_dir(index, job_index)
                for run_dir, _ in parts:
                    for path in sorted((run_dir / f"pass-{index}-job-{job_index}").glob("*")):
                        link(path, folder / path.name)
            per_part = [checkpoints.part_partials(run_dir, state, index) for run_dir, state in parts]
            merged = [merge_all(partials[job] for partials in per_part) for job in range(len(data_pass.jobs))]
            write_pass(plan, index, data_pass, staging, checkpoint, merged, summary, time.perf_counter() - started, 1)
            summary.sessions += len(data_pass.sessions)
        if plan.output.save_figures:
            draw_figures(plan, staged_folders(plan, staging, none))
        publish_jobs(plan, staging, checkpoint, summary, none)
        if plan.output.save_figures:
            write_report(plan)
        done = True
    except OSError as error:
        raise disk_error(error, plan, summary) from None
    finally:
        staging.close(keep=False)
    if done:  # the parts' folders and their locks go, as a finished run's do
        for run_dir, _ in parts:
            Staging(plan.maps.path, run_dir.name).close(keep=False)
