"""Everything a command will do, decided and checked before anything is written: the device, the
data group, the (split, selection metric) models, the sessions and their tensors, the elements of each
image, the output folders.

Jobs that read the same sessions from the same CAPS share one pass over the data (the `test` group of
every split and metric, for instance), so each image is loaded and preprocessed once per command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .caps import Session, find_sessions, load_tensor
from .config import InterpretConfig, validate
from .elements import layout_for
from .errors import MapsInterpretError, UsageError
from .groups import TRAINING_GROUPS, GroupPlan, definition_for_split, group_dir, plan_group, resolve_caps
from .maps import Maps, open_maps

@dataclass(frozen=True)
class Job:
    split: int
    metric: str
    model_path: Path
    output_dir: Path


@dataclass
class DataPass:
    caps: dict[str, Path]
    sessions: list[Session]
    layout: object  # elements.*Layout
    element_ids: list[int]
    jobs: list[Job] = field(default_factory=list)

    @property
    def n_elements(self) -> int:
        return len(self.sessions) * len(self.element_ids)


@dataclass
class Plan:
    config: InterpretConfig
    maps: Maps
    device: str
    group: GroupPlan
    passes: list[DataPass]

    @property
    def jobs(self) -> list[Job]:
        return [job for data_pass in self.passes for job in data_pass.jobs]


def select_device(config: InterpretConfig) -> str:
    if not config.gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise MapsInterpretError("no GPU is available: add --no-gpu to run on the CPU")
    return "cuda"


def make_plan(config: InterpretConfig) -> Plan:
    validate(config)
    device = select_device(config)
    maps = open_maps(config.input_maps_directory)
    splits = maps.splits()
    if not splits:
        raise MapsInterpretError(f"{maps.path} has no {maps.split_name}-<k> folder: no model was trained in this MAPS")

    models = [(split, metric) for split in splits for metric in config.selection_metrics]
    for split, metric in models:
        check_model(maps, split, metric, cam=config.method == "grad-cam")
    from .models import output_count

    outputs = output_count(maps)
    if outputs is not None and config.target_node >= outputs:
        raise UsageError(f"--target_node {config.target_node} is out of range: the network of {maps.path} has "
                         f"{outputs} output node(s), 0..{outputs - 1} (label_code: {maps.params.get('label_code')})")
    group = plan_group(maps, config)

    prep = maps.params["preprocessing_dict"]
    passes: dict[tuple, DataPass] = {}
    from .models import model_file

    for split, metric in models:
        output_dir = maps.results_dir(split, metric, config.data_group, config.name)  # checked by api (--continue)
        definition = definition_for_split(maps, group, split)
        if not definition.rows:
            raise MapsInterpretError(empty_group_message(maps, config, split))
        caps = resolve_caps(maps, definition)
        key = (tuple(sorted((c, str(p.resolve())) for c, p in caps.items())),
               tuple((r["participant_id"], r["session_id"]) for r in definition.rows))
        if key not in passes:
            sessions = find_sessions(caps, definition.rows, prep)
            layout = layout_for(prep, next(iter(caps.values())))  # roi masks: the group's (first) CAPS
            first = load_tensor(sessions[0].tensor_path, mmap=True)  # ClinicaDL counts elements on it
            passes[key] = DataPass(caps, sessions, layout, layout.element_ids(tuple(first.shape)))
        passes[key].jobs.append(Job(split, metric, model_file(maps, split, metric), output_dir))
    return Plan(config=config, maps=maps, device=device, group=group, passes=list(passes.values()))


def empty_group_message(maps: Maps, config: InterpretConfig, split: int) -> str:
    table = group_dir(maps, config.data_group, split) / "data.tsv"
    if config.data_group in TRAINING_GROUPS:
        return (f"data group {config.data_group} has no session for {maps.split_name}-{split}: {table} has a "
                "header but no rows; this MAPS cannot be interpreted on its training data")
    return (f"data group {config.data_group} has no session: {table} has a header but no rows; redefine it with "
            "--overwrite --participants_tsv TSV --caps_directory CAPS, or choose another DATA_GROUP")


def check_model(maps: Maps, split: int, metric: str, cam: bool) -> None:
    """The model exists and loads safely (a checkpoint is checked against the architecture, memory-mapped)."""
    from .models import check_weights, model_file

    path = model_file(maps, split, metric)
    if not (maps.split_dir(split) / f"best-{metric}").is_dir():
        available = maps.selection_metrics(split)
        raise MapsInterpretError(
            f"{maps.split_dir(split).name} has no model for selection metric {metric!r} "
            f"({path.parent} does not exist); available: {', '.join(available) or 'none'}")
    check_weights(maps, path, cam=cam)
