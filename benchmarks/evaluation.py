"""What a deletion curve costs: maps-interpret's (`analysis/faithfulness.curve` through the C++ engine's forward
pass, copies in chunks) against what a user writes today (a plain PyTorch loop: for each step, copy the image,
replace the voxels ranked first, one forward pass of the eager model), and against K + 1 forward passes of the
engine alone (the floor: the curve's own overhead). Same image, model, ranking and replacement; alternating within
each repeat.

    python benchmarks/evaluation.py [--shape 169 208 179] [--steps 20] [--repeats 3] [--device cpu] [--out bench-out]

Conv5_FC3 with random weights on a template-based subject (anatomy.py), |gradient| ranking, blur replacement.
Prints a Markdown table; writes OUT/evaluation.md.
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

from maps_interpret.analysis.evaluation import CHUNK  # noqa: E402
from maps_interpret.analysis.faithfulness import Perturbation, blurred, curve, ranking  # noqa: E402
from maps_interpret.anatomy import subject  # noqa: E402
from maps_interpret.data.transforms import min_max  # noqa: E402
from maps_interpret.interpreter import Interpreter  # noqa: E402
from maps_interpret.models.conv import conv5_fc3  # noqa: E402
from maps_interpret.settings import engine_settings  # noqa: E402


def plain_loop(model, image: torch.Tensor, order: torch.Tensor, steps: int, sigma: float) -> list[float]:
    """The loop a user writes: one copy and one eager forward pass per step."""
    baseline = blurred(image, sigma)
    n = order.numel()
    out = []
    with torch.no_grad():
        for k in range(steps + 1):
            copy = image.clone().reshape(image.shape[0], -1)
            gone = order[:round(k * n / steps)]
            copy[:, gone] = baseline.reshape(image.shape[0], -1)[:, gone]
            probability = torch.softmax(model(copy.reshape(1, *image.shape)), 1)[0, 0]
            out.append(float(probability))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[169, 208, 179])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = tuple(args.shape)
    model = conv5_fc3((1, *shape), output_size=2, dropout=0.0).eval()
    image = min_max(subject(shape, "AD", torch.Generator().manual_seed(0))).to(args.device)
    engine = Interpreter(model, device=args.device).engine(engine_settings("gradients"))
    map_ = engine.attribute(image.unsqueeze(0))[0]
    position = ranking(map_, "abs", "morf")
    order = torch.argsort(position)
    settings = Perturbation(steps=args.steps, replacement="blur", chunk=CHUNK)
    eager = model.to(args.device)
    copies = image.unsqueeze(0).expand(CHUNK, *image.shape).contiguous()

    def ours():
        return curve(engine.outputs, image, position, 0, "deletion", settings).probabilities.tolist()

    def floor():  # K + 1 forward passes of the engine, in the same chunks, nothing else
        for start in range(0, args.steps + 1, CHUNK):
            engine.outputs(copies[:min(CHUNK, args.steps + 1 - start)]).cpu()

    variants = {"plain PyTorch loop (copy, replace, eager forward per step)":
                lambda: plain_loop(eager, image, order, args.steps, settings.sigma),
                "maps-interpret (faithfulness.curve, engine forward, chunks of 8)": ours,
                f"engine forward alone, {args.steps + 1} copies in chunks of 8 (floor)": floor}
    ours(), floor()  # warm-up: first-call profiling of the TorchScript model
    agreement = max(abs(a - b) for a, b in zip(ours(), plain_loop(eager, image, order, args.steps, settings.sigma)))
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    names = list(variants)
    device = device_name(args.device)
    lines = [f"{device}; torch {torch.__version__}; Conv5_FC3 (random weights) on 1x{'x'.join(map(str, shape))}, "
             f"one deletion curve of {args.steps} steps ({args.steps + 1} forward passes), blur replacement, medians "
             f"of {args.repeats} alternating repeats; largest difference between the two curves' probabilities "
             f"{agreement:.1e}", "", "| variant | s per curve | vs plain loop |", "|---|---|---|"]
    for name in names:
        lines.append(f"| {name} | {median[name]:.2f} | {median[names[0]] / median[name]:.2f}x |")
    lines += ["", f"Curve / floor: {median[names[1]] / median[names[2]]:.3f} (the cost of the perturbations and "
                  f"ranking over the {args.steps + 1} forward passes themselves)"]
    publish(lines, args.out, "evaluation.md")


if __name__ == "__main__":
    main()
