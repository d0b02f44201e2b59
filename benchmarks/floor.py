"""Variant (c) of the benchmark: the engine alone on preloaded, preprocessed tensors (no file I/O), built
the way maps-interpret builds it. Prints a JSON line: seconds per image of the loop over batches.

    python benchmarks/floor.py MAPS CAPS TSV [--batch_size 2] [--gpu] [--amp]
"""

from __future__ import annotations

import json
import time

import inputs  # before torch: huge pages, as the command sets them
import torch

from maps_interpret.data.caps import load_tensor
from maps_interpret.engine import Engine
from maps_interpret.settings import engine_settings
from maps_interpret.models import load_model
from maps_interpret.models.export import to_torchscript
from maps_interpret.models.fast import fuse_blocks
from maps_interpret.data.transforms import Preprocess


def main() -> None:
    parser = inputs.parser("the engine alone on preloaded tensors", batch_size=2)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()
    device = "cuda" if args.gpu else "cpu"
    if args.gpu:
        torch.backends.cudnn.benchmark = True
    maps, sessions = inputs.maps_and_sessions(args)
    preprocess = Preprocess.from_params(maps.params)
    images = torch.stack([preprocess(load_tensor(s.tensor_path)) for s in sessions])
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    if args.gpu:
        batches = [b.pin_memory() for b in batches]
    engine = Engine(to_torchscript(fuse_blocks(load_model(maps, maps.model_path(0, "loss")))),
                    engine_settings(amp="bfloat16" if args.amp else None), device=device)
    for batch in batches[:2]:  # warm-up: TorchScript profiling runs, cuDNN autotuning
        engine.accumulate(batch, [0] * len(batch))
    engine.means()
    start = time.perf_counter()
    for batch in batches:
        engine.accumulate(batch, [0] * len(batch))
    engine.means()  # waits for the device
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds_per_image": seconds / len(images), "images": len(images)}))


if __name__ == "__main__":
    main()
