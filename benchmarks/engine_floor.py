"""Exploration of the compute floor on random inputs (no files): images/s of the gradient loop for
(a) ClinicaDL's procedure (weights requiring grad, .backward(), .cpu(), per-sample accumulation on the CPU)
and the C++ engine in several configurations (plain export, the fused blocks of models/fast.py,
channels-last inputs, and on a GPU bf16 autocast), timed alternately. Used to choose the defaults.

    python benchmarks/engine_floor.py --device cuda --batch-size 8 --iters 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from maps_interpret.engine import Engine
from maps_interpret.models.conv import conv5_fc3
from maps_interpret.models.export import to_torchscript
from maps_interpret.models.fast import fuse_blocks


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clinicadl_loop(model: torch.nn.Module, batches, device: str) -> float:
    """ClinicaDL 1.6.1's interpret loop body, rewritten here (gradients.py + maps_manager.py)."""
    model = model.to(device).train(False)
    for p in model.parameters():
        p.requires_grad_(True)
    cum = 0
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        x = batch.to(device).requires_grad_(True)
        out = model(x)
        one_hot = torch.zeros_like(out)
        one_hot[:, 0] = 1
        out.backward(gradient=one_hot)
        maps = x.grad.detach().cpu()
        for i in range(len(maps)):
            cum += maps[i]
    sync(device)
    return time.perf_counter() - start


def engine_loop(engine: Engine, batches, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        engine.accumulate(batch, [0] * len(batch))
    engine.means()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=3, default=[169, 208, 179])
    parser.add_argument("--skip-clinicadl", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    size = (1, *args.size)
    model = conv5_fc3(size, output_size=2, dropout=0.0).eval()
    pin = args.device.startswith("cuda")
    batches = [torch.randn(args.batch_size, *size).pin_memory() if pin else torch.randn(args.batch_size, *size)
               for _ in range(args.iters)]
    fused = fuse_blocks(model)
    variants = {
        "engine_plain_fp32": lambda: Engine(to_torchscript(model), device=args.device),
        "engine_fused_fp32": lambda: Engine(to_torchscript(fused), device=args.device),
        "engine_fused_fp32_channels_last": lambda: Engine(to_torchscript(fused), device=args.device, channels_last=True),
    }
    if pin:
        variants["engine_fused_bf16"] = lambda: Engine(to_torchscript(fused), device=args.device, amp=torch.bfloat16)
        variants["engine_fused_bf16_channels_last"] = lambda: Engine(to_torchscript(fused), device=args.device,
                                                                     amp=torch.bfloat16, channels_last=True)
        torch.backends.cudnn.benchmark = True
    results: dict[str, list[float]] = {name: [] for name in variants}
    if not args.skip_clinicadl:
        results["a_clinicadl"] = []
    engines = {name: make() for name, make in variants.items()}
    for engine in engines.values():  # warm-up: profiling executor, cuDNN autotuning
        engine_loop(engine, batches[:2], args.device)
    if not args.skip_clinicadl:
        clinicadl_loop(model, batches[:1], args.device)
    for _ in range(args.repeats):  # alternate the variants within each repeat
        if not args.skip_clinicadl:
            results["a_clinicadl"].append(clinicadl_loop(model, batches, args.device))
        for name, engine in engines.items():
            results[name].append(engine_loop(engine, batches, args.device))
    n = args.iters * args.batch_size
    table = {name: {"images_per_s": n / statistics.median(times), "median_s": statistics.median(times)}
             for name, times in results.items()}
    device_name = torch.cuda.get_device_name(0) if pin else "cpu"
    print(json.dumps({"device": device_name, "torch": torch.__version__, "batch_size": args.batch_size,
                      "images": n, "size": size, "results": table}, indent=1))


if __name__ == "__main__":
    main()
