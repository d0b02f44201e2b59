"""The participants/sessions a user gives for a new data group (`--participants_tsv`).

Accepted forms:
- a TSV file with `participant_id`, `session_id`, `diagnosis` columns;
- a folder holding `train.tsv`, else `labels.tsv` (what `clinicadl tsvtools` writes), read like a TSV file;
- a folder of one TSV per diagnosis (`AD.tsv`, `CN.tsv`, ...; the diagnosis column may be absent);
- with `--multi_cohort`: a TSV with `cohort`, `diagnoses` (comma-separated) and `path` columns, `path` being
  any of the forms above for that cohort.
Rows are kept when their diagnosis is in the diagnoses asked (`-d`, else the MAPS' diagnoses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import MapsInterpretError
from ..names import check_name
from ..tables import Table, read_table


@dataclass(frozen=True)
class Participants:
    """Rows ready for a group's data.tsv: participant_id, session_id, cohort, and the MAPS label
    column when the TSV has it (ClinicaDL's choice of columns)."""

    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]


def resolve_listed_path(value: str, listing: Path) -> Path:
    """A path written in a TSV: against the working directory (as ClinicaDL), then the TSV's folder."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    beside = listing.parent / path
    return beside if beside.exists() else path


def load_participants(tsv: Path, diagnoses: Sequence[str], multi_cohort: bool,
                      label: Optional[str]) -> Participants:
    tsv = Path(tsv)
    if multi_cohort:
        rows, columns = _load_cohorts(tsv, diagnoses, label)
    else:
        if tsv.is_file() and {"cohort", "path"} <= set(read_table(tsv).columns):
            raise MapsInterpretError(f"{tsv} lists cohorts (columns 'cohort' and 'path'): add --multi_cohort "
                                     "and give a cohort TSV as --caps_directory too")
        rows, columns = _load_single(tsv, diagnoses, label)
        rows = [{**row, "cohort": "single"} for row in rows]
    check_sessions(rows, tsv)
    return Participants(columns=tuple(columns), rows=tuple(rows))


def _load_single(path: Path, diagnoses: Sequence[str], label: Optional[str]) -> tuple[list[dict], list[str]]:
    """Rows (participant_id, session_id, diagnosis [, label]) of one cohort, filtered by diagnosis."""
    if path.is_dir():
        listed = [path / "train.tsv", path / "labels.tsv"]
        found = next((p for p in listed if p.is_file()), None)
        if found is not None:
            return _load_single(found, diagnoses, label)
        per_diagnosis = [path / f"{d}.tsv" for d in diagnoses]
        if not any(p.is_file() for p in per_diagnosis):
            raise MapsInterpretError(f"--participants_tsv {path} is a folder without train.tsv, labels.tsv or "
                                     f"one TSV per diagnosis ({', '.join(p.name for p in per_diagnosis)})")
        rows, columns = [], ["participant_id", "session_id"]
        for diagnosis, file in zip(diagnoses, per_diagnosis):
            if not file.is_file():
                continue
            table = read_table(file)
            table.require("participant_id", "session_id")
            rows += [{**row, "diagnosis": row.get("diagnosis") or diagnosis} for row in table.rows]
            columns += [c for c in table.columns if c not in columns]
        return _keep(rows, columns + ["diagnosis"], diagnoses, label, path)
    table = read_table(path)
    table.require("participant_id", "session_id", "diagnosis")
    return _keep(list(table.rows), list(table.columns), diagnoses, label, path)


def _keep(rows: list[dict], columns: list[str], diagnoses: Sequence[str], label: Optional[str],
          where: Path) -> tuple[list[dict], list[str]]:
    kept = [row for row in rows if row.get("diagnosis") in diagnoses]
    if not kept:
        found = sorted({str(row.get("diagnosis")) for row in rows})
        raise MapsInterpretError(f"no row of {where} has a diagnosis in {list(diagnoses)} (found: "
                                 f"{', '.join(repr(d) for d in found) or 'no rows'}); choose the diagnoses with "
                                 "-d/--diagnoses")
    out_columns = ["participant_id", "session_id", "cohort"]
    if label is not None and label in columns and label not in out_columns:
        out_columns.append(label)
    return [{c: row[c] for c in out_columns if c in row} for row in kept], out_columns


def _load_cohorts(tsv: Path, diagnoses: Sequence[str], label: Optional[str]) -> tuple[list[dict], list[str]]:
    if tsv.is_dir():
        raise MapsInterpretError(f"--multi_cohort: --participants_tsv {tsv} must be a TSV of cohorts "
                                 "(columns cohort, diagnoses, path), not a folder")
    table = read_table(tsv)
    table.require("cohort", "diagnoses", "path")
    rows, columns, found = [], ["participant_id", "session_id", "cohort"], set()
    for cohort in table.rows:
        check_name(cohort["cohort"], f"{tsv}: cohort", MapsInterpretError)
        wanted = [d for d in diagnoses if d in {x.strip() for x in cohort["diagnoses"].split(",")}]
        if not wanted:
            continue
        cohort_rows, cohort_columns = _load_single(resolve_listed_path(cohort["path"], tsv), wanted, label)
        rows += [{**row, "cohort": cohort["cohort"]} for row in cohort_rows]
        columns += [c for c in cohort_columns if c not in columns]
        found |= set(wanted)
    if found != set(diagnoses):
        raise MapsInterpretError(f"{tsv}: the cohorts list diagnoses {sorted(found)}, not all of {sorted(diagnoses)}; "
                                 "choose the diagnoses with -d/--diagnoses")
    return rows, columns


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


def check_leakage(name: str, rows: Sequence[dict], training: Table) -> None:
    """Participants seen in training must not be evaluated in a new group (ClinicaDL's rule: participant ids,
    not sessions); `training`: the table of the training sessions (Maps.training_table)."""
    training.require("participant_id")
    leaked = sorted({row["participant_id"] for row in rows} & {r["participant_id"] for r in training.rows})
    if leaked:
        shown = ", ".join(leaked[:10]) + (", ..." if len(leaked) > 10 else "")
        raise MapsInterpretError(
            f"data leakage: {len(leaked)} participant(s) of the new data group {name} were used in training "
            f"({shown}; see {training.path}); remove them from the TSV")
