"""Writing a data group into the MAPS, as the plan decided it (plan/groups.py decides and checks, this writes):
done only together with the first finished results, so a refused or failed command leaves the MAPS as it was."""

from __future__ import annotations

from ..maps import Maps
from ..plan.groups import GroupPlan
from . import writers


def commit_group(maps: Maps, plan: GroupPlan) -> None:
    """Applies the plan: erase the group's results (--overwrite), then write its definition."""
    if plan.erase_results:
        for split in maps.splits():
            for best in sorted(maps.split_dir(split).glob("best-*")):
                writers.remove_tree(best / plan.name)
    if plan.new_definition is not None:
        definition = plan.new_definition
        folder = maps.groups_dir / plan.name
        folder.mkdir(parents=True, exist_ok=True)
        writers.write_tsv(folder / "data.tsv", list(definition.columns), definition.rows)
        writers.write_json(folder / "maps.json", {"caps_directory": definition.caps_directory,
                                                  "multi_cohort": definition.multi_cohort})
