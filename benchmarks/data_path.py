"""The data path alone: images/s that reading and preprocessing deliver to the compute loop as batches (no
engine), as maps-interpret runs them. On a GPU this, not the engine, bounds the end-to-end rate when it is
below the engine's floor (benchmarks/engine_floor.py).

    python benchmarks/data_path.py MAPS CAPS TSV [--batch_size 8] [-np 8] [--repeats 3]
                                   [--preprocess_on loader|device] [--device cpu|cuda]
Batches are made as the command makes them (`caps.make_batches`): `loader`: readers preprocess (threads:
straight into the batch; processes: `rebatch` stacks, pinned for cuda; the copy to the device is then the
engine's); `device`: readers only read, `DevicePreprocess` copies each batch to --device and preprocesses
there (synchronised at the end). Prints a JSON line: images/s per repeat and their median.
"""

from __future__ import annotations

import json
import statistics
import time

import inputs  # before torch: huge pages, as the command sets them
import torch

from maps_interpret.data.dataset import SessionDataset
from maps_interpret.data.batches import make_batches, prefetch
from maps_interpret.data.elements import ImageLayout
from maps_interpret.data.transforms import Preprocess


def main() -> None:
    parser = inputs.parser("the data path alone: loader workers and batching, no engine", batch_size=8)
    parser.add_argument("-np", "--n_proc", type=int, default=2)
    parser.add_argument("--preprocess_on", choices=["loader", "device"], default="loader")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reader", choices=["threads", "processes"], default="threads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    maps, sessions = inputs.maps_and_sessions(args)
    raw = args.preprocess_on == "device"
    gpu = args.device.startswith("cuda")
    dataset = SessionDataset(sessions, ImageLayout(), Preprocess.from_params(maps.params), maps.input_size, [0],
                             raw=raw)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        batches = make_batches(dataset, args.n_proc, args.reader, args.batch_size, torch.device(args.device))
        n = sum(len(batch.element_ids) for batch in prefetch(batches, depth=2 if gpu else 0))  # as runner/passes.py
        if gpu:
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - start))
    print(json.dumps({"images_per_s": rates, "median": statistics.median(rates), "images": n,
                      "n_proc": args.n_proc, "batch_size": args.batch_size, "preprocess_on": args.preprocess_on,
                      "device": args.device}))


if __name__ == "__main__":
    main()
