"""One pass over the data: this rank's (or part's) shard of the sessions, batch by batch, through the engine of
every model of the pass (each an Interpreter, interpreter.py); individual maps written on the way by a
background writer, partial sums checkpointed every --checkpoint_every batches and when a stop signal arrives.
The loop over batches is here, in Python (one call per batch and model); everything per element and per voxel
inside a batch happens in the C++ engine, with the GIL released."""

from __future__ import annotations

import logging
import time
from typing import Optional

from tqdm import tqdm

from ..analysis.evaluation import element_masks, evaluate_batch
from ..data.batches import make_batches, prefetch
from ..engine import EngineError
from ..engine.partials import Partial
from ..errors import MapsInterpretError, first_line
from ..interpreter import Interpreter, sample_inputs
from ..output import results, writers
from ..output.evaluation import has_probability
from ..output.staging import Staging
from .. import signals
from . import checkpoints
from .common import RunSummary
from .distributed import Context, shard

log = logging.getLogger("maps_interpret")


def element_shard(data_pass, batch_size: int, index: int, count: int) -> range:
    """Shard `index` of `count` of a pass's elements (session-major order): whole batches of the run that
    one process would make, contiguous and balanced. Every batch then holds the same elements as in one
    process, so each map is the same bit for bit and the means differ by summation order only."""
    n = data_pass.n_elements
    batches = shard(-(-n // batch_size), index, count)
    return range(min(batches.start * batch_size, n), min(batches.stop * batch_size, n))


def compute_pass(plan, index: int, data_pass, staging: Staging, checkpoint: checkpoints.Checkpoint, ctx: Context,
                 summary: RunSummary, positions: range) -> Optional[list[Partial]]:
    """This rank's shard of a pass: its partial sums (with what a checkpoint held), merged over the ranks on
    rank 0 (None on the others)."""
    error: Optional[BaseException] = None
    partials: list[Partial] = []
    try:
        partials = run_shard(plan, index, data_pass, staging, checkpoint, ctx, summary, positions)
    except (signals.Stopped, KeyboardInterrupt):
        raise
    except Exception as caught:  # noqa: BLE001  (the other ranks must hear of it)
        if not ctx.enabled:
            raise
        error = caught
    ctx.agree(error)
    return ctx.gather_partials(partials)


def run_shard(plan, index: int, data_pass, staging: Staging, checkpoint: checkpoints.Checkpoint, ctx: Context,
              summary: RunSummary, positions: range) -> list[Partial]:
    """The maps of the elements at `positions` of a pass (from where a checkpoint left off), added to every
    model's sums; individual maps written on the way; checkpoints every --checkpoint_every batches."""
    maps, data, settings = plan.maps, plan.data, plan.engine
    mode = maps.mode
    n_elements = len(data_pass.element_ids)
    sessions = data_pass.sessions
    done = checkpoint.done(index)  # elements of this shard an interrupted run added (--continue)
    prior = checkpoint.partials(index, len(data_pass.jobs))
    resumed = done
    if done:
        summary.resumed_elements += done
        log.info("%s%d of %d %s(s) were done before the interruption", f"rank {ctx.rank}: " if ctx.enabled else "",
                 done, len(positions), mode)
    engines = []
    start = time.perf_counter()
    for job_index, job in enumerate(data_pass.jobs):
        if ctx.is_main:
            log.info("%s-%d best-%s: %d session(s) x %d %s(s)", maps.split_name, job.split, job.metric,
                     len(data_pass.sessions), n_elements, mode)
        try:
            engine = Interpreter.from_maps(maps, job.split, job.metric, plan.device).engine(settings,
                                                                                          data_pass.element_ids)
            # An interrupted run's sums are continued, not added to later: the resumed run's means are those of
            # a run that never stopped, bit for bit.
            engine.restore(prior[job_index].state())
        except EngineError as error:
            raise MapsInterpretError(f"{job.model_path}: {first_line(error)}") from None
        engines.append((job, engine, staging.job_dir(index, job_index)))
    summary.engine_seconds += time.perf_counter() - start

    # group_by: who fell in which subset, per model (an interrupted run's first); --evaluate: each map's row
    members: list[list] = [list(before.members) for before in prior]
    evaluations: list[list] = [list(before.evaluations) for before in prior]

    def partials() -> list[Partial]:
        out = []
        for (_, engine, _), mine, rows in zip(engines, members, evaluations):
            now = Partial.of_engine(engine)
            now.members, now.evaluations = list(mine), list(rows)
            out.append(now)
        return out

    evaluate = plan.evaluation.enabled
    masks = element_masks(plan, data_pass) if evaluate else None
    classification = has_probability(maps)

    label_code = maps.params.get("label_code")
    subset_of = ({name: index for index, name in enumerate(data_pass.subsets)} if settings.group_by == "given"
                 else {})
    first_session, skip = divmod(positions.start + done, n_elements)
    end_session = -(-positions.stop // n_elements)
    dataset = plan.dataset(data_pass, sessions[first_session:end_session])
    individual = plan.output.save_individual
    progress = tqdm(total=len(positions), initial=done, unit=mode,
                    desc=f"{plan.output.data_group}/{plan.output.name}", disable=None if ctx.is_main else True,
                    leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    first, since_checkpoint = True, 0
    with progress, writers.BackgroundWriter() as background:

        def save_checkpoint() -> None:
            # After the maps queued before it: the checkpoint never counts a map not on disk.
            background.submit(checkpoint.save, index, done, [p.state() for p in partials()])

        def stop_here(signum: int) -> None:
            save_checkpoint()  # every finished batch, whatever --checkpoint_every says
            background.close()
            raise signals.Stopped(signum)

        batches = make_batches(dataset, data.n_proc, data.reader, data.batch_size, plan.device, skip=skip,
                               limit=len(positions) - done)
        # Signals are deferred (runner/run.py): one received while a batch is awaited ends the wait.
        for batch in prefetch(batches, depth=2 if plan.device != "cpu" else 0, stop=signals.requested):
            if signals.requested() is not None:  # received while this batch was read: keep what is done
                stop_here(signals.requested())
            batch.wait()  # GPU: the batch was made on another stream
            owners = [sessions[first_session + position] for position in batch.session_index]
            targets, seeds = sample_inputs(settings, label_code, owners, batch.element_ids)
            subsets = [subset_of[s.group] for s in owners] if subset_of else None
            labels = [label_code[s.label] for s in owners] if settings.group_by == "correct" else None
            for (job, engine, folder), listing, rows in zip(engines, members, evaluations):
                try:
                    maps_ = engine.accumulate(batch.images, batch.element_ids, return_maps=individual or evaluate,
                                              targets=targets, seeds=seeds, subsets=subsets, labels=labels)
                    if settings.group_by != "none":
                        listing += [[s.participant_id, s.session_id, e, g]
                                    for s, e, g in zip(owners, batch.element_ids, engine.last_subsets())]
                    if evaluate:
                        measured = evaluate_batch(engine, plan.evaluation, batch.images, maps_, owners,
                                                  batch.element_ids, targets, masks, classification)
                        if settings.group_by != "none":  # the per-subset summaries
                            for row, subset in zip(measured, engine.last_subsets()):
                                row["subset"] = int(subset)
                        rows += measured
                except EngineError as error:
                    hint = (f"; lower --batch_size (now {data.batch_size})"
                            if "out of memory" in str(error).lower() else "")
                    raise MapsInterpretError(f"{job.model_path}: {first_line(error)}{hint}") from None
                if individual:
                    maps_ = maps_.cpu()
                    for map_, element, position in zip(maps_, batch.element_ids, batch.session_index):
                        session = sessions[first_session + position]
                        background.submit(results.save_individual, plan, data_pass, session, element, map_,
                                          folder)
            done += len(batch.element_ids)
            since_checkpoint += 1
            progress.update(len(batch.element_ids))
            if first:  # the first accumulate blocks while cuDNN autotunes; later ones queue device work
                summary.first_batch_seconds += time.perf_counter() - start
                first = False
            if signals.requested() is not None:
                stop_here(signals.requested())
            every = plan.run.checkpoint_every
            if every and since_checkpoint >= every:
                save_checkpoint()
                since_checkpoint = 0
            if ctx.failed():  # another rank failed: stop here, the error is raised where the ranks agree
                break
        if signals.requested() is not None:  # the wait for a batch ended by a signal
            stop_here(signals.requested())
    summary.loop_seconds += time.perf_counter() - start
    for job, engine, _ in engines:
        zeros = engine.zero_fraction()  # one device synchronisation
        if zeros is not None:
            log.info("%s-%d best-%s: %.4f%% of the gradient values are exactly zero under --amp (compare with a "
                     "float32 run to see underflow)", maps.split_name, job.split, job.metric, 100 * zeros)
    summary.sessions += max(0, end_session - first_session)
    summary.maps += (done - resumed) * len(engines)
    return partials()
