"""`run(config)`: the whole command as a function. The CLI is a thin shell over it.

Order of work: plan and check everything (plan/; nothing written; rank 0 of a torchrun job) -> for each pass
over the data, stream this rank's or part's shard of the sessions through each model's engine (passes.py:
individual maps into the run's staging folder, partial sums checkpointed every N batches) and merge the partial
sums over the ranks -> rank 0 writes every folder's files in staging, draws the figures, then moves the folders
into place (publish.py). Every step is recorded in the checkpoint (checkpoints.py) as it ends: `--continue`
resumes an interrupted run from the next one, and a stop signal received from the first pass on is honoured at
the next safe point, after a checkpoint (signals.py). `--merge_parts` combines finished parts (publish.py).
"""

from __future__ import annotations

import logging
import time

from .. import signals
from ..config import InterpretConfig
from ..errors import MapsInterpretError, UsageError
from ..output.results import check_sources
from ..output.staging import Staging, has_checkpoint
from ..plan import make_plan
from . import checkpoints
from .common import RunSummary, WriteFailed, attempt, disk_error, open_staging, refuse_existing_outputs
from .distributed import Context
from .passes import compute_pass, element_shard
from .publish import (FIGURES, complete, draw_figures, merge_parts, publish_jobs, staged_folders, write_pass,
                      write_report)

log = logging.getLogger("maps_interpret")


def run(config: InterpretConfig) -> RunSummary:
    """Runs the command; under torchrun (WORLD_SIZE > 1) as one rank of the job."""
    start = time.perf_counter()
    if config.deterministic:
        from ..interpreter import deterministic_cublas

        deterministic_cublas()
    ctx = Context.from_environment(gpu=config.gpu)
    try:
        summary = _run(config, ctx, start)
        ctx.settle()
        signals.finished()
    except MapsInterpretError:  # every rank has it (Context.agree): leave together, after the clean-up
        ctx.settle()
        signals.finished()
        raise
    finally:
        ctx.close()
    summary.seconds = time.perf_counter() - start
    log.info("done: %d map(s) of %d session(s) in %.1f s (%.1f s in the loops over batches)", summary.maps,
             summary.sessions, summary.seconds, summary.loop_seconds)
    log.debug("phases: plan %.2f s, engines %.2f s, first batches %.2f s, loops %.2f s, rest %.2f s",
              summary.plan_seconds, summary.engine_seconds, summary.first_batch_seconds, summary.loop_seconds,
              summary.seconds - summary.plan_seconds - summary.engine_seconds - summary.loop_seconds)
    return summary


def _run(config: InterpretConfig, ctx: Context, start: float) -> RunSummary:
    if ctx.enabled and config.merge_parts:
        raise UsageError("--merge_parts only combines files: run it as one process, without torchrun")
    plan = ctx.on_main(lambda: make_plan(config))  # from here on, the plan's settings only
    plan.device = ctx.device(plan.device)
    summary = RunSummary(plan_seconds=time.perf_counter() - start)
    if ctx.is_main:
        log.info("%s: %s of data group %s (%s mode), %d model(s), %d pass(es) over the data, on %s%s", plan.maps.path,
                 plan.engine.label, plan.output.data_group, plan.maps.mode, len(plan.jobs), len(plan.passes),
                 plan.device, f" and {ctx.world - 1} other rank(s)" if ctx.enabled else "")
        check_sources(plan)
    if plan.run.merge_parts:
        merge_parts(plan, summary)
        return summary
    settings = plan.run
    fingerprint = ctx.on_main(lambda: checkpoints.fingerprint(plan))
    staging = Staging(plan.maps.path, settings.key())
    if settings.resume and settings.num_parts == 1 and ctx.on_main(lambda: _complete(plan, fingerprint, staging)):
        summary.outputs += [job.output_dir for job in plan.jobs]
        return summary
    resumable = ctx.on_main(lambda: open_staging(staging, plan))
    checkpoint = checkpoints.Checkpoint(staging.run_dir, ctx.rank, ctx.world, fingerprint)
    keep = resumable  # an error never costs the work of an interrupted run: its checkpoint stays
    try:
        with signals.deferred():  # from here on a stop keeps what is done: it waits for the next safe point
            ctx.agree(attempt(lambda: _load_checkpoint(checkpoint, plan, resumable, ctx)))
            states, published = ctx.on_main(lambda: _pass_states(plan, checkpoint, staging))
            merged = _compute(plan, staging, checkpoint, ctx, summary, states)
            if settings.num_parts > 1:
                if ctx.is_main:
                    checkpoints.write_part(checkpoint, settings.part_id, settings.num_parts,
                                           {i: len(p.sessions) for i, p in enumerate(plan.passes)})
                    log.info("part %d of %d finished in %s; combine the parts with --merge_parts --num_parts %d "
                             "once all are finished", settings.part_id, settings.num_parts, staging.run_dir,
                             settings.num_parts)
                keep = True
            else:  # rank 0 writes and publishes; the others wait for its outcome (no collective: no time limit)
                ctx.wait_for_main(lambda: _finish(plan, staging, checkpoint, summary, states, published, merged,
                                                  ctx.world))
                keep = False
            ctx.barrier()
    except (signals.Stopped, KeyboardInterrupt) as stop:
        keep = has_checkpoint(staging.run_dir)
        if keep and isinstance(stop, signals.Stopped):
            stop.checkpoint = str(staging.run_dir)
        raise
    except WriteFailed as error:  # the cause (a full disk) is fixed outside: what is checkpointed is kept
        keep = has_checkpoint(staging.run_dir)
        if keep:
            raise WriteFailed(f"{error}; the progress is kept in {staging.run_dir}: then run the same command "
                              "with --continue") from None
        raise
    finally:
        if ctx.is_main:
            staging.close(keep=keep)
    return summary


def _compute(plan, staging: Staging, checkpoint: checkpoints.Checkpoint, ctx: Context, summary: RunSummary,
             states: list[str]) -> dict:
    """Every pass not computed yet: this rank's shard, merged over the ranks; rank 0 checkpoints the merged
    sums ("computed": a resumed run needs no rank's partials any more). Returns them by pass (rank 0)."""
    settings = plan.run
    shard_index, shard_count = settings.part_id * ctx.world + ctx.rank, settings.num_parts * ctx.world
    merged = {}
    for index, data_pass in enumerate(plan.passes):
        if states[index] not in ("new", "running"):
            continue
        started = time.perf_counter()
        try:
            merged[index] = compute_pass(plan, index, data_pass, staging, checkpoint, ctx, summary,
                                         element_shard(data_pass, plan.data.batch_size, shard_index, shard_count))
            if ctx.is_main:
                checkpoint.save(index, 0, [p.state() for p in merged[index]], state="computed")
        except OSError as error:
            raise disk_error(error, plan, summary) from None
        summary.pass_seconds[index] = time.perf_counter() - started
        ctx.barrier()
    return merged


def _finish(plan, staging: Staging, checkpoint: checkpoints.Checkpoint, summary: RunSummary, states: list[str],
            published: list[set], merged: dict, ranks: int) -> None:
    """Rank 0: every computed pass written into staging, the figures, then the folders in place; each step
    recorded as it ends."""
    pending = [i for i, state in enumerate(states) if state in ("new", "running", "computed")]
    if pending:
        log.info("writing the results of %d folder(s) into %s", sum(len(plan.passes[i].jobs) for i in pending),
                 staging.run_dir)
    for index, data_pass in enumerate(plan.passes):
        if index in pending:
            write_pass(plan, index, data_pass, staging, checkpoint, merged.get(index), summary,
                       summary.pass_seconds.get(index, 0.0), ranks)
    if plan.output.save_figures and FIGURES not in checkpoint.steps:
        folders = staged_folders(plan, staging, published)
        if folders:
            log.info("drawing the figures of %d folder(s)", len(folders))
            draw_figures(plan, folders)  # a stop is honoured between figures
            checkpoint.mark_step(FIGURES)
    publish_jobs(plan, staging, checkpoint, summary, published)
    if plan.output.save_figures:
        write_report(plan)


def _complete(plan, fingerprint: dict, staging: Staging) -> bool:
    """--continue on a run that ended: every folder holds this run's results and no run is left to resume
    (what a run killed while it cleaned up left of its folder goes)."""
    if has_checkpoint(staging.run_dir) or not complete(plan, fingerprint):
        return False
    if staging.root.exists():
        open_staging(staging, plan)
        staging.close(keep=False)
    if plan.output.save_figures and not plan.maps.report_path(plan.output.data_group, plan.output.name).is_file():
        write_report(plan)  # a run stopped between its last folder and its report
    log.info("%s: data group %s, interpret-%s: already complete (every folder holds this run's maps); nothing "
             "to do", plan.maps.path, plan.output.data_group, plan.output.name)
    return True


def _load_checkpoint(checkpoint: checkpoints.Checkpoint, plan, resumable: bool, ctx: Context) -> None:
    if plan.run.resume and resumable and checkpoint.load():
        log.info("%sresuming from %s", f"rank {ctx.rank}: " if ctx.enabled else "", checkpoint.path)
    elif plan.run.resume and ctx.is_main:
        log.info("--continue: no checkpoint of an interrupted run of %s/%s; starting from the beginning",
                 plan.run.data_group, plan.run.name)


def _pass_states(plan, checkpoint: checkpoints.Checkpoint, staging: Staging) -> tuple[list[str], list[set]]:
    """Rank 0's record of each pass and of the jobs it published. A folder moved into place by a run killed
    before it could record it (its staged folder gone, the pass written) counts as published. With --continue,
    output folders must be the ones it published."""
    states, published = [], []
    for index, data_pass in enumerate(plan.passes):
        state = checkpoint.state_of(index)
        done = checkpoint.published(index, len(data_pass.jobs))
        if state == "written":
            done |= {j for j, job in enumerate(data_pass.jobs) if job.output_dir.exists()
                     and not (staging.run_dir / f"pass-{index}-job-{j}").exists()}
        states.append(state)
        published.append(done)
    refuse_existing_outputs(plan, published)
    return states, published
