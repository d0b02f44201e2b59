"""The data path alone: images/s that the loader workers and `rebatch` deliver to the compute loop (no
engine), as maps-interpret runs them. On a GPU this, not the engine, bounds the end-to-end rate when it is
below the engine's floor (benchmarks/engine_floor.py).

    python benchmarks/data_path.py MAPS CAPS TSV [--batch_size 8] [-np 8] [--pin] [--repeats 3]
Prints a JSON line: images/s per repeat and their median.
"""

from __future__ import annotations

import json
import statistics
import time

import inputs  # before torch: huge pages, as the command sets them
from torch.utils.data import DataLoader

from maps_interpret.caps import SessionDataset, prefetch, rebatch
from maps_interpret.elements import ImageLayout
from maps_interpret.transforms import Preprocess


def main() -> None:
    parser = inputs.parser("the data path alone: loader workers and batching, no engine", batch_size=8)
    parser.add_argument("-np", "--n_proc", type=int, default=2)
    parser.add_argument("--pin", action="store_true", help="batches in pinned memory (needs CUDA)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    maps, sessions = inputs.maps_and_sessions(args)
    dataset = SessionDataset(sessions, ImageLayout(), Preprocess.from_params(maps.params), maps.input_size, [0])
    rates = []
    for _ in range(args.repeats):
        loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=args.n_proc)
        start = time.perf_counter()
        batches = rebatch(iter(loader), args.batch_size, pin=args.pin)
        n = sum(len(batch.element_ids) for batch in prefetch(batches, depth=2 if args.pin else 0))  # as api.py
        rates.append(n / (time.perf_counter() - start))
    print(json.dumps({"images_per_s": rates, "median": statistics.median(rates), "images": n,
                      "n_proc": args.n_proc, "batch_size": args.batch_size, "pin": args.pin}))


if __name__ == "__main__":
    main()
