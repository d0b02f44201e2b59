"""`make bench`: maps-interpret against a re-implementation of ClinicaDL 1.6.1's loop, side by side.

Synthetic CAPS + MAPS at the real size (169x208x179 float32 tensors, Conv5_FC3 with random weights),
then, alternating within each repeat:
  (a) benchmarks/clinicadl_loop.py (ClinicaDL's loop), mean only and with individual maps,
  (b) the maps-interpret command end to end (process start to exit), mean only and --save_individual,
  (c) benchmarks/floor.py, the engine alone on preloaded tensors (the compute floor).
Reports medians, b/a ratios, b's per-image part against c, peak RSS, and whether b's maps equal a's.

    python benchmarks/run.py [--gpu] [--sessions 8] [--batch_size 2] [-np 2] [--repeats 3] [--out bench-out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PHASES = ("wall", "loop", "plan", "engines", "first_batch", "per_image", "gpu_util")  # printed per run
SHAPE = (169, 208, 179)


def make_data(root: Path, n_sessions: int) -> dict[str, Path]:
    from maps_interpret.models.conv import conv5_fc3
    from maps_interpret.synthetic import maps_parameters, sessions, write_caps, write_maps, write_tsv

    paths = {"maps": root / "maps", "caps": root / "caps", "tsv": root / "sessions.tsv"}
    marker = root / "data.json"
    spec = {"sessions": n_sessions, "shape": SHAPE}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return paths
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    specs = sessions("BE", n_sessions)
    write_caps(paths["caps"], specs, SHAPE, seed=0)
    write_tsv(paths["tsv"], specs)
    torch.manual_seed(0)
    model = conv5_fc3((1, *SHAPE), output_size=2, dropout=0.0)
    params = maps_parameters((1, *SHAPE), caps_directory=str(paths["caps"].resolve()), tsv_path="", n_splits=0)
    write_maps(paths["maps"], params, {0: ([], [])},
               {(0, "loss"): {"model": model.state_dict(), "epoch": 0, "name": "Conv5_FC3"}})
    marker.write_text(json.dumps(spec))
    return paths


class GpuSampler:
    """GPU utilisation samples (nvidia-smi every 100 ms) with their times, to average over a window."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                         "-lms", "100"], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.samples.append((time.monotonic(), float(line.strip())))
            except ValueError:
                pass

    def busy_after_warmup(self, start: float, end: float, warmup: float = 1.0) -> float:
        """Mean utilisation from `warmup` seconds after the GPU first got work in [start, end] to the last
        sample with work: the loop over batches, without start-up, cuDNN autotuning and exit."""
        busy = [t for t, u in self.samples if start <= t <= end and u > 0]
        if not busy:
            return float("nan")
        window = [u for t, u in self.samples if busy[0] + warmup <= t <= busy[-1]]
        return statistics.mean(window) if window else float("nan")

    def stop(self) -> None:
        self.process.terminate()


# Runs its arguments as a child and reports the child's peak RSS (largest process, KiB) on stderr.
RSS_WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
               "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(code)")


def timed(command: list[str], sampler: GpuSampler | None = None) -> dict:
    """Runs a command; wall time, peak RSS of its largest process, its output."""
    start, started = time.perf_counter(), time.monotonic()
    process = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *command], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{process.stderr[-3000:]}")
    rss = re.search(r"peak-rss-kib (\d+)", process.stderr)
    return {"wall": wall, "stdout": process.stdout, "stderr": process.stderr, "start": started, "end": time.monotonic(),
            "rss_mib": int(rss.group(1)) / 1024 if rss else None}


def run_variant(name: str, command: list[str], sampler) -> dict:
    result = timed(command, sampler)
    if name.startswith("a"):
        result["loop"] = json.loads(result["stdout"].strip().splitlines()[-1])["loop_seconds"]
    elif name.startswith("b"):
        match = re.search(r"\(([\d.]+) s in the loops over batches\)", result["stderr"])
        result["loop"] = float(match.group(1))
        phases = re.search(r"phases: plan ([\d.]+) s, engines ([\d.]+) s, first batches ([\d.]+) s", result["stderr"])
        if phases:
            result["plan"], result["engines"], result["first_batch"] = map(float, phases.groups())
    else:
        result["per_image"] = json.loads(result["stdout"].strip().splitlines()[-1])["seconds_per_image"]
    if sampler is not None and "loop" in result:
        result["gpu_util"] = sampler.busy_after_warmup(result["start"], result["end"])
    return result


def max_relative_difference(ours: Path, theirs: Path) -> float:
    worst = 0.0
    for reference in sorted(theirs.glob("*.pt")):
        a = torch.load(reference, weights_only=True)
        b = torch.load(ours / reference.name, weights_only=True)
        worst = max(worst, ((a - b).abs().max() / a.abs().max()).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--amp", action="store_true", help="also time maps-interpret --amp (GPU)")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("-np", "--n_proc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["a_individual", "b_individual", "c_floor"],
                        help="variants left out (a_individual writes a whole batch per map: slow on big runs)")
    args = parser.parse_args()
    data = make_data(args.out / "data", args.sessions)
    device_flag = ["--gpu"] if args.gpu else ["--no-gpu"]
    common = ["--batch_size", str(args.batch_size), "-np", str(args.n_proc)]
    cli = [sys.executable, "-m", "maps_interpret", str(data["maps"]), "bench"]
    a_cmd = [sys.executable, str(HERE / "clinicadl_loop.py"), str(data["maps"]), str(data["caps"]), str(data["tsv"])]

    # Warm-up (file cache, and the data group of the b runs), not timed.
    timed(cli + ["warmup", "--participants_tsv", str(data["tsv"]), "--caps_directory", str(data["caps"]),
                 "--overwrite", *common, *device_flag])
    variants = {
        "a_mean": lambda r: a_cmd + [str(args.out / f"a_mean_{r}"), *common] + (["--gpu"] if args.gpu else []),
        "b_mean": lambda r: cli + [f"b_mean_{r}", *common, *device_flag, "-v"],
        "a_individual": lambda r: a_cmd + [str(args.out / f"a_individual_{r}"), *common, "--save_individual"]
        + (["--gpu"] if args.gpu else []),
        "b_individual": lambda r: cli + [f"b_individual_{r}", *common, *device_flag, "--save_individual", "-v"],
        "c_floor": lambda r: [sys.executable, str(HERE / "floor.py"), str(data["maps"]), str(data["caps"]),
                              str(data["tsv"]), "--batch_size", str(args.batch_size)] + (["--gpu"] if args.gpu else []),
    }
    if args.amp:
        variants["b_mean_amp"] = lambda r: cli + [f"b_mean_amp_{r}", *common, *device_flag, "--amp", "-v"]
    for name in args.skip:
        variants.pop(name, None)
    sampler = GpuSampler() if args.gpu else None
    results: dict[str, list[dict]] = {name: [] for name in variants}
    checks = {}
    results_dir = data["maps"] / "split-0" / "best-loss" / "bench"
    for repeat in range(args.repeats):
        for name, command in variants.items():
            results[name].append(run_variant(name, command(repeat), sampler))
            print(f"repeat {repeat} {name}: " + ", ".join(f"{key} {value:.4g}" for key, value in results[name][-1].items()
                                                          if key in PHASES), file=sys.stderr, flush=True)
        checks[f"b_mean vs a_mean, repeat {repeat}"] = max_relative_difference(
            results_dir / f"interpret-b_mean_{repeat}", args.out / f"a_mean_{repeat}")
        if "a_individual" in variants and "b_individual" in variants:
            checks[f"b_individual vs a_individual, repeat {repeat}"] = max_relative_difference(
                results_dir / f"interpret-b_individual_{repeat}", args.out / f"a_individual_{repeat}")
        if args.amp:
            exact = torch.load(results_dir / f"interpret-b_mean_{repeat}" / "mean_image-0_map.pt").flatten()
            mixed = torch.load(results_dir / f"interpret-b_mean_amp_{repeat}" / "mean_image-0_map.pt").flatten()
            checks[f"bf16 vs fp32 mean-map correlation, repeat {repeat}"] = torch.corrcoef(
                torch.stack([exact, mixed]))[0, 1].item()
        for folder in list(results_dir.glob(f"interpret-*_{repeat}")) + list(args.out.glob(f"a_*_{repeat}")):
            shutil.rmtree(folder)
    if sampler is not None:
        sampler.stop()
    report(args, results, checks)


def report(args, results: dict, checks: dict) -> None:
    n = args.sessions
    median = {name: {key: statistics.median(values) for key in PHASES + ("rss_mib",)
                     if (values := [r[key] for r in runs if isinstance(r.get(key), (int, float)) and r[key] == r[key]])}
              for name, runs in results.items()}  # r[key] == r[key]: NaN (no GPU samples) left out
    device = torch.cuda.get_device_name(0) if args.gpu else f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    lines = [f"device: {device}; torch {torch.__version__}; {n} sessions of 1x{'x'.join(map(str, SHAPE))}, "
             f"Conv5_FC3, batch {args.batch_size}, -np {args.n_proc}, medians of {args.repeats} alternating runs",
             "", "| variant | images/s | wall s | loop s | peak RSS MiB | b/a |", "|---|---|---|---|---|---|"]
    ratio_to = {"b_mean": "a_mean", "b_individual": "a_individual", "b_mean_amp": "a_mean"}
    for name, m in median.items():
        if name == "c_floor":
            continue
        ratio = f"{median[ratio_to[name]]['wall'] / m['wall']:.2f}x" if ratio_to.get(name) in median else ""
        rss = f"{m['rss_mib']:.0f}" if m.get("rss_mib") else ""
        lines.append(f"| {name} | {n / m['wall']:.3f} | {m['wall']:.1f} | {m['loop']:.1f} | {rss} | {ratio} |")
    per_image_b = median["b_mean"]["loop"] / n
    lines += ["", "loops over batches, images/s: " + ", ".join(
        f"{name} {n / m['loop']:.1f}" for name, m in median.items() if "loop" in m)]
    if "c_floor" in median:
        floor = median["c_floor"]["per_image"]
        lines.insert(-2, f"| c_floor (engine on preloaded tensors) | {1 / floor:.3f} | | | | |")
        lines.append(f"b per-image part (loop / images): {per_image_b:.3f} s; c: {floor:.3f} s; "
                     f"b/c = {per_image_b / floor:.2f}")
    if "b_mean" in median and "plan" in median["b_mean"]:
        m = median["b_mean"]
        lines.append(f"b_mean phases: plan {m['plan']:.2f} s, engines {m['engines']:.2f} s, first batch "
                     f"{m['first_batch']:.2f} s, loop {m['loop']:.2f} s, outside run() (imports, exit) "
                     f"{m['wall'] - m['plan'] - m['engines'] - m['loop']:.2f} s (upper bound: includes final writes)")
    if args.gpu:
        lines.append("GPU busy after warm-up (mean of nvidia-smi samples every 100 ms): " + ", ".join(
            f"{name} {m['gpu_util']:.0f}%" for name, m in median.items() if "gpu_util" in m))
    lines += [f"{key}: {value:.3g}" for key, value in checks.items()]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps({"median": median, "checks": checks, "device": device}, indent=1))


if __name__ == "__main__":
    main()
