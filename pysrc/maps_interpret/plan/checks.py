"""The plan's checks of the options against the MAPS, the network and the data group: each raises a one-line
error before anything is written."""

from __future__ import annotations

from typing import Optional

from ..config import InterpretConfig
from ..errors import MapsInterpretError, UsageError
from ..maps import Maps
from ..models import check_weights, model_file
from ..names import check_name
from .groups import TRAINING_GROUPS, group_dir


def check_target(maps: Maps, config: InterpretConfig, outputs) -> Optional[dict]:
    """--target_node against the network: an integer in range; label and predicted need a classification
    MAPS (label through label_code, each class's output node). Returns label_code for `label`."""
    target, label_code = config.target_node, maps.params.get("label_code")
    if isinstance(target, int):
        if outputs is not None and target >= outputs:
            raise UsageError(f"--target_node {target} is out of range: the network of {maps.path} has "
                             f"{outputs} output node(s), 0..{outputs - 1} (label_code: {label_code})")
        return None
    if (not isinstance(label_code, dict) or not label_code) and maps.generation == 2:
        raise UsageError(single_node_message(maps, f"--target_node {target}", outputs))
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


def single_node_message(maps, option: str, outputs) -> str:
    """ClinicaDL 2.0 leaves label encoding to the user: only a classifier with several output nodes can take
    its node from a session's label (or predict a class among nodes)."""
    kind = ("a binary classifier's single logit" if maps.params["network_task"] == "classification"
            else "a regressor's output")
    return (f"{option} needs a classifier with one output node per class; the network of {maps.path} has "
            f"{outputs or maps.params['output_size']} output node(s) ({kind}, ClinicaDL 2.0): use --target_node 0"
            f"{' and group by a column of the data group' if option.startswith('--group_by') else ''}")


def check_group_by(maps: Maps, config: InterpretConfig) -> None:
    if (config.group_by in ("predicted", "correct") and maps.generation == 2
            and not maps.params.get("label_code")):
        raise UsageError(single_node_message(maps, f"--group_by {config.group_by}", None))
    if config.group_by in ("predicted", "correct") and not isinstance(maps.params.get("label_code"), dict):
        raise UsageError(f"--group_by {config.group_by} needs a classification MAPS (a label_code in maps.json); "
                         f"{maps.path} has none: group by a column of the group's TSV instead")


def subset_names(maps: Maps, config: InterpretConfig, sessions: list, definition) -> list[str]:
    """The subsets of --group_by, by index (the engine's subset numbers): the classes (predicted), false/true
    (correct), or the sorted values of a column. Each name becomes part of file names."""
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
    path = model_file(maps, split, metric)
    if not maps.model_dir(split, metric).is_dir():
        available = maps.selection_metrics(split)
        raise MapsInterpretError(
            f"{maps.split_dir(split).name} has no model for selection metric {metric!r} "
            f"({path.parent} does not exist); available: {', '.join(available) or 'none'}")
    check_weights(maps, path, cam=cam)
