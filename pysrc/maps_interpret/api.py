"""`run(config)`: the whole command as a function. The CLI is a thin shell over it.

Order of work: plan and check everything (plan.py; nothing written; rank 0 of a torchrun job) -> for each
pass over the data, export the models, stream this rank's or part's shard of the sessions through the C++
engines (individual maps into the run's staging folder, partial sums checkpointed every N batches) ->
merge the partial sums (ranks: distributed.py; parts: --merge_parts) -> means, data group, folders moved
into place. `--continue` resumes from the checkpoints (checkpoints.py) of an interrupted run.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from . import checkpoints, provenance, results, signals, writers
from . import engine as _engine  # noqa: F401  (loads and checks the C++ core now: a torch mismatch fails first)
from .caps import SessionDataset, make_batches, prefetch
from .config import InterpretConfig
from .distributed import Context, shard
from .errors import MapsInterpretError, UsageError
from .groups import commit_group
from .partials import Partial, merge_all
from .plan import DataPass, Plan, make_plan
from .transforms import Preprocess

log = logging.getLogger("maps_interpret")


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

    @property
    def maps_per_second(self) -> float:
        return self.maps / self.seconds if self.seconds > 0 else 0.0


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
    plan = ctx.on_main(lambda: make_plan(config))
    plan.device = ctx.device(plan.device)
    summary = RunSummary(plan_seconds=time.perf_counter() - start)
    if ctx.is_main:
        log.info("%s: %s of data group %s (%s mode), %d model(s), %d pass(es) over the data, on %s%s", plan.maps.path,
                 config.method, config.data_group, plan.maps.mode, len(plan.jobs), len(plan.passes), plan.device,
                 f" and {ctx.world - 1} other rank(s)" if ctx.enabled else "")
    if ctx.is_main:
        results.check_sources(plan)
    if config.merge_parts:
        _merge_parts(plan, summary)
        return summary
    fingerprint = ctx.on_main(lambda: checkpoints.fingerprint(plan))
    staging = writers.Staging(plan.maps.path, checkpoints.run_key(config))
    resumable = ctx.on_main(lambda: _open(staging, config))
    checkpoint = checkpoints.Checkpoint(staging.run_dir, ctx.rank, ctx.world, fingerprint)
    keep = resumable  # an error never costs the work of an interrupted run: its checkpoint stays
    try:
        ctx.agree(_attempt(lambda: _load_checkpoint(checkpoint, config, resumable, ctx)))
        states = ctx.on_main(lambda: _pass_states(plan, checkpoint))
        parts = config.num_parts > 1
        shard_index, shard_count = config.part_id * ctx.world + ctx.rank, config.num_parts * ctx.world
        committed = [False]  # the data group, with the first published results
        for index, data_pass in enumerate(plan.passes):
            pass_started = time.perf_counter()
            if states[index] == "published":
                summary.outputs += [job.output_dir for job in data_pass.jobs]
                continue
            try:
                merged = None  # rank 0: each model's sums over every rank (read back if an earlier run made them)
                if states[index] != "computed":
                    merged = _compute_pass(plan, index, data_pass, staging, checkpoint, ctx, summary,
                                           element_shard(data_pass, config.batch_size, shard_index, shard_count))
                    if ctx.is_main:  # the merged sums: a resumed run needs no rank's partials any more
                        checkpoint.save(index, 0, [p.state() for p in merged], state="computed")
                    ctx.barrier()
                if not parts:  # rank 0 publishes; the others hear whether it could
                    ctx.agree(_attempt(lambda: _publish(plan, index, data_pass, staging, checkpoint, merged, summary,
                                                        committed, time.perf_counter() - pass_started,
                                                        ctx.world)) if ctx.is_main else None)
            except OSError as error:
                raise _disk_error(error, plan, summary) from None
        if config.save_figures and not parts and ctx.is_main:  # every folder is written: one scale per run
            _draw_figures(plan, summary)
        if parts and ctx.is_main:
            checkpoints.write_part(checkpoint, config.part_id, config.num_parts,
                                   {i: len(p.sessions) for i, p in enumerate(plan.passes)})
            log.info("part %d of %d finished in %s; combine the parts with --merge_parts --num_parts %d once all "
                     "are finished", config.part_id, config.num_parts, staging.run_dir, config.num_parts)
            keep = True
        else:
            keep = False
        ctx.barrier()
    except (signals.Stopped, KeyboardInterrupt) as stop:
        keep = writers.has_checkpoint(staging.run_dir)
        if keep and isinstance(stop, signals.Stopped):
            stop.checkpoint = str(staging.run_dir)
        raise
    finally:
        if ctx.is_main:
            staging.close(keep=keep)
    return summary


def _publish(plan: Plan, index: int, data_pass: DataPass, staging: writers.Staging,
             checkpoint: checkpoints.Checkpoint, merged: Optional[list[Partial]], summary: RunSummary,
             committed: list, seconds: float, ranks: int) -> None:
    """Rank 0, a pass computed (its sums `merged`, or None to read them from the checkpoint): the means, the
    provenance, the data group (with the first results), the folders in place."""
    try:
        if merged is None:
            merged = checkpoint.partials(index, len(data_pass.jobs))
        for job_index, (job, partial) in enumerate(zip(data_pass.jobs, merged)):
            folder = staging.job_dir(index, job_index)
            results.write_means(plan, data_pass, partial, folder)
            results.write_individual_image_space(plan, data_pass, folder)
            _sanity_check(plan, data_pass, job, partial, folder)
            writers.write_json(folder / provenance.FILE, provenance.provenance(
                plan, data_pass, job, folder, seconds, ranks, summary.resumed_elements))
        if not committed[0]:  # the group exists in the MAPS from the first finished results on
            commit_group(plan.maps, plan.group)
            committed[0] = True
        for job_index, job in enumerate(data_pass.jobs):
            writers.Staging.publish(staging.job_dir(index, job_index), job.output_dir,
                                    replace=plan.config.overwrite_name)
            summary.outputs.append(job.output_dir)
            log.info("wrote %s", job.output_dir)
        checkpoint.mark(index, "published")
    except OSError as error:
        raise _disk_error(error, plan, summary) from None


def _draw_figures(plan: Plan, summary: RunSummary) -> None:
    """--save_figures, once every folder of the run is in place (figures.py)."""
    from . import figures

    try:
        figures.draw_run(plan)
    except OSError as error:
        raise MapsInterpretError(f"drawing the figures into {plan.maps.path} failed ({error.strerror or error}); "
                                 "the maps are in place, some figures may be missing") from None


def _disk_error(error: OSError, plan: Plan, summary: RunSummary) -> MapsInterpretError:
    """Disk full, quota, permissions: say where; this pass's results are dropped."""
    return MapsInterpretError(
        f"writing maps into {plan.maps.path} failed ({error.strerror or error}); the results of this pass were "
        f"discarded{', earlier ones kept' if summary.outputs else ''}: free space or fix permissions, then run again")


def _attempt(function) -> Optional[BaseException]:
    """`function()`'s error, as a value (for `Context.agree`)."""
    try:
        function()
    except Exception as error:  # noqa: BLE001
        return error
    return None


def _open(staging: writers.Staging, config: InterpretConfig) -> bool:
    try:
        return staging.open(keep_checkpoint=config.resume, discard_checkpoint=config.overwrite_name)
    except FileExistsError as error:
        raise MapsInterpretError(str(error)) from None


def _load_checkpoint(checkpoint: checkpoints.Checkpoint, config: InterpretConfig, resumable: bool,
                     ctx: Context) -> None:
    if config.resume and resumable and checkpoint.load():
        log.info("%sresuming from %s", f"rank {ctx.rank}: " if ctx.enabled else "", checkpoint.path)
    elif config.resume and ctx.is_main:
        log.info("--continue: no checkpoint of an interrupted run of %s/%s; starting from the beginning",
                 config.data_group, config.name)


def _pass_states(plan: Plan, checkpoint: checkpoints.Checkpoint) -> list[str]:
    """Rank 0's record of each pass; with --continue, output folders must be the ones it published."""
    states = [checkpoint.state_of(index) for index in range(len(plan.passes))]
    _refuse_existing_outputs(plan, [state == "published" for state in states])
    return states


def _refuse_existing_outputs(plan: Plan, published: list[bool]) -> None:
    """An output folder may exist only if this run published it (--continue) or may replace it."""
    config = plan.config
    for done, data_pass in zip(published, plan.passes):
        for job in data_pass.jobs:
            if not done and job.output_dir.exists() and not (config.overwrite_name or plan.group.erase_results):
                raise MapsInterpretError(f"{job.output_dir} already exists: choose another NAME, or add "
                                         "--overwrite_name to replace it")


def _compute_pass(plan: Plan, index: int, data_pass: DataPass, staging: writers.Staging,
                  checkpoint: checkpoints.Checkpoint, ctx: Context, summary: RunSummary,
                  positions: range) -> Optional[list[Partial]]:
    """This rank's shard of a pass: its partial sums (with what a checkpoint held), merged over the ranks on
    rank 0 (None on the others)."""
    error: Optional[BaseException] = None
    partials: list[Partial] = []
    try:
        partials = _run_shard(plan, index, data_pass, staging, checkpoint, ctx, summary, positions)
    except (signals.Stopped, KeyboardInterrupt):
        raise
    except Exception as caught:  # noqa: BLE001  (the other ranks must hear of it)
        if not ctx.enabled:
            raise
        error = caught
    ctx.agree(error)
    return ctx.gather_partials(partials)


def _export(plan: Plan, job) -> torch.jit.ScriptModule:
    from .models import load_model

    return export_model(plan, load_model(plan.maps, job.model_path))


def export_model(plan: Plan, model) -> torch.jit.ScriptModule:
    """`model` as the engine of this run's method takes it (the sanity check exports randomised copies too)."""
    from .models.export import to_torchscript, to_torchscript_cam
    from .models.fast import fuse_blocks

    if plan.config.method == "grad-cam":  # the cut counts the original modules: no rewriting
        return to_torchscript_cam(model, plan.config.level_grad_cam)
    return model if isinstance(model, torch.jit.ScriptModule) else to_torchscript(fuse_blocks(model))


def make_engine(plan: Plan, scripted: torch.jit.ScriptModule, element_ids, summaries: bool = True):
    """An engine with the run's method and options; `summaries`: with --statistics and --group_by too (the
    sanity check needs the means only)."""
    from .engine import Engine

    config = plan.config
    return Engine(scripted, device=plan.device, method=config.method,
                  target=config.target_node if isinstance(config.target_node, int) else 0,
                  target_mode=TARGET_MODES.get(config.target_node, "node"),
                  amp=_amp_dtype() if config.amp else None,
                  cam_variant="clinicadl" if config.compat == "clinicadl" else "published",
                  deterministic=config.deterministic, element_ids=element_ids,
                  n_samples=config.n_samples, noise_level=config.noise_level, n_steps=config.n_steps,
                  baseline=config.baseline, chunk=config.chunk_size, seed=config.seed, abs=config.abs,
                  statistics=config.statistics and summaries,
                  group_by=GROUP_BY.get(config.group_by, "given") if summaries else "none")


def session_dataset(plan: Plan, data_pass: DataPass, sessions: list) -> SessionDataset:
    """`sessions` as the run reads them: raw tensors when they are preprocessed on the device (--preprocess_on;
    auto: on a GPU), else preprocessed by the readers."""
    config, maps = plan.config, plan.maps
    on_device = config.preprocess_on == "device" or (config.preprocess_on == "auto" and plan.device != "cpu")
    return SessionDataset(sessions, data_pass.layout, Preprocess.from_params(maps.params), maps.input_size,
                          data_pass.element_ids, raw=on_device)


def sample_inputs(config: InterpretConfig, label_code, owners, element_ids) -> tuple[Optional[list], Optional[list]]:
    """Per sample of a batch: its target node (--target_node label) and its seed (smoothgrad), else None."""
    targets = [label_code[s.label] for s in owners] if config.target_node == "label" else None
    seeds = ([sample_seed(s, e) for s, e in zip(owners, element_ids)]
             if config.method == "smoothgrad" else None)
    return targets, seeds


TARGET_MODES = {"label": "given", "predicted": "predicted"}  # --target_node -> the engine's target mode
GROUP_BY = {None: "none", "predicted": "predicted", "correct": "correct"}  # --group_by -> the engine's; else given


def sample_seed(session, element: int) -> int:
    """A sample's own seed (smoothgrad's noise): from its names only, so that its map does not depend on its
    batch, rank, part or on a resumed run."""
    return zlib.crc32(f"{session.participant_id}/{session.session_id}/{element}".encode())


def element_shard(data_pass: DataPass, batch_size: int, index: int, count: int) -> range:
    """Shard `index` of `count` of a pass's elements (session-major order): whole batches of the run that
    one process would make, contiguous and balanced. Every batch then holds the same elements as in one
    process, so each map is the same bit for bit and the means differ by summation order only."""
    n = data_pass.n_elements
    batches = shard(-(-n // batch_size), index, count)
    return range(min(batches.start * batch_size, n), min(batches.stop * batch_size, n))


def _run_shard(plan: Plan, index: int, data_pass: DataPass, staging: writers.Staging,
               checkpoint: checkpoints.Checkpoint, ctx: Context, summary: RunSummary,
               positions: range) -> list[Partial]:
    """The maps of the elements at `positions` of a pass (from where a checkpoint left off), added to every
    model's sums; individual maps written on the way; checkpoints every --checkpoint_every batches."""
    from .engine import EngineError

    config, maps = plan.config, plan.maps
    mode = maps.mode
    gpu = plan.device != "cpu"
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
            engine = make_engine(plan, _export(plan, job), data_pass.element_ids)
        except EngineError as error:
            raise MapsInterpretError(f"{job.model_path}: {error}") from None
        engines.append((job, engine, staging.job_dir(index, job_index)))
    summary.engine_seconds += time.perf_counter() - start

    members: list[list] = [[] for _ in engines]  # group_by: who fell in which subset, per model

    def partials() -> list[Partial]:
        out = []
        for before, (_, engine, _), mine in zip(prior, engines, members):
            now = Partial.of_engine(engine)
            now.members = list(mine)
            out.append(before.to(engine.device).merge(now))
        return out

    label_code = maps.params.get("label_code")
    given_subsets = GROUP_BY.get(config.group_by, "given") == "given"
    subset_of = {name: index for index, name in enumerate(data_pass.subsets)} if given_subsets else {}
    first_session, skip = divmod(positions.start + done, n_elements)
    end_session = -(-positions.stop // n_elements)
    dataset = session_dataset(plan, data_pass, sessions[first_session:end_session])
    progress = tqdm(total=len(positions), initial=done, unit=mode,
                    desc=f"{config.data_group}/{config.name}", disable=None if ctx.is_main else True, leave=False,
                    dynamic_ncols=True)
    start = time.perf_counter()
    first, since_checkpoint = True, 0
    with progress, writers.BackgroundWriter() as background:
        batches = make_batches(dataset, config.n_proc, config.reader, config.batch_size, plan.device, skip=skip,
                               limit=len(positions) - done)
        for batch in prefetch(batches, depth=2 if gpu else 0):
            with signals.deferred():  # a signal now stops the run after this batch, with a checkpoint
                batch.wait()  # GPU: the batch was made on another stream
                owners = [sessions[first_session + position] for position in batch.session_index]
                targets, seeds = sample_inputs(config, label_code, owners, batch.element_ids)
                subsets = [subset_of[s.group] for s in owners] if subset_of else None
                labels = [label_code[s.label] for s in owners] if config.group_by == "correct" else None
                for (job, engine, folder), listing in zip(engines, members):
                    try:
                        maps_ = engine.accumulate(batch.images, batch.element_ids,
                                                  return_maps=config.save_individual, targets=targets, seeds=seeds,
                                                  subsets=subsets, labels=labels)
                        if config.group_by:
                            listing += [[s.participant_id, s.session_id, e, g]
                                        for s, e, g in zip(owners, batch.element_ids, engine.last_subsets())]
                    except EngineError as error:
                        hint = (f"; lower --batch_size (now {config.batch_size})"
                                if "out of memory" in str(error).lower() else "")
                        raise MapsInterpretError(f"{job.model_path}: {error}{hint}") from None
                    if maps_ is not None:
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
                stop = signals.requested()
                if stop is not None or (config.checkpoint_every and since_checkpoint >= config.checkpoint_every):
                    # After the maps queued before it: the checkpoint never counts a map not on disk.
                    background.submit(checkpoint.save, index, done, [p.state() for p in partials()])
                    since_checkpoint = 0
                if stop is not None:
                    background.close()
                    raise signals.Stopped(stop)
            if ctx.failed():  # another rank failed: stop here, the error is raised where the ranks agree
                break
    summary.loop_seconds += time.perf_counter() - start
    for job, engine, _ in engines:
        zeros = engine.zero_fraction()  # one device synchronisation
        if zeros is not None:
            log.info("%s-%d best-%s: %.4f%% of the gradient values are exactly zero under --amp (compare with a "
                     "float32 run to see underflow)", maps.split_name, job.split, job.metric, 100 * zeros)
    summary.sessions += max(0, end_session - first_session)
    summary.maps += (done - resumed) * len(engines)
    return partials()


def _sanity_check(plan: Plan, data_pass: DataPass, job, partial: Partial, folder: Path) -> None:
    """--sanity_check: the cascading randomisation's files, into the folder before its provenance lists it."""
    if plan.config.sanity_check:
        from .sanity import sanity_check

        sanity_check(plan, data_pass, job, partial, folder)


def _merge_parts(plan: Plan, summary: RunSummary) -> None:
    """--merge_parts: the finished parts' partial sums added in part order, their individual maps linked
    into the final folders (the parts stay intact until everything is in place), then the data group and
    the folders, as one uninterrupted run would leave them; finally the parts' folders are removed."""
    config = plan.config
    fingerprint = checkpoints.fingerprint(plan)
    root = plan.maps.path / writers.STAGING_DIRNAME
    parts = []
    for part in range(config.num_parts):
        run_dir = root / checkpoints.run_key(config, part_id=part)
        parts.append((run_dir, checkpoints.read_part(run_dir, fingerprint, part, config.num_parts)))
    _refuse_existing_outputs(plan, [False] * len(plan.passes))
    staging = writers.Staging(plan.maps.path, f"{config.data_group}-{config.name}-merge")
    _open(staging, config)
    started = time.perf_counter()  # the merge's own time: each part's is in its log
    done = False
    try:
        for index, data_pass in enumerate(plan.passes):
            per_part = [checkpoints.part_partials(run_dir, state, index) for run_dir, state in parts]
            for job_index, job in enumerate(data_pass.jobs):
                folder = staging.job_dir(index, job_index)
                partial = merge_all(partials[job_index] for partials in per_part)
                results.write_means(plan, data_pass, partial, folder)
                _sanity_check(plan, data_pass, job, partial, folder)
                for run_dir, _ in parts:
                    for path in sorted((run_dir / f"pass-{index}-job-{job_index}").glob("*")):
                        os.link(path, folder / path.name)
                results.write_individual_image_space(plan, data_pass, folder)
                writers.write_json(folder / provenance.FILE, provenance.provenance(
                    plan, data_pass, job, folder, time.perf_counter() - started, 1))
            summary.sessions += len(data_pass.sessions)
        commit_group(plan.maps, plan.group)
        for index, data_pass in enumerate(plan.passes):
            for job_index, job in enumerate(data_pass.jobs):
                writers.Staging.publish(staging.job_dir(index, job_index), job.output_dir,
                                        replace=config.overwrite_name)
                summary.outputs.append(job.output_dir)
                log.info("wrote %s", job.output_dir)
        if config.save_figures:
            _draw_figures(plan, summary)
        done = True
    finally:
        staging.close(keep=False)
    if done:  # the parts' folders and their locks go, as a finished run's do
        for run_dir, _ in parts:
            writers.Staging(plan.maps.path, run_dir.name).close(keep=False)


def _amp_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
