"""The command's options turned into the typed settings of each room (settings.py), once: what the later rooms
read instead of the options. Every value is checked here or in config.validate, once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..config import RESULT_OPTIONS, InterpretConfig, method_parameters, plain, record
from ..errors import UsageError
from ..settings import (DataSettings, EngineSettings, EvaluationSettings, OutputSettings, RunSettings,
                        SanitySettings, engine_settings)

# --target_node's words -> the engine's target mode (an integer is the "node" mode).
TARGET_MODES = {"label": "given", "predicted": "predicted"}
# --group_by -> the engine's subsets: none, the class predicted, right or wrong, else a column's value ("given").
GROUP_BY = {None: "none", "predicted": "predicted", "correct": "correct"}


@dataclass(frozen=True)
class Settings:
    engine: EngineSettings
    data: DataSettings
    output: OutputSettings
    run: RunSettings
    sanity: SanitySettings
    evaluation: EvaluationSettings
    options: dict  # every option as given, plain values (interpret.json records them)
    result_options: dict  # the options that change the maps (config.RESULT_OPTIONS): a checkpoint's fingerprint


def engine_of(config: InterpretConfig) -> EngineSettings:
    """The engine's settings (the method's parameters checked here, with the table's messages); amp is resolved
    with the device (`resolve`)."""
    target = config.target_node
    try:
        return engine_settings(
            config.method, target=target if isinstance(target, int) else 0,
            target_mode=TARGET_MODES.get(target, "node"), noise_tunnel=config.noise_tunnel, abs=config.abs,
            deterministic=config.deterministic, statistics=config.statistics,
            group_by=GROUP_BY.get(config.group_by, "given"), compat=config.compat, **method_parameters(config))
    except ValueError as error:  # the user's options: a usage error
        raise UsageError(str(error)) from None


def resolve(config: InterpretConfig, engine: EngineSettings, device: str) -> Settings:
    """Every room's settings for a run on `device` ("cpu" or "cuda"), with the `engine_of` the options."""
    return Settings(
        engine=replace(engine, amp=amp_dtype() if config.amp else None),
        data=DataSettings(batch_size=config.batch_size, n_proc=config.n_proc, reader=config.reader,
                          on_device=config.preprocess_on == "device" or (config.preprocess_on == "auto"
                                                                         and device != "cpu")),
        output=OutputSettings(data_group=config.data_group, name=config.name, method=engine.label,
                              save_individual=config.save_individual, save_nifti=config.save_nifti,
                              save_figures=config.save_figures, figure_display=config.figure_display,
                              statistics=config.statistics,
                              group_by=config.group_by, clinicadl_means=config.compat == "clinicadl",
                              overwrite_name=config.overwrite_name),
        run=RunSettings(data_group=config.data_group, name=config.name, resume=config.resume,
                        checkpoint_every=config.checkpoint_every, num_parts=config.num_parts,
                        part_id=config.part_id or 0, merge_parts=config.merge_parts,
                        overwrite_name=config.overwrite_name),
        sanity=SanitySettings(enabled=config.sanity_check, sessions=config.sanity_sessions),
        evaluation=EvaluationSettings(enabled=config.evaluate, steps=config.evaluation_steps,
                                      orders=tuple(config.evaluation_orders), lerf=config.evaluation_lerf,
                                      replacement=config.evaluation_replacement, value=config.evaluation_value,
                                      mask=None if config.evaluation_mask is None
                                      else Path(config.evaluation_mask).resolve(), roi=config.evaluation_roi),
        options=record(config),
        result_options=result_options(config, engine),
    )


def amp_dtype() -> str:
    """--amp's autocast dtype on this GPU: bfloat16 where supported, else float16."""
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def result_options(config: InterpretConfig, engine: EngineSettings) -> dict:
    """The options that change the maps (config.RESULT_OPTIONS): a checkpoint's fingerprint. Of the method
    parameters, those the method reads: a changed --n_steps does not make a gradients run another one."""
    from .. import methods

    read = set(methods.reads(engine.row, engine.noise_tunnel))
    return {key: plain(getattr(config, key)) for key in RESULT_OPTIONS
            if key not in methods.PARAMETERS or key in read}
