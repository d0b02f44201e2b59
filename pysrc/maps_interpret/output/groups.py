"""Writing a data group into the MAPS, as the plan decided it (plan/groups.py decides and checks, this writes):
done only together with the first finished results, so a refused or failed command leaves the MAPS as it was."""

from __future__ import annotations

import os
import shutil
import time

from ..maps import Maps
from ..plan.groups import GroupPlan
from . import writers


def commit_group(maps: Maps, plan: GroupPlan) -> None:
    """Applies the plan: erase the group's results (--overwrite), then write its definition. A new group's folder
    is built hidden and renamed into place whole: a run killed in between leaves no half-defined group."""
    if plan.erase_results:
        for split in maps.splits():
            for best in sorted(maps.split_dir(split).glob("best-*")):
                writers.remove_tree(best / plan.name)
    if plan.new_definition is None:
        return
    definition = plan.new_definition
    folder = maps.groups_dir / plan.name
    for left in maps.groups_dir.glob(f".{plan.name}.new-*"):  # what a killed run was building
        shutil.rmtree(left, ignore_errors=True)
    target = folder if folder.is_dir() else folder.with_name(f".{plan.name}.new-{os.getpid()}-{time.monotonic_ns()}")
    target.mkdir(parents=True, exist_ok=True)
    writers.write_tsv(target / "data.tsv", list(definition.columns), definition.rows)
    writers.write_json(target / "maps.json", {"caps_directory": definition.caps_directory,
                                              "multi_cohort": definition.multi_cohort})
    if target != folder:
        os.replace(target, folder)
