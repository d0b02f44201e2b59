"""What --evaluate's curves cost: maps-interpret (`analysis/faithfulness.curves` through the C++ engine's forward
pass, copies in chunks, each distinct copy once) against what a user writes today (a plain PyTorch loop: for each
curve and step, copy the image, replace the voxels ranked first, one forward pass of the eager model), for the
default four curves of one map (deletion and insertion, ranked by |map| and at random); and one curve against its
K + 1 forward passes through the engine alone (the floor: the curve's own overhead). Same image, model, rankings
and replacement; alternating within each repeat.

    python benchmarks/evaluation.py [--shape 169 208 179] [--steps 20] [--repeats 3] [--chunk N] [--device cpu]
                                    [--out bench-out]

Conv5_FC3 with random weights on a template-based subject (anatomy.py), |gradient| ranking, blur replacement.
Prints a Markdown table; writes OUT/evaluation.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the command sets it

import torch  # noqa: E402
from bench_table import alternate, device_name, publish  # noqa: E402  (benchmarks/, the script's folder)

from maps_interpret.analysis.evaluation import chunk_for  # noqa: E402
from maps_interpret.analysis.faithfulness import Perturbation, blurred, curve, curves, ranking  # noqa: E402
from maps_interpret.anatomy import subject  # noqa: E402
from maps_interpret.data.transforms import min_max  # noqa: E402
from maps_interpret.interpreter import Interpreter  # noqa: E402
from maps_interpret.models.conv import conv5_fc3  # noqa: E402
from maps_interpret.settings import engine_settings  # noqa: E402


def plain_loop(model, image: torch.Tensor, order: torch.Tensor, kind: str, steps: int, sigma: float) -> list[float]:
    """The loop a user writes: one copy and one eager forward pass per step (insertion: the voxels not back yet
    stay blurred)."""
    baseline = blurred(image, sigma).reshape(image.shape[0], -1)
    n = order.numel()
    out = []
    with torch.no_grad():
        for k in range(steps + 1):
            first = order[:round(k * n / steps)]
            copy = (image if kind == "deletion" else baseline).clone().reshape(image.shape[0], -1)
            copy[:, first] = (baseline if kind == "deletion" else image.reshape(image.shape[0], -1))[:, first]
            probability = torch.softmax(model(copy.reshape(1, *image.shape)), 1)[0, 0]
            out.append(float(probability))
    return out


REQUESTS = [(kind, order, "morf") for kind in ("deletion", "insertion") for order in ("abs", "random")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[169, 208, 179])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None, help="copies per forward pass (default: the run's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    args.chunk = args.chunk or chunk_for(args.device)
    torch.manual_seed(0)
    shape = tuple(args.shape)
    model = conv5_fc3((1, *shape), output_size=2, dropout=0.0).eval()
    image = min_max(subject(shape, "AD", torch.Generator().manual_seed(0))).to(args.device)
    engine = Interpreter(model, device=args.device).engine(engine_settings("gradients"))
    map_ = engine.attribute(image.unsqueeze(0))[0]
    positions = {"abs": ranking(map_, "abs"),
                 "random": ranking(map_, "random", generator=torch.Generator().manual_seed(0))}
    orders = {(kind, order): torch.argsort(positions[order] if kind == "deletion" or order == "abs"
                                           else positions[order].numel() - 1 - positions[order])
              for kind, order, _ in REQUESTS}  # the voxels in the order each curve removes or puts them back
    settings = Perturbation(steps=args.steps, replacement="blur", chunk=args.chunk)
    eager = model.to(args.device)
    copies = image.unsqueeze(0).expand(args.chunk, *image.shape).contiguous()
    passes = args.steps + 1

    def plain():
        return [plain_loop(eager, image, orders[kind, order], kind, args.steps, settings.sigma)
                for kind, order, _ in REQUESTS]

    def ours():
        result = curves(engine.outputs, image, positions, 0, REQUESTS, settings)
        return [result[request].probabilities.tolist() for request in REQUESTS]

    def one():
        return curve(engine.outputs, image, positions["abs"], 0, "deletion", settings)

    def floor():  # K + 1 forward passes of the engine, in the same chunks, nothing else
        for start in range(0, passes, args.chunk):
            engine.outputs(copies[:min(args.chunk, passes - start)]).cpu()

    variants = {f"plain PyTorch loop, 4 curves ({4 * passes} eager forward passes, copy and replace per step)": plain,
                f"maps-interpret, 4 curves (faithfulness.curves: {3 * (args.steps - 1) + 2} distinct copies, "
                f"chunks of {args.chunk})": ours,
                f"maps-interpret, 1 deletion curve ({passes} copies, chunks of {args.chunk})": one,
                f"engine forward alone, {passes} copies in chunks of {args.chunk} (the floor of one curve)": floor}
    ours(), floor()  # warm-up: first-call profiling of the TorchScript model
    agreement = max(abs(a - b) for x, y in zip(ours(), plain()) for a, b in zip(x, y))
    median = alternate(variants, args.repeats)
    names = list(variants)
    device = device_name(args.device)
    lines = [f"{device}; torch {torch.__version__}; Conv5_FC3 (random weights) on 1x{'x'.join(map(str, shape))}, "
             f"{args.steps} steps, blur replacement, medians of {args.repeats} alternating repeats; largest "
             f"difference between the plain loop's and maps-interpret's probabilities {agreement:.1e}", "",
             "| variant | s | vs plain loop (4 curves) |", "|---|---|---|"]
    for name in names[:2]:
        lines.append(f"| {name} | {median[name]:.2f} | {median[names[0]] / median[name]:.2f}x |")
    for name in names[2:]:
        lines.append(f"| {name} | {median[name]:.2f} | |")
    lines += ["", f"One curve / its floor: {median[names[2]] / median[names[3]]:.3f} (the cost of the perturbations "
                  f"over the {passes} forward passes themselves)"]
    publish(lines, args.out, "evaluation.md")


if __name__ == "__main__":
    main()
