"""Everything a command will do, decided and checked before anything is written: the device, the
data group, the (split, selection metric) models, the sessions and their tensors, the elements of each
image, the output folders.

Jobs that read the same sessions from the same CAPS share one pass over the data (the `test` group of
every split and metric, for instance), so each image is loaded and preprocessed once per command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

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
    subsets: list[str] = field(default_factory=list)  # --group_by: each subset's name (file names), by index
    image_shape: tuple = ()  # (C, D, H, W) of the sessions' image tensors, before elements are cut

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
    if config.sanity_check:
        from .sanity import check_plan

        check_plan(maps)
    from .models import output_count

    outputs = output_count(maps)
    check_target(maps, config, outputs)
    check_group_by(maps, config)
    labelled = config.target_node == "label" or config.group_by == "correct"
    column = config.group_by if config.group_by not in (None, "predicted", "correct") else None
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
            sessions = find_sessions(caps, definition.rows, prep, maps.params.get("label") if labelled else None,
                                     column)
            if labelled:
                check_labels(sessions, maps.params["label_code"], maps.params.get("label"))
            layout = layout_for(prep, next(iter(caps.values())))  # roi masks: the group's (first) CAPS
            first = load_tensor(sessions[0].tensor_path, mmap=True)  # ClinicaDL counts elements on it
            passes[key] = DataPass(caps, sessions, layout, layout.element_ids(tuple(first.shape)),
                                   subsets=subset_names(maps, config, sessions, definition),
                                   image_shape=tuple(first.shape))
        passes[key].jobs.append(Job(split, metric, model_file(maps, split, metric), output_dir))
    return Plan(config=config, maps=maps, device=device, group=group, passes=list(passes.values()))


def check_target(maps: Maps, config: InterpretConfig, outputs) -> Optional[dict]:
    """--target_node against the network: an integer in range; label and predicted need a classification
    MAPS (label through label_code, each class's output node). Returns label_code for `label`."""
    target, label_code = config.target_node, maps.params.get("label_code")
    if isinstance(target, int):
        if outputs is not None and target >= outputs:
            raise UsageError(f"--target_node {target} is out of range: the network of {maps.path} has "
                             f"{outputs} output node(s), 0..{outputs - 1} (label_code: {label_code})")
        return None
    if not isinstance(label_code, dict) or not label_code:
        raise UsageError(f"--target_node {target} needs a classification MAPS (a label_code in maps.json); "
                         f"{maps.path} has none (a regression MAPS?): give an output node, e.g. --target_node 0")
    if target == "predicted":
        return None
    bad = {name: code for name, code in label_code.items()
           if not isinstance(code, int) or (outputs is not None and not 0 <= code < outputs)}
    if bad:
        raise MapsInterpretError(f"{maps.path}/maps.json: label_code {bad} names no output node of the network "
                                 f"({outputs} output node(s))")
    return label_code


def check_group_by(maps: Maps, config: InterpretConfig) -> None:
    if config.group_by in ("predicted", "correct") and not isinstance(maps.params.get("label_code"), dict):
        raise UsageError(f"--group_by {config.group_by} needs a classification MAPS (a label_code in maps.json); "
                         f"{maps.path} has none: group by a column of the group's TSV instead")


def subset_names(maps: Maps, config: InterpretConfig, sessions: list, definition) -> list[str]:
    """The subsets of --group_by, by index (the engine's subset numbers): the classes (predicted), false/true
    (correct), or the sorted values of a column. Each name becomes part of file names."""
    from .names import check_name

    if config.group_by is None:
        return []
    if config.group_by == "correct":
        return ["false", "true"]
    if config.group_by == "predicted":
        code = maps.params["label_code"]
        by_node = {node: name for name, node in code.items()}
        return [str(by_node.get(node, node)) for node in range(max(code.values()) + 1)]
    if config.group_by not in definition.columns:
        raise UsageError(f"--group_by {config.group_by}: the data group has no such column (columns: "
                         f"{', '.join(definition.columns)}); or use predicted or correct")
    missing = [f"{s.participant_id} {s.session_id}" for s in sessions if not s.group]
    if missing:
        raise MapsInterpretError(f"--group_by {config.group_by}: {len(missing)} session(s) have no value in that "
                                 f"column (first: {missing[0]}); fill it in the group's TSV")
    names = sorted({s.group for s in sessions})
    for name in names:
        check_name(name, f"--group_by {config.group_by} value", MapsInterpretError)
    return names


def check_labels(sessions: list, label_code: dict, column: Optional[str]) -> None:
    """--target_node label: every session's label is one of label_code's classes."""
    for session in sessions:
        if session.label not in label_code:
            value = "no value" if session.label is None else f"{session.label!r}"
            raise MapsInterpretError(
                f"--target_node label: {session.participant_id} {session.session_id} has {value} in column "
                f"{column!r} of the data group's table, not one of label_code's classes ({', '.join(label_code)}): "
                "fix the group's TSV, or use --target_node predicted or an output node")


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
