"""What occlusion costs: maps-interpret's (the C++ engine's `occlusion`: the first stages recomputed on the crop
each patch changes, the rest of the network on the pasted copies in chunks, channels-last on a CPU; and the same
with whole forward passes, as a TorchScript model gets) against Captum's `Occlusion` and MONAI's
`OcclusionSensitivity` on the same full-size image and model, with the same patches (size and stride) and the same
number of copies per forward pass; alternating within each repeat.

    python benchmarks/occlusion.py [--shape 169 208 179] [--size 32] [--stride 32] [--chunk 2] [--repeats 2]
                                   [--device cpu] [--out bench-out] [--depths K [K ...]]

Conv5_FC3 with random weights on a template-based subject (anatomy.py), target node 1, baseline 0. MONAI's map
is the occluded output (not the drop: the same forward passes, MONAI's own definition) with `overlap` set to
1 - stride / size. Prints a Markdown table; writes OUT/occlusion.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import warnings
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the command sets it

import torch  # noqa: E402
from bench_table import alternate, device_name, publish  # noqa: E402  (benchmarks/, the script's folder)

from maps_interpret.anatomy import subject  # noqa: E402
from maps_interpret.data.transforms import min_max  # noqa: E402
from maps_interpret.interpreter import Interpreter  # noqa: E402
from maps_interpret.models.conv import conv5_fc3  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[169, 208, 179])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=2, help="copies per forward pass, for all three")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--depths", type=int, nargs="+", metavar="K",
                        help="instead of the peers: maps-interpret with K stages on crops (0: whole passes), against "
                             "the number its cost estimate chooses; writes OUT/occlusion_depths.md")
    args = parser.parse_args()
    # Captum and MONAI import torchvision, whose compiled ops cannot load beside a CPU torch (tests/
    # clinicadl2_oracle.py): the module registering them is irrelevant here.
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    from captum.attr import Occlusion
    from monai.visualize import OcclusionSensitivity

    torch.manual_seed(0)
    shape = tuple(args.shape)
    model = conv5_fc3((1, *shape), output_size=2, dropout=0.0).eval().to(args.device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    image = min_max(subject(shape, "AD", torch.Generator().manual_seed(0))).unsqueeze(0).to(args.device)
    interpreter = Interpreter(model, device=args.device)
    window = (1, *[args.size] * 3)
    patches = 1
    for n in shape:
        patches *= -(-(n - args.size) // args.stride) + 1

    def ours():
        return interpreter.attribute(image, "occlusion", 1, occlusion_size=args.size, occlusion_stride=args.stride,
                                     chunk_size=args.chunk)

    whole = Interpreter(torch.jit.script(model), device=args.device)  # TorchScript: no stages, whole passes

    def ours_whole():
        return whole.attribute(image, "occlusion", 1, occlusion_size=args.size, occlusion_stride=args.stride,
                               chunk_size=args.chunk)

    if args.depths:
        return by_depth(args, model, image, ours, patches)

    def captum():
        with torch.no_grad():
            return Occlusion(model).attribute(image, sliding_window_shapes=window,
                                              strides=(1, *[args.stride] * 3), baselines=0.0, target=1,
                                              perturbations_per_eval=args.chunk)

    def monai():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MONAI's indexing with a list (its code, not ours)
            sensitivity = OcclusionSensitivity(model, mask_size=args.size, n_batch=args.chunk, verbose=False,
                                               mode=0.0, overlap=1 - args.stride / args.size, activate=False)
            return sensitivity(image)[0]

    variants = {f"maps-interpret (occlusion, chunks of {args.chunk})": ours,
                "maps-interpret, whole forward passes (the model as TorchScript: no stages)": ours_whole,
                f"Captum Occlusion (perturbations_per_eval={args.chunk})": captum,
                f"MONAI OcclusionSensitivity (n_batch={args.chunk}, mode=0.0)": monai}
    agreement = float((ours() - captum()).abs().max())  # also the warm-up
    median = alternate(variants, args.repeats)
    names = list(variants)
    lines = [f"{device_name(args.device)}; torch {torch.__version__}; Conv5_FC3 (random weights) on "
             f"1x{'x'.join(map(str, shape))}; patches of {args.size} voxels, stride {args.stride}: {patches} "
             f"occluded copies; medians of {args.repeats} alternating repeats; largest difference between "
             f"maps-interpret's and Captum's maps {agreement:.1e}", "",
             "| variant | s per image | maps-interpret is |", "|---|---|---|"]
    for name in names:
        lines.append(f"| {name} | {median[name]:.1f} | {median[name] / median[names[0]]:.2f}x faster |")
    publish(lines, args.out, "occlusion.md")


def by_depth(args, model, image, ours, patches: int) -> None:
    """The core alone with `depth` stages on crops (the parameter the engine takes for tests and benchmarks)."""
    from maps_interpret import _core
    from maps_interpret.models.export import to_torchscript
    from maps_interpret.models.staged import staged_network

    scripted = to_torchscript(staged_network(model))

    def fixed(depth: int):
        options = _core.EngineOptions()
        options.method, options.device, options.target_mode, options.target = "occlusion", args.device, "node", 1
        options.parameters = {"occlusion_size": args.size, "occlusion_stride": args.stride, "baseline": 0.0,
                              "chunk_size": args.chunk, "depth": depth}
        engine = _core.Engine(scripted._c, options)
        return lambda: engine.attribute(image)

    variants = {"chosen by the cost estimate": ours, **{f"{depth} stages on crops": fixed(depth)
                                                          for depth in args.depths}}
    ours()  # warm-up
    median = alternate(variants, args.repeats)
    lines = [f"{device_name(args.device)}; torch {torch.__version__}; Conv5_FC3 (random weights, "
             f"{len(scripted.stages)} stages) on 1x{'x'.join(map(str, image.shape[2:]))}; patches of {args.size} "
             f"voxels, stride {args.stride}: {patches} occluded copies; medians of {args.repeats} alternating repeats",
             "", "| stages on crops | s per image |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in median.items()]
    publish(lines, args.out, "occlusion_depths.md")


if __name__ == "__main__":
    main()
