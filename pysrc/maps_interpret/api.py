"""`run(config)`: the whole command as a function. The CLI is a thin shell over it.

Order of work: plan and check everything (plan.py; nothing written) -> for each pass over the data,
export the models, stream batches through the C++ engines, write maps into a staging folder ->
define the data group and move the finished folders into place.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import engine as _engine  # noqa: F401  (loads and checks the C++ core now: a torch mismatch fails first)
from . import writers
from .caps import SessionDataset, make_batches, prefetch
from .config import InterpretConfig
from .errors import MapsInterpretError
from .groups import commit_group
from .plan import DataPass, Plan, make_plan
from .transforms import Preprocess

log = logging.getLogger("maps_interpret")


@dataclass
class RunSummary:
    outputs: list[Path] = field(default_factory=list)  # one interpret-<NAME> folder per (split, metric)
    sessions: int = 0  # sessions read (each once per pass)
    maps: int = 0  # element maps computed (elements x models)
    seconds: float = 0.0  # the whole run
    loop_seconds: float = 0.0  # the loops over batches (data, compute, individual writes), start-up excluded
    plan_seconds: float = 0.0  # checks of the MAPS, the data group and the models, before any pass
    engine_seconds: float = 0.0  # loading, rewriting and exporting models, creating engines
    first_batch_seconds: float = 0.0  # first batch of each pass: data start-up, cuDNN autotuning, JIT profiling

    @property
    def maps_per_second(self) -> float:
        return self.maps / self.seconds if self.seconds > 0 else 0.0


def run(config: InterpretConfig) -> RunSummary:
    start = time.perf_counter()
    plan = make_plan(config)
    summary = RunSummary(plan_seconds=time.perf_counter() - start)
    log.info("%s: %s of data group %s (%s mode), %d model(s), %d pass(es) over the data, on %s", plan.maps.path,
             config.method, config.data_group, plan.maps.mode, len(plan.jobs), len(plan.passes), plan.device)
    with writers.Staging(plan.maps.path) as staging:
        group_committed = False
        for data_pass in plan.passes:
            try:
                staged = _run_pass(plan, data_pass, staging, summary)
            except OSError as error:  # disk full, quota, permissions: say where, drop this pass's results
                raise MapsInterpretError(
                    f"writing maps into {plan.maps.path} failed ({error.strerror or error}); the results of this "
                    f"pass were discarded{', earlier ones kept' if summary.outputs else ''}: free space or "
                    "fix permissions, then run again") from None
            if not group_committed:  # the group exists in the MAPS from the first finished results on
                commit_group(plan.maps, plan.group)
                group_committed = True
            for job, folder in staged:
                writers.Staging.publish(folder, job.output_dir, replace=config.overwrite_name)
                summary.outputs.append(job.output_dir)
                log.info("wrote %s", job.output_dir)
    summary.seconds = time.perf_counter() - start
    log.info("done: %d map(s) of %d session(s) in %.1f s (%.1f s in the loops over batches)", summary.maps,
             summary.sessions, summary.seconds, summary.loop_seconds)
    log.debug("phases: plan %.2f s, engines %.2f s, first batches %.2f s, loops %.2f s, rest %.2f s",
              summary.plan_seconds, summary.engine_seconds, summary.first_batch_seconds, summary.loop_seconds,
              summary.seconds - summary.plan_seconds - summary.engine_seconds - summary.loop_seconds)
    return summary


def _export(plan: Plan, job) -> torch.jit.ScriptModule:
    from .models import load_model
    from .models.export import to_torchscript, to_torchscript_cam
    from .models.fast import fuse_blocks

    model = load_model(plan.maps, job.model_path)
    if plan.config.method == "grad-cam":  # the cut counts the original modules: no rewriting
        return to_torchscript_cam(model, plan.config.level_grad_cam)
    return model if isinstance(model, torch.jit.ScriptModule) else to_torchscript(fuse_blocks(model))


def _run_pass(plan: Plan, data_pass: DataPass, staging: writers.Staging, summary: RunSummary):
    from .engine import Engine, EngineError

    config, maps = plan.config, plan.maps
    mode = maps.mode
    gpu = plan.device != "cpu"
    engines = []
    start = time.perf_counter()
    for job in data_pass.jobs:
        log.info("%s-%d best-%s: %d session(s) x %d %s(s)", maps.split_name, job.split, job.metric,
                 len(data_pass.sessions), len(data_pass.element_ids), mode)
        try:
            engine = Engine(_export(plan, job), device=plan.device, method=config.method, target=config.target_node,
                            amp=_amp_dtype() if config.amp else None,
                            cam_variant="clinicadl" if config.compat == "clinicadl" else "published",
                            deterministic=config.deterministic, element_ids=data_pass.element_ids)
        except EngineError as error:
            raise MapsInterpretError(f"{job.model_path}: {error}") from None
        engines.append((job, engine, staging.new_dir()))
    summary.engine_seconds += time.perf_counter() - start

    on_device = config.preprocess_on == "device" or (config.preprocess_on == "auto" and gpu)
    dataset = SessionDataset(data_pass.sessions, data_pass.layout, Preprocess.from_params(maps.params),
                             maps.input_size, data_pass.element_ids, raw=on_device)
    progress = tqdm(total=data_pass.n_elements, unit=mode, desc=f"{config.data_group}/{config.name}", disable=None,
                    leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    first = True
    with progress, writers.BackgroundWriter() as background:
        batches = make_batches(dataset, config.n_proc, config.reader, config.batch_size, plan.device)
        for batch in prefetch(batches, depth=2 if gpu else 0):
            batch.wait()  # GPU: the batch was made on another stream
            for job, engine, folder in engines:
                try:
                    maps_ = engine.accumulate(batch.images, batch.element_ids, return_maps=config.save_individual)
                except EngineError as error:
                    hint = (f"; lower --batch_size (now {config.batch_size})" if "out of memory" in str(error).lower()
                            else "")
                    raise MapsInterpretError(f"{job.model_path}: {error}{hint}") from None
                if maps_ is not None:
                    maps_ = maps_.cpu()
                    for map_, element, index in zip(maps_, batch.element_ids, batch.session_index):
                        session = data_pass.sessions[index]
                        stem = f"{session.participant_id}_{session.session_id}_{mode}-{element}_map"
                        background.submit(_write_map, map_, folder / stem, config.save_nifti)
            progress.update(len(batch.element_ids))
            if first:  # the first accumulate blocks while cuDNN autotunes; later ones queue device work
                summary.first_batch_seconds += time.perf_counter() - start
                first = False
    summary.loop_seconds += time.perf_counter() - start
    summary.sessions += len(data_pass.sessions)
    summary.maps += data_pass.n_elements * len(engines)

    for job, engine, folder in engines:
        zeros = engine.zero_fraction()  # one device synchronisation
        if zeros is not None:
            log.info("%s-%d best-%s: %.4f%% of the gradient values are exactly zero under --amp (compare with a "
                     "float32 run to see underflow)", maps.split_name, job.split, job.metric, 100 * zeros)
        for element, mean in group_means(engine, config.compat, len(data_pass.sessions),
                                         len(data_pass.element_ids)).items():
            _write_map(mean.cpu(), folder / f"mean_{mode}-{element}_map", config.save_nifti)
    return [(job, folder) for job, _, folder in engines]


def group_means(engine, compat, n_sessions: int, n_elements: int) -> dict[int, torch.Tensor]:
    """The mean map of each element over the sessions. ClinicaDL divides every element's sum by
    sessions x elements per image instead (`--compat clinicadl` reproduces it)."""
    if compat == "clinicadl":
        return {element: total / (n_sessions * n_elements) for element, total in engine.sums().items()}
    return engine.means()


def nifti_array(map_: torch.Tensor) -> torch.Tensor:
    """A map (C, *spatial) as NIfTI data: the spatial axes first; several channels (rgb slices) go to the
    4th axis, after a singleton z for 2D maps."""
    if map_.shape[0] == 1:
        return map_[0]
    channels_last = map_.movedim(0, -1)
    return channels_last.unsqueeze(2) if map_.dim() == 3 else channels_last


def _write_map(map_: torch.Tensor, stem: Path, nifti: bool) -> None:
    writers.save_tensor(map_, stem.with_name(stem.name + ".pt"))
    if nifti:
        writers.save_nifti(nifti_array(map_).numpy(), stem.with_name(stem.name + ".nii.gz"))


def _amp_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
