"""What LRP and Grad-CAM++ cost: maps-interpret's `lrp` (the rewritten network's input gradient, computed by the
C++ engine) against Zennit's EpsilonPlusFlat composite (BatchNorm merged by its SequentialMergeBatchNorm
canonizer), and maps-interpret's `grad-cam++` against pytorch-grad-cam's GradCAMPlusPlus (the last convolution
block's output, as ours by default); the same full-size images and model, alternating within each repeat.

    python benchmarks/rules.py [--shape 169 208 179] [--batch 2] [--repeats 3] [--device cpu] [--out bench-out]

Conv5_FC3 with random weights and non-trivial BatchNorm statistics on template-based subjects (anatomy.py),
target node 1. Prints a Markdown table; writes OUT/rules.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import types
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
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    # Zennit and pytorch-grad-cam import torchvision, whose compiled ops cannot load beside a CPU torch (tests/
    # clinicadl2_oracle.py): the module registering them is irrelevant here.
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    torch.manual_seed(0)
    shape = tuple(args.shape)
    model = conv5_fc3((1, *shape), output_size=2, dropout=0.0)
    for module in model.modules():  # eval-mode BatchNorm that does something (merged by both)
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    model = model.eval().to(args.device)
    images = torch.stack([min_max(subject(shape, diagnosis, torch.Generator().manual_seed(i)))
                          for i, diagnosis in zip(range(args.batch), ["AD", "CN"] * args.batch)]).to(args.device)
    interpreter = Interpreter(model, device=args.device)
    one_hot = torch.zeros(args.batch, 2, device=args.device)
    one_hot[:, 1] = 1

    def ours_lrp():
        return interpreter.attribute(images, "lrp", 1)

    def zennit():
        with Gradient(model, EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])) as attributor:
            return attributor(images.clone(), one_hot)[1]

    def ours_cam():
        return interpreter.attribute(images, "grad-cam++", 1)

    twin = copy.deepcopy(model)  # pytorch-grad-cam keeps hooks on its model, which TorchScript cannot compile
    cam = GradCAMPlusPlus(twin, [twin.convolutions[-1]])

    def theirs_cam():
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(1)] * args.batch)

    lrp_gap = float((ours_lrp() - zennit()).abs().max() / zennit().abs().max())  # also the warm-up
    ours_cam(), theirs_cam()
    pairs = [("lrp (epsilon-plus-flat)", ours_lrp, "Zennit EpsilonPlusFlat", zennit),
             ("grad-cam++", ours_cam, "pytorch-grad-cam GradCAMPlusPlus", theirs_cam)]
    median = alternate({name: run for ours, run_ours, theirs, run_theirs in pairs
                        for name, run in ((ours, run_ours), (theirs, run_theirs))}, args.repeats)
    lines = [f"{device_name(args.device)}; torch {torch.__version__}; Conv5_FC3 (random weights) on {args.batch} "
             f"images of {'x'.join(map(str, shape))}; medians of {args.repeats} alternating repeats; largest "
             f"difference between maps-interpret's and Zennit's relevance {lrp_gap:.1e} of its largest |value|",
             "", "| method | maps-interpret, s per batch | peer | peer, s per batch | maps-interpret is |",
             "|---|---|---|---|---|"]
    for ours, _, theirs, _ in pairs:
        lines.append(f"| {ours} | {median[ours]:.2f} | {theirs} | {median[theirs]:.2f} | "
                     f"{median[theirs] / median[ours]:.2f}x faster |")
    publish(lines, args.out, "rules.md")


if __name__ == "__main__":
    main()
