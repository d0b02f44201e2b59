"""Data groups: which sessions and CAPS a command interprets, decided as ClinicaDL 1.6.1 decides,
except that `--overwrite` with a new TSV/CAPS really redefines the group.

`plan_group` only reads and checks; output/groups.py's `commit_group` writes, only when every check of the
command has passed, so a refused command leaves the MAPS as it was.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..config import InterpretConfig
from ..errors import MapsInterpretError, UsageError
from ..maps import Maps
from ..tables import read_table
from . import groups2
from .definitions import GroupDefinition, GroupPlan
from .participants import Participants, check_leakage, check_sessions, load_participants, resolve_listed_path

TRAINING_GROUPS = ("train", "validation")
log = logging.getLogger("maps_interpret")


def group_dir(maps: Maps, name: str, split: Optional[int] = None) -> Path:
    if maps.generation == 2:
        return maps.group_dir(name, split)
    path = maps.groups_dir / name
    return path / f"{maps.split_name}-{split}" if name in TRAINING_GROUPS else path


def plan_group(maps: Maps, config: InterpretConfig) -> GroupPlan:
    if maps.generation == 2:
        return groups2.plan_group(maps, config)
    name = config.data_group
    exists = (maps.groups_dir / name).is_dir()
    given = config.participants_tsv is not None or config.caps_directory is not None
    participants = None
    if config.diagnoses and config.participants_tsv is None and not config.resume:
        state = f"is already defined in {maps.groups_dir / name}" if exists else "does not exist yet"
        raise UsageError(f"-d/--diagnoses filters the rows of --participants_tsv, which is not given (data group "
                         f"{name} {state}): remove -d, or give the TSV (with --overwrite to redefine the group)")
    if config.participants_tsv is not None:  # read first, as ClinicaDL does: a bad TSV fails before anything
        participants = load_participants(
            config.participants_tsv, config.diagnoses or maps.params["diagnoses"], config.multi_cohort,
            maps.params.get("label"))

    if exists and config.overwrite:
        if name in TRAINING_GROUPS:
            raise UsageError(f"--overwrite cannot be used on the {name} data group: it is defined by the "
                             "training; choose another DATA_GROUP name")
        if not given:
            return GroupPlan(name, new_definition=None, erase_results=True)
        partial = config.participants_tsv is None or config.caps_directory is None
        definition = _definition(config, participants, fallback=read_definition(maps, name) if partial else None)
        _check_leakage(maps, name, definition)
        return GroupPlan(name, new_definition=definition, erase_results=True)
    if exists:
        if given and config.resume:  # the interrupted run defined it; its checkpoint holds the sessions it used
            log.info("data group %s is already defined (by the interrupted run): --participants_tsv and "
                     "--caps_directory are not read again", name)
            return GroupPlan(name, new_definition=None, erase_results=False)
        if given:
            raise UsageError(
                f"data group {name} is already defined in {maps.groups_dir / name}: to use it, give neither "
                "--participants_tsv nor --caps_directory; to redefine it (erasing its results), add --overwrite")

        return GroupPlan(name, new_definition=None, erase_results=False)
    if config.participants_tsv is None or config.caps_directory is None:
        missing = " and ".join(opt for opt, value in (("--participants_tsv", config.participants_tsv),
                                                       ("--caps_directory", config.caps_directory)) if value is None)
        raise UsageError(f"data group {name} does not exist in {maps.groups_dir}: give {missing} to create it")
    definition = _definition(config, participants, fallback=None)
    _check_leakage(maps, name, definition)
    return GroupPlan(name, new_definition=definition, erase_results=False)


def _definition(config: InterpretConfig, participants: Optional[Participants],
                fallback: Optional[GroupDefinition]) -> GroupDefinition:
    """The group defined by the options; with --overwrite, an option not given keeps the old value."""
    if config.caps_directory is not None:
        caps, multi_cohort = str(config.caps_directory), config.multi_cohort
    else:
        caps, multi_cohort = fallback.caps_directory, fallback.multi_cohort
    if participants is not None:
        columns, rows = participants.columns, participants.rows
    else:
        columns, rows = fallback.columns, fallback.rows
    return GroupDefinition(caps_directory=caps, multi_cohort=multi_cohort, columns=columns, rows=rows)


def _check_leakage(maps: Maps, name: str, definition: GroupDefinition) -> None:
    if name not in TRAINING_GROUPS:
        check_leakage(name, definition.rows, maps.training_table())


def read_definition(maps: Maps, name: str, split: Optional[int] = None) -> GroupDefinition:
    """The stored definition of a group (for train/validation: of one split)."""
    if maps.generation == 2:
        return groups2.read_definition(maps, name, split)
    folder = group_dir(maps, name, split)
    if not folder.is_dir():
        if name in TRAINING_GROUPS:
            raise MapsInterpretError(f"{folder} does not exist: the MAPS has no {name} data of split {split}")
        raise MapsInterpretError(f"data group {name} is not defined ({folder} does not exist)")
    table = read_table(folder / "data.tsv")
    table.require("participant_id", "session_id")
    check_sessions(table.rows, table.path)
    try:
        params = json.loads((folder / "maps.json").read_text(encoding="utf-8"))
        caps, multi_cohort = params["caps_directory"], bool(params.get("multi_cohort", False))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MapsInterpretError(f"{folder / 'maps.json'} must be a JSON object with 'caps_directory' "
                                 f"({type(error).__name__}: {error})") from None
    if not isinstance(caps, str) or not caps:
        raise MapsInterpretError(f"{folder / 'maps.json'}: 'caps_directory' must be a path")
    rows = tuple({**row, "cohort": row.get("cohort") or "single"} for row in table.rows)
    return GroupDefinition(caps_directory=caps, multi_cohort=multi_cohort, columns=table.columns, rows=rows)


def definition_for_split(maps: Maps, plan: GroupPlan, split: int) -> GroupDefinition:
    """What the command interprets for one split (the new definition when the command writes one; in a
    ClinicaDL 2.0 output, read with the preprocessing of the split's training data)."""
    if plan.new_definition is None:
        return read_definition(maps, plan.name, split)
    if maps.generation == 2:
        return replace(plan.new_definition, dataset=groups2.training_dataset(maps, split))
    return plan.new_definition


def resolve_caps(maps: Maps, definition: GroupDefinition, override: Optional[str] = None) -> dict[str, Path]:
    """The CAPS folder(s) of a group, by cohort ({"single": caps} unless multi-cohort). Relative paths are
    read against the working directory (as ClinicaDL does), then against the folder that holds the MAPS.
    `override`: where --caps_directory says an existing ClinicaDL 2.0 group's CAPS is now."""
    if maps.generation == 2:
        return {"single": groups2.resolve_caps(maps, definition.caps_directory, override)}
    location = _existing(maps, definition.caps_directory)
    if not definition.multi_cohort:
        if not location.is_dir():
            raise MapsInterpretError(f"CAPS folder {location} is not a folder")
        return {"single": location}
    if not location.is_file():
        raise MapsInterpretError(f"multi-cohort group: caps_directory {location} must be a TSV of cohorts "
                                 "(columns cohort, path)")
    table = read_table(location)
    table.require("cohort", "path")
    return {row["cohort"]: resolve_listed_path(row["path"], location) for row in table.rows}


def _existing(maps: Maps, stored: str) -> Path:
    path = Path(stored)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, maps.path.parent / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise MapsInterpretError(
        f"CAPS {stored} not found (looked for {', '.join(str(c) for c in candidates)}); "
        "run from the folder the MAPS' relative paths start from")
