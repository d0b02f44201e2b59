"""`run(config)`: the whole command as a function. The CLI is a thin shell over it.

Order of work: plan and check everything (plan/; nothing written; rank 0 of a torchrun job) -> for each pass
over the data, stream this rank's or part's shard of the sessions through each model's engine (passes.py:
individual maps into the run's staging folder, partial sums checkpointed every N batches) -> merge the partial
sums over the ranks -> means, data group, folders moved into place (publish.py). `--continue` resumes from the
checkpoints (checkpoints.py) of an interrupted run; `--merge_parts` combines finished parts (publish.py).
"""

from __future__ import annotations

import logging
import time

from ..config import InterpretConfig
from ..errors import MapsInterpretError, UsageError
from ..output.results import check_sources
from ..output.staging import Staging, has_checkpoint
from ..plan import make_plan
from . import checkpoints, signals
from .common import RunSummary, attempt, disk_error, open_staging, refuse_existing_outputs
from .distributed import Context
from .passes import compute_pass, element_shard
from .publish import draw_figures, merge_parts, publish

log = logging.getLogger("maps_interpret")


def run(config: InterpretConfig) -> RunSummary:
    """Runs the command; under torchrun (WORLD_SIZE > 1) as one rank of the job."""
    start = time.perf_counter()
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
                 plan.engine.method, plan.output.data_group, plan.maps.mode, len(plan.jobs), len(plan.passes),
                 plan.device, f" and {ctx.world - 1} other rank(s)" if ctx.enabled else "")
        check_sources(plan)
    if plan.run.merge_parts:
        merge_parts(plan, summary)
        return summary
    settings = plan.run
    fingerprint = ctx.on_main(lambda: checkpoints.fingerprint(plan))
    staging = Staging(plan.maps.path, settings.key())
    resumable = ctx.on_main(lambda: open_staging(staging, plan))
    checkpoint = checkpoints.Checkpoint(staging.run_dir, ctx.rank, ctx.world, fingerprint)
    keep = resumable  # an error never costs the work of an interrupted run: its checkpoint stays
    try:
        ctx.agree(attempt(lambda: _load_checkpoint(checkpoint, plan, resumable, ctx)))
        states = ctx.on_main(lambda: _pass_states(plan, checkpoint))
        parts = settings.num_parts > 1
        shard_index, shard_count = settings.part_id * ctx.world + ctx.rank, settings.num_parts * ctx.world
        committed = [False]  # the data group, with the first published results
        for index, data_pass in enumerate(plan.passes):
            pass_started = time.perf_counter()
            if states[index] == "published":
                summary.outputs += [job.output_dir for job in data_pass.jobs]
                continue
            try:
                merged = None  # rank 0: each model's sums over every rank (read back if an earlier run made them)
                if states[index] != "computed":
                    merged = compute_pass(plan, index, data_pass, staging, checkpoint, ctx, summary,
                                          element_shard(data_pass, plan.data.batch_size, shard_index, shard_count))
                    if ctx.is_main:  # the merged sums: a resumed run needs no rank's partials any more
                        checkpoint.save(index, 0, [p.state() for p in merged], state="computed")
                    ctx.barrier()
                if not parts:  # rank 0 publishes; the others hear whether it could
                    ctx.agree(attempt(lambda: publish(plan, index, data_pass, staging, checkpoint, merged, summary,
                                                      committed, time.perf_counter() - pass_started,
                                                      ctx.world)) if ctx.is_main else None)
            except OSError as error:
                raise disk_error(error, plan, summary) from None
        if plan.output.save_figures and not parts and ctx.is_main:  # every folder is written: one scale per run
            draw_figures(plan)
        if parts and ctx.is_main:
            checkpoints.write_part(checkpoint, settings.part_id, settings.num_parts,
                                   {i: len(p.sessions) for i, p in enumerate(plan.passes)})
            log.info("part %d of %d finished in %s; combine the parts with --merge_parts --num_parts %d once all "
                     "are finished", settings.part_id, settings.num_parts, staging.run_dir, settings.num_parts)
            keep = True
        else:
            keep = False
        ctx.barrier()
    except (signals.Stopped, KeyboardInterrupt) as stop:
        keep = has_checkpoint(staging.run_dir)
        if keep and isinstance(stop, signals.Stopped):
            stop.checkpoint = str(staging.run_dir)
        raise
    finally:
        if ctx.is_main:
            staging.close(keep=keep)
    return summary


def _load_checkpoint(checkpoint: checkpoints.Checkpoint, plan, resumable: bool, ctx: Context) -> None:
    if plan.run.resume and resumable and checkpoint.load():
        log.info("%sresuming from %s", f"rank {ctx.rank}: " if ctx.enabled else "", checkpoint.path)
    elif plan.run.resume and ctx.is_main:
        log.info("--continue: no checkpoint of an interrupted run of %s/%s; starting from the beginning",
                 plan.run.data_group, plan.run.name)


def _pass_states(plan, checkpoint: checkpoints.Checkpoint) -> list[str]:
    """Rank 0's record of each pass; with --continue, output folders must be the ones it published."""
    states = [checkpoint.state_of(index) for index in range(len(plan.passes))]
    refuse_existing_outputs(plan, [state == "published" for state in states])
    return states
