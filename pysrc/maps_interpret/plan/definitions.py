"""What a command decides about its data group (groups.py, groups2.py decide; output/groups.py writes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class GroupDefinition:
    caps_directory: str  # as stored in the group's maps.json (relative paths are kept relative)
    multi_cohort: bool
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    dataset: Optional[dict] = None  # ClinicaDL 2.0: the group's dataset.json (transforms, file type)


@dataclass(frozen=True)
class GroupPlan:
    name: str
    new_definition: Optional[GroupDefinition]  # written by commit_group (new or redefined group)
    erase_results: bool  # --overwrite on an existing group: its results in every split are removed
    caps_override: Optional[str] = None  # ClinicaDL 2.0: --caps_directory for an existing group's CAPS
