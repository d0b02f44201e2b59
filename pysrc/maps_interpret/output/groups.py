"""Writing a data group into the MAPS, as the plan decided it (plan/groups.py decides and checks, this writes):
done only together with the first finished results, so a refused or failed command leaves the MAPS as it was."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..maps import Maps
from ..maps2 import REPORTS
from ..plan.groups import GroupPlan
from . import writers


def commit_group(maps: Maps, plan: GroupPlan) -> None:
    """Applies the plan: erase the group's results (--overwrite), then write its definition. A new group's folder
    is built hidden and renamed into place whole: a run killed in between leaves no half-defined group."""
    if maps.generation == 2:
        return _commit_group2(maps, plan)
    if plan.erase_results:
        for split in maps.splits():
            for best in sorted(maps.split_dir(split).glob("best-*")):
                writers.remove_tree(best / plan.name)
        writers.remove_tree(maps.path / REPORTS / plan.name)  # the reports of the group's runs
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


def _number(text: str):
    """A TSV cell as ClinicaDL 2.0 stores it in dataset.json (numbers as numbers, so 2.0 can read the group)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _commit_group2(maps, plan: GroupPlan) -> None:
    """A ClinicaDL 2.0 test group: erase only maps-interpret's results (never 2.0's metrics), then write a new
    group as 2.0 lays one out (data.tsv, dataset.json with the training data's transforms, dataloader.json),
    plus a marker saying maps-interpret wrote it; built hidden and renamed into place whole."""
    from .._version import __version__
    from ..maps2 import MARKER, read_group

    if plan.erase_results:
        for split in maps.splits():
            for folder in sorted(maps.results_root(plan.name, split).glob("*/interpret-*")):
                writers.remove_tree(folder)
        writers.remove_tree(maps.path / REPORTS / plan.name)
    if plan.new_definition is None:
        return
    definition = plan.new_definition
    folder = maps.group_dir(plan.name)
    train = maps.group_dir("train", maps.splits()[0])
    dataset = dict(read_group(train).dataset)
    columns = [c for c in definition.columns if c != "cohort"]
    rows = definition.rows
    dataset["data"] = {**{c: {str(i): _number(row.get(c, "")) for i, row in enumerate(rows)} for c in columns},
                       "n_samples": {str(i): 1 for i in range(len(rows))}}
    dataset["bids"] = {**dataset.get("bids", {}), "path": str(Path(definition.caps_directory).resolve())}
    for left in folder.parent.glob(f".{folder.name}.new-*"):  # what a killed run was building
        shutil.rmtree(left, ignore_errors=True)
    target = folder.with_name(f".{folder.name}.new-{os.getpid()}-{time.monotonic_ns()}")
    target.mkdir(parents=True)
    writers.write_tsv(target / "data.tsv", ["participant_id", "session_id"], rows)
    writers.write_json(target / "dataset.json", dataset)
    if (train / "dataloader.json").is_file():
        shutil.copyfile(train / "dataloader.json", target / "dataloader.json")
    writers.write_json(target / MARKER, {"written_by": f"maps-interpret {__version__}",
                                         "participants": len(rows)})
    if folder.is_dir():  # a group maps-interpret wrote, redefined (--overwrite): its results are kept aside
        results = folder / "results"
        if results.is_dir():
            os.replace(results, target / "results")
        writers.remove_tree(folder)
    os.replace(target, folder)
