"""Exploration of the compute floor on random inputs (no files): images/s of the gradient loop for
(a) ClinicaDL's procedure (weights requiring grad, .backward(), .cpu(), per-sample accumulation on the CPU)
and the C++ engine in several configurations (plain export, the fused blocks of models/fast.py,
channels-last inputs, and on a GPU bf16 autocast), timed alternately. Used to choose the defaults.
Each variant's mean map is compared with the plain float32 one (correlation, largest difference), and
--profile FILE writes the device-time table of one batch per engine variant (where the time goes).

    python benchmarks/engine_floor.py --device cuda --batch-size 8 --iters 10 --profile profile.txt
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from maps_interpret.engine import Engine
from maps_interpret.settings import engine_settings
from maps_interpret.models.conv import conv5_fc3
from maps_interpret.models.export import to_torchscript
from maps_interpret.models.fast import fuse_blocks


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clinicadl_loop(model: torch.nn.Module, batches, device: str) -> float:
    """ClinicaDL 1.6.1's interpret loop body, rewritten here (gradients.py + maps_manager.py). On a GPU its
    convolutions use torch's default TensorFloat-32 (the engines set IEEE float32 process-wide)."""
    if device.startswith("cuda"):
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    try:
        return _clinicadl_loop(model, batches, device)
    finally:
        if device.startswith("cuda"):
            torch.backends.cudnn.conv.fp32_precision = "ieee"


def _clinicadl_loop(model: torch.nn.Module, batches, device: str) -> float:
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
    parser.add_argument("--profile", type=str, default=None, help="write per-kernel device times of one batch here")
    args = parser.parse_args()
    torch.manual_seed(0)
    size = (1, *args.size)
    model = conv5_fc3(size, output_size=2, dropout=0.0).eval()
    pin = args.device.startswith("cuda")
    batches = [torch.randn(args.batch_size, *size).pin_memory() if pin else torch.randn(args.batch_size, *size)
               for _ in range(args.iters)]
    fused = fuse_blocks(model)
    variants = {
        "engine_plain_fp32": lambda: Engine(to_torchscript(model), engine_settings(), device=args.device),
        "engine_fused_fp32": lambda: Engine(to_torchscript(fused), engine_settings(), device=args.device),
    }
    if pin:
        variants["engine_fused_bf16"] = lambda: Engine(to_torchscript(fused), engine_settings(amp="bfloat16"),
                                                         device=args.device)
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
    reference = engines["engine_plain_fp32"].means()[0].flatten().cpu()
    for name, engine in engines.items():  # every engine saw the same batches the same number of times
        mean = engine.means()[0].flatten().cpu()
        table[name]["correlation_with_plain_fp32"] = torch.corrcoef(torch.stack([reference, mean]))[0, 1].item()
        table[name]["max_difference_of_max"] = ((mean - reference).abs().max() / reference.abs().max()).item()
    if args.profile:
        profile(engines, batches[0], args.device, args.profile)
    device_name = torch.cuda.get_device_name(0) if pin else "cpu"
    print(json.dumps({"device": device_name, "torch": torch.__version__, "batch_size": args.batch_size,
                      "images": n, "size": size, "results": table}, indent=1))


def profile(engines: dict[str, Engine], batch: torch.Tensor, device: str, path: str) -> None:
    from torch.profiler import ProfilerActivity, profile as profiler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sort = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    with open(path, "w") as out:
        for name, engine in engines.items():
            with profiler(activities=activities) as prof:
                engine.accumulate(batch, [0] * len(batch))
                sync(device)
            out.write(f"== {name}, one batch of {len(batch)}\n")
            out.write(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=70) + "\n")


if __name__ == "__main__":
    main()
