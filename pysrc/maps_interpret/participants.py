"""The participants/sessions a user gives for a new data group (`--participants_tsv`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import MapsInterpretError
from .names import check_name
from .tables import read_table


@dataclass(frozen=True)
class Participants:
    """Rows ready for a group's data.tsv: participant_id, session_id, cohort, and the MAPS label
    column when the TSV has it (ClinicaDL's choice of columns)."""

    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]

    @property
    def participant_ids(self) -> set[str]:
        return {row["participant_id"] for row in self.rows}


def load_participants(tsv: Path, diagnoses: Sequence[str], multi_cohort: bool,
                      label: Optional[str]) -> Participants:
    """Reads a participants TSV, keeps the rows whose diagnosis is in `diagnoses` and checks ids."""
    tsv = Path(tsv)
    if multi_cohort:
        raise MapsInterpretError("--multi_cohort is not supported yet: give a single-cohort TSV and CAPS")
    if tsv.is_dir():
        raise MapsInterpretError(f"--participants_tsv {tsv} is a folder: give a TSV file")
    table = read_table(tsv)
    if {"cohort", "path"} <= set(table.columns):
        raise MapsInterpretError(f"{tsv} lists cohorts (columns 'cohort' and 'path'): add --multi_cohort "
                                 "and give a cohort TSV as --caps_directory too")
    table.require("participant_id", "session_id", "diagnosis")
    kept = [row for row in table.rows if row["diagnosis"] in diagnoses]
    if not kept:
        found = sorted({row["diagnosis"] for row in table.rows})
        raise MapsInterpretError(
            f"no row of {tsv} has a diagnosis in {list(diagnoses)} (found: {found or 'no rows'}); "
            "choose the diagnoses with -d/--diagnoses")
    check_sessions(kept, tsv)
    columns = ["participant_id", "session_id", "cohort"]
    if label is not None and label in table.columns and label not in columns:
        columns.append(label)
    rows = tuple({**{c: row[c] for c in columns if c in row}, "cohort": "single"} for row in kept)
    return Participants(columns=tuple(columns), rows=rows)


def check_sessions(rows: Sequence[dict[str, str]], where: Path) -> None:
    """Ids become file names, and a session listed twice would be counted twice in the mean."""
    seen: set[tuple[str, str]] = set()
    for row in rows:
        participant = check_name(row["participant_id"], f"{where}: participant_id", MapsInterpretError)
        session = check_name(row["session_id"], f"{where}: session_id", MapsInterpretError)
        if (participant, session) in seen:
            raise MapsInterpretError(f"{where} lists {participant} {session} more than once: "
                                     "remove the duplicate rows")
        seen.add((participant, session))
