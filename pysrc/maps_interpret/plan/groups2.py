"""Data groups of a ClinicaDL 2.0 output folder: `train`/`validation` are a split's training data
(`training/data/<group>/split-<k>/dataset.json`), any other name a test group (`test/group-<name>/`).

2.0's own groups are read, never redefined: `--overwrite` may redefine only a group that maps-interpret wrote
(it leaves a marker file there), and erases only maps-interpret's results, never 2.0's metrics. A CAPS recorded
as an absolute path of the training machine is looked for as given, then beside the output folder;
`--caps_directory` alone points an existing group at the CAPS where it is now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import InterpretConfig
from ..errors import MapsInterpretError, UsageError
from ..maps2 import TRAINING_GROUPS, Maps2, read_group
from ..tables import read_table
from .definitions import GroupDefinition, GroupPlan
from .participants import check_leakage, check_sessions


def plan_group(maps: Maps2, config: InterpretConfig) -> GroupPlan:
    name = config.data_group
    tsv, caps = config.participants_tsv, config.caps_directory
    relocated = None if caps is None else str(caps)
    if config.multi_cohort:
        raise UsageError("--multi_cohort: ClinicaDL 2.0 groups read one CAPS; give one --caps_directory")
    if name in TRAINING_GROUPS:
        if tsv is not None or config.overwrite:
            raise UsageError(f"the {name} data group is defined by the training ({maps.group_dir(name, 0)}): "
                             "remove --participants_tsv/--overwrite, or choose another DATA_GROUP name")
        return GroupPlan(name, new_definition=None, erase_results=False, caps_override=relocated)
    exists = maps.group_exists(name)
    if config.diagnoses and tsv is None:
        raise UsageError("-d/--diagnoses filters the rows of --participants_tsv, which is not given: remove -d")
    if exists and tsv is None:  # use it, with its CAPS where --caps_directory says it is now
        if config.overwrite and not maps.written_by_us(name):
            raise UsageError(f"--overwrite: data group {name} ({maps.group_dir(name)}) was written by ClinicaDL "
                             "2.0 itself; maps-interpret does not erase its folder: remove --overwrite")
        return GroupPlan(name, new_definition=None, erase_results=config.overwrite, caps_override=relocated)
    if exists and not config.overwrite:
        raise UsageError(f"data group {name} is already defined in {maps.group_dir(name)}: to use it, do not give "
                         "--participants_tsv; to redefine it, add --overwrite (only groups maps-interpret wrote)")
    if exists and not maps.written_by_us(name):
        raise UsageError(f"data group {name} ({maps.group_dir(name)}) was written by ClinicaDL 2.0 itself: "
                         "maps-interpret does not redefine it; choose another DATA_GROUP name")
    if tsv is None or caps is None:
        missing = " and ".join(opt for opt, value in (("--participants_tsv", tsv), ("--caps_directory", caps))
                               if value is None)
        raise UsageError(f"data group {name} does not exist in {maps.path / 'test'}: give {missing} to create it")
    columns, rows = _participants(Path(tsv), config.diagnoses)
    definition = GroupDefinition(caps_directory=str(caps), multi_cohort=False, columns=columns, rows=rows)
    check_leakage(name, definition.rows, maps.training_table())
    return GroupPlan(name, new_definition=definition, erase_results=exists, caps_override=None)


def _participants(tsv: Path, diagnoses) -> tuple[tuple[str, ...], tuple[dict, ...]]:
    table = read_table(tsv)
    table.require("participant_id", "session_id")
    rows = list(table.rows)
    if diagnoses:
        table.require("diagnosis")
        rows = [row for row in rows if row.get("diagnosis") in diagnoses]
        if not rows:
            raise MapsInterpretError(f"{tsv}: no row has a diagnosis among {', '.join(diagnoses)}")
    check_sessions(rows, tsv)
    return tuple(table.columns), tuple({**row, "cohort": "single"} for row in rows)


def read_definition(maps: Maps2, name: str, split: Optional[int]) -> GroupDefinition:
    """The stored group (for train/validation: of one split), with its dataset.json."""
    folder = maps.group_dir(name, split)
    if not (folder / "dataset.json").is_file():
        if name in TRAINING_GROUPS:
            raise MapsInterpretError(f"{folder / 'dataset.json'} does not exist: the output has no {name} data "
                                     f"of split {split}")
        raise MapsInterpretError(f"data group {name} is not defined ({folder / 'dataset.json'} does not exist)")
    record = read_group(folder)
    check_sessions(list(record.rows), folder / "dataset.json")
    rows = tuple({**row, "cohort": "single"} for row in record.rows)
    return GroupDefinition(caps_directory=record.caps_directory, multi_cohort=False, columns=record.columns,
                            rows=rows, dataset=record.dataset)


def training_dataset(maps: Maps2, split: int) -> dict:
    """The training group's dataset.json of a split: the preprocessing a new group is read with."""
    return read_group(maps.group_dir("train", split)).dataset


def resolve_caps(maps: Maps2, stored: str, override: Optional[str]) -> Path:
    """The group's CAPS: --caps_directory when given, else the recorded path as given (absolute, or relative
    to the working directory), then relative to the folder that holds the output."""
    if override is not None:
        path = Path(override)
        if not path.is_dir():
            raise MapsInterpretError(f"--caps_directory {override} is not a folder")
        return path
    path = Path(stored)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    candidates.append(maps.path.parent / (path.name if path.is_absolute() else path))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise MapsInterpretError(
        f"the CAPS of this data group ({stored}, recorded by ClinicaDL 2.0 at training time) is not found here "
        f"(looked for {', '.join(str(c) for c in candidates)}): give its location with --caps_directory")
