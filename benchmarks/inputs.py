"""The inputs every in-process benchmark script takes: a MAPS, its CAPS and the sessions' TSV (as made by
benchmarks/run.py). Importing this sets huge pages for torch's CPU buffers as the maps-interpret command
does, so it must come before torch is imported."""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # torch reads it at its first allocation


def parser(description: str, batch_size: int) -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(description=description)
    out.add_argument("maps", type=Path)
    out.add_argument("caps", type=Path)
    out.add_argument("tsv", type=Path)
    out.add_argument("--batch_size", type=int, default=batch_size)
    return out


def maps_and_sessions(args: argparse.Namespace):
    """The opened MAPS and the TSV's sessions with their tensor paths."""
    from maps_interpret.data.caps import find_sessions
    from maps_interpret.maps import open_maps

    maps = open_maps(args.maps)
    with args.tsv.open() as handle:
        rows = [{**row, "cohort": "single"} for row in csv.DictReader(handle, delimiter="\t")]
    return maps, find_sessions({"single": args.caps}, rows, maps.params["preprocessing_dict"])
