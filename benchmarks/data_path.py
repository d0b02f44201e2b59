"""The data path alone: images/s that the loader workers and `rebatch` deliver to the compute loop (no
engine), as maps-interpret runs them. On a GPU this, not the engine, bounds the end-to-end rate when it is
below the engine's floor (benchmarks/engine_floor.py).

    python benchmarks/data_path.py MAPS CAPS TSV [--batch_size 8] [-np 8] [--pin] [--repeats 3]
Prints a JSON line: images/s per repeat and their median.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the maps-interpret command does, before torch loads

from torch.utils.data import DataLoader  # noqa: E402

from maps_interpret.caps import SessionDataset, find_sessions, rebatch  # noqa: E402
from maps_interpret.elements import ImageLayout  # noqa: E402
from maps_interpret.maps import open_maps  # noqa: E402
from maps_interpret.transforms import Preprocess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("maps", type=Path)
    parser.add_argument("caps", type=Path)
    parser.add_argument("tsv", type=Path)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("-np", "--n_proc", type=int, default=2)
    parser.add_argument("--pin", action="store_true", help="batches in pinned memory (needs CUDA)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with args.tsv.open() as handle:
        rows = [{**r, "cohort": "single"} for r in csv.DictReader(handle, delimiter="\t")]
    maps = open_maps(args.maps)
    sessions = find_sessions({"single": args.caps}, rows, maps.params["preprocessing_dict"])
    dataset = SessionDataset(sessions, ImageLayout(), Preprocess.from_params(maps.params), maps.input_size, [0])
    rates = []
    for _ in range(args.repeats):
        loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=args.n_proc)
        start = time.perf_counter()
        n = sum(len(batch.element_ids) for batch in rebatch(loader, args.batch_size, pin=args.pin))
        rates.append(n / (time.perf_counter() - start))
    print(json.dumps({"images_per_s": rates, "median": statistics.median(rates), "images": n,
                      "n_proc": args.n_proc, "batch_size": args.batch_size, "pin": args.pin}))


if __name__ == "__main__":
    main()
