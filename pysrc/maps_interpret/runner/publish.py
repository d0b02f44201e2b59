"""Rank 0, a pass computed: the means (output/results.py), the sanity check, interpret.json, the data group with
the first results, and the folders moved into place; `--merge_parts` does the same from finished parts; the
figures once every folder of the run is in place."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

from ..engine.partials import Partial, merge_all
from ..errors import MapsInterpretError
from ..output import provenance, results, writers
from ..output.groups import commit_group
from ..output.staging import STAGING_DIRNAME, Staging
from . import checkpoints
from .common import RunSummary, disk_error, open_staging, refuse_existing_outputs

log = logging.getLogger("maps_interpret")


def publish(plan, index: int, data_pass, staging: Staging, checkpoint: checkpoints.Checkpoint,
            merged: Optional[list[Partial]], summary: RunSummary, committed: list, seconds: float,
            ranks: int) -> None:
    """A pass computed (its sums `merged`, or None to read them from the checkpoint): the means, the provenance,
    the data group (with the first results), the folders in place."""
    try:
        if merged is None:
            merged = checkpoint.partials(index, len(data_pass.jobs))
        for job_index, (job, partial) in enumerate(zip(data_pass.jobs, merged)):
            folder = staging.job_dir(index, job_index)
            results.write_means(plan, data_pass, job, partial, folder)
            results.write_individual_image_space(plan, data_pass, folder)
            _sanity_check(plan, data_pass, job, partial, folder)
            writers.write_json(folder / provenance.FILE, provenance.provenance(
                plan, data_pass, job, folder, seconds, ranks, summary.resumed_elements))
        if not committed[0]:  # the group exists in the MAPS from the first finished results on
            commit_group(plan.maps, plan.group)
            committed[0] = True
        for job_index, job in enumerate(data_pass.jobs):
            Staging.publish(staging.job_dir(index, job_index), job.output_dir, replace=plan.output.overwrite_name)
            summary.outputs.append(job.output_dir)
            log.info("wrote %s", job.output_dir)
        checkpoint.mark(index, "published")
    except OSError as error:
        raise disk_error(error, plan, summary) from None


def draw_figures(plan) -> None:
    """--save_figures, once every folder of the run is in place (output/figures.py)."""
    from ..output import figures

    try:
        figures.draw_run(plan)
    except OSError as error:
        raise MapsInterpretError(f"drawing the figures into {plan.maps.path} failed ({error.strerror or error}); "
                                 "the maps are in place, some figures may be missing") from None


def _sanity_check(plan, data_pass, job, partial: Partial, folder: Path) -> None:
    """--sanity_check: the cascading randomisation's files, into the folder before its provenance lists it."""
    if plan.sanity.enabled:
        from ..analysis.sanity import sanity_check

        sanity_check(plan, data_pass, job, partial, folder)


def merge_parts(plan, summary: RunSummary) -> None:
    """--merge_parts: the finished parts' partial sums added in part order, their individual maps linked
    into the final folders (the parts stay intact until everything is in place), then the data group and
    the folders, as one uninterrupted run would leave them; finally the parts' folders are removed."""
    settings = plan.run
    fingerprint = checkpoints.fingerprint(plan)
    root = plan.maps.path / STAGING_DIRNAME
    parts = []
    for part in range(settings.num_parts):
        run_dir = root / settings.key(part_id=part)
        parts.append((run_dir, checkpoints.read_part(run_dir, fingerprint, part, settings.num_parts)))
    refuse_existing_outputs(plan, [False] * len(plan.passes))
    staging = Staging(plan.maps.path, f"{settings.data_group}-{settings.name}-merge")
    open_staging(staging, plan)
    started = time.perf_counter()  # the merge's own time: each part's is in its log
    done = False
    try:
        for index, data_pass in enumerate(plan.passes):
            per_part = [checkpoints.part_partials(run_dir, state, index) for run_dir, state in parts]
            for job_index, job in enumerate(data_pass.jobs):
                folder = staging.job_dir(index, job_index)
                partial = merge_all(partials[job_index] for partials in per_part)
                results.write_means(plan, data_pass, job, partial, folder)
                _sanity_check(plan, data_pass, job, partial, folder)
                for run_dir, _ in parts:  # the parts' individual maps: hard links, no copy
                    for path in sorted((run_dir / f"pass-{index}-job-{job_index}").glob("*")):
                        os.link(path, folder / path.name)
                results.write_individual_image_space(plan, data_pass, folder)
                writers.write_json(folder / provenance.FILE, provenance.provenance(
                    plan, data_pass, job, folder, time.perf_counter() - started, 1))
            summary.sessions += len(data_pass.sessions)
        commit_group(plan.maps, plan.group)
        for index, data_pass in enumerate(plan.passes):
            for job_index, job in enumerate(data_pass.jobs):
                Staging.publish(staging.job_dir(index, job_index), job.output_dir, replace=plan.output.overwrite_name)
                summary.outputs.append(job.output_dir)
                log.info("wrote %s", job.output_dir)
        if plan.output.save_figures:
            draw_figures(plan)
        done = True
    finally:
        staging.close(keep=False)
    if done:  # the parts' folders and their locks go, as a finished run's do
        for run_dir, _ in parts:
            Staging(plan.maps.path, run_dir.name).close(keep=False)
