"""What each attribution method costs per image against `gradients`, at the same batch size (engine alone,
random inputs, Conv5_FC3 with random weights), alternating within each repeat.

    python benchmarks/methods.py [--shape 96 112 96] [--batch_size 2] [--images 4] [--samples 16] [--repeats 3]
                                 [--device cpu] [--out bench-out]
smoothgrad with N samples and integrated gradients with N steps send N x images through the model in
chunks of --batch_size rows: the target is about N x the cost of gradients per image, not more (batched, no
per-copy overhead). Prints a Markdown table; writes OUT/methods.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the command sets it

import torch  # noqa: E402
from bench_table import device_name, publish  # noqa: E402  (benchmarks/, the script's folder)

from maps_interpret.engine import Engine  # noqa: E402
from maps_interpret.settings import engine_settings  # noqa: E402
from maps_interpret.models.conv import conv5_fc3  # noqa: E402
from maps_interpret.models.export import to_torchscript  # noqa: E402
from maps_interpret.models.fast import fuse_blocks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 112, 96])
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = (1, *args.shape)
    model = to_torchscript(fuse_blocks(conv5_fc3(shape, output_size=2, dropout=0.0).eval()))
    images = torch.rand((args.images, *shape))
    variants = {
        "gradients": dict(method="gradients"),
        f"smoothgrad, {args.samples} samples": dict(method="smoothgrad", n_samples=args.samples),
        f"integrated-gradients, {args.samples} steps": dict(method="integrated-gradients", n_steps=args.samples),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, options in variants.items():
            engine = Engine(model, engine_settings(**options), device=args.device)
            engine.accumulate(images[:args.batch_size], [0] * args.batch_size)  # warm-up: first-call profiling
            start = time.perf_counter()
            for first in range(0, args.images, args.batch_size):
                batch = images[first:first + args.batch_size]
                engine.accumulate(batch, [0] * len(batch), seeds=list(range(first, first + len(batch))))
            engine.means()  # waits for the device
            seconds[name].append((time.perf_counter() - start) / args.images)
    per_image = {name: statistics.median(values) for name, values in seconds.items()}
    base = per_image["gradients"]
    device = device_name(args.device)
    lines = [f"{device}; torch {torch.__version__}; Conv5_FC3 on 1x{'x'.join(map(str, args.shape))}, batch "
             f"{args.batch_size}, {args.images} images, medians of {args.repeats} alternating repeats", "",
             "| method | s per image | vs gradients | per copy vs gradients |", "|---|---|---|---|"]
    for name, value in per_image.items():
        copies = 1 if name == "gradients" else args.samples
        lines.append(f"| {name} | {value:.3f} | {value / base:.2f}x | {value / base / copies:.2f} |")
    publish(lines, args.out, "methods.md")


if __name__ == "__main__":
    main()
